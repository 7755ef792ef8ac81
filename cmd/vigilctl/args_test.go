package main

import (
	"context"
	"errors"
	"flag"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"

	"github.com/vigilhq/vigil/internal/errdefs"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// countingServer serves a fixture and both of the aggregator's APIs that
// vigilctl calls (Vigil, Bootstrap), counting every call that reaches it.
func countingServer(t *testing.T) (addr string, calls func() int64) {
	t.Helper()
	var n atomic.Int64
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			n.Add(1)
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			n.Add(1)
			return h(srv, ss)
		}))
	vigilv1.RegisterVigilServer(srv, fixture())
	vigilv1.RegisterBootstrapServer(srv, vigilv1.UnimplementedBootstrapServer{})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String(), n.Load
}

// TestHelpSendsNothing: -h and --help, wherever they stand in any
// command's line (`nodes release --help` was sent as a release of a node
// named "--help"), print that command's usage on stdout and end in
// flag.ErrHelp (exit 0), with no call to the aggregator and no warning.
func TestHelpSendsNothing(t *testing.T) {
	addr, calls := countingServer(t)
	lines := map[string][]string{"vigilctl": nil}
	for _, name := range commandNames() {
		lines[name] = []string{name}
	}
	lines["nodes release"] = []string{"nodes", "release"}
	lines["nodes release NAME"] = []string{"nodes", "release", "node-a"}
	lines["restart TARGET"] = []string{"restart", "node-a/default/web", "--reason", "r"}
	lines["kill TARGET --signal"] = []string{"kill", "node-a/default/web", "--signal", "TERM", "--reason", "r"}
	lines["events --since"] = []string{"events", "--since", "1h"}
	for what, line := range lines {
		for _, help := range []string{"--help", "-h", "-help", "--h"} {
			for i, args := range [][]string{
				append(append([]string{"--server", addr, "--insecure"}, line...), help), // the command's
				append(append([]string{help}, line...), "--insecure"),                   // vigilctl's
			} {
				stdout, stderr, err := runTest(context.Background(), args...)
				if !errors.Is(err, flag.ErrHelp) || exitCode(err) != exitOK {
					t.Errorf("%s %s: %v (exit %d), want help (exit 0)", what, help, err, exitCode(err))
				}
				ok := strings.Contains(stdout, "\nCommands")
				want := "vigilctl's"
				if i == 0 && len(line) > 0 {
					want = "Usage:\n  vigilctl [flags] " + line[0]
					ok = strings.HasPrefix(stdout, want) && strings.ContainsAny(stdout[len(want):len(want)+1], " \n")
				}
				if !ok {
					t.Errorf("%q: stdout is not the usage of %s (no %q):\n%s", args, what, want, stdout)
				}
				if stderr != "" {
					t.Errorf("%q: stderr %q, want nothing", args, stderr)
				}
			}
		}
	}
	if n := calls(); n != 0 {
		t.Fatalf("the aggregator got %d calls from --help", n)
	}
	// The same server does count a call.
	if _, _, err := runTest(context.Background(), "--server", addr, "--insecure", "nodes"); err != nil || calls() != 1 {
		t.Fatalf("nodes: %v; %d calls, want 1", err, calls())
	}
}

// TestNothingSentForWrongWords: an argument that starts with "-" and is no
// flag of the command is a usage error, even after "--", and is never
// sent as a node name or target; so are the other mistakes in the words,
// each printed with the command's usage.
func TestNothingSentForWrongWords(t *testing.T) {
	addr, calls := countingServer(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"nodes", "release", "-bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"nodes", "release", "--", "-bogus"}, `"-bogus" is not a flag of vigilctl nodes`},
		{[]string{"nodes", "release", "-"}, `"-" is not a flag of vigilctl nodes`},
		{[]string{"nodes", "release", "a", "-x"}, "flag provided but not defined: -x"},
		{[]string{"nodes", "release", ""}, "nodes release: want one node name"},
		{[]string{"restart", "--", "-n/default/web", "--reason", "r"}, `"-n/default/web" is not a flag of vigilctl restart`},
		{[]string{"restart", "node-a/default/web", "--reason", "r", "--", "--dry-run"}, `"--dry-run" is not a flag`},
		{[]string{"stop", "node-a/default/web", "-reason"}, "flag needs an argument: -reason"},
		{[]string{"containers", "--", "-x"}, `"-x" is not a flag of vigilctl containers`},
		{[]string{"kill", "node-a/default/web", "--reason", "r", "--signal", "SIGNOPE"}, `--signal "SIGNOPE": not a signal name or number`},
		{[]string{"restart", "node-a/default", "--reason", "r"}, `target "node-a/default"`},
		{[]string{"version", "extra"}, `version: unexpected arguments ["extra"]`},
	} {
		args := append([]string{"--server", addr, "--insecure"}, tc.args...)
		_, stderr, err := runTest(context.Background(), args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) || exitCode(err) != exitUsage || !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%q: %v (exit %d), want a usage error (exit 2) saying %q", tc.args, err, exitCode(err), tc.want)
		}
		if strings.Contains(stderr, "warning") {
			t.Errorf("%q: a warning about connecting, and nothing was contacted: %q", tc.args, stderr)
		}
	}
	if n := calls(); n != 0 {
		t.Fatalf("the aggregator got %d calls from wrong command lines", n)
	}
}

// TestFlagErrorPrintedOnce: a wrong flag prints the command's usage on
// stderr once, and the error once (main prints what run returns): not Go's
// flag line, then the usage, then the error again.
func TestFlagErrorPrintedOnce(t *testing.T) {
	stdout, stderr, err := runTest(context.Background(), "--insecure", "containers", "--bogus")
	if err == nil || err.Error() != "flag provided but not defined: -bogus" {
		t.Fatalf("err = %v", err)
	}
	if stdout != "" || strings.Contains(stderr, "bogus") || strings.Count(stderr, "Usage:") != 1 || !strings.Contains(stderr, "-unhealthy") {
		t.Errorf("stdout %q; stderr, want the usage of containers once and no error (main prints it):\n%s", stdout, stderr)
	}
	// Help shows each flag's real default, not what was given before the
	// command.
	stdout, _, _ = runTest(context.Background(), "--insecure", "--server", "h:1", "containers", "--help")
	if strings.Contains(stdout, "(default true)") || strings.Contains(stdout, `"h:1"`) || !strings.Contains(stdout, `(default "127.0.0.1:7400")`) {
		t.Errorf("containers --help shows the flags given as defaults:\n%s", stdout)
	}
}

// TestCommandListsAgree: a missing and an unknown command name every
// command, from one list, and so does the usage; each command's --help
// has its synopsis.
func TestCommandListsAgree(t *testing.T) {
	want := "want nodes, containers, events, remediations, restart, stop, start, kill, link-up or version"
	for _, args := range [][]string{{"--insecure"}, {"--insecure", "pods"}} {
		_, stderr, err := runTest(context.Background(), args...)
		if err == nil || !strings.HasSuffix(err.Error(), want) || exitCode(err) != exitUsage {
			t.Errorf("%q: %v, want a usage error ending %q", args, err, want)
		}
		if !strings.Contains(stderr, "Commands") {
			t.Errorf("%q: no usage on stderr:\n%s", args, stderr)
		}
	}
	usage := topUsage(globalFlags{})
	for _, name := range commandNames() {
		if !strings.Contains(usage, "vigilctl [flags] "+name) && !strings.Contains(usage, name+"|") && !strings.Contains(usage, "|"+name) {
			t.Errorf("the usage has no synopsis of %s", name)
		}
		if _, ok := actionCommands[name]; ok && !strings.Contains(commandUsage(name, globalFlags{}), "Exit status:") {
			t.Errorf("%s --help does not list the exit statuses", name)
		}
	}
	for name := range actionCommands {
		if _, ok := docOf(name); !ok {
			t.Errorf("action %s is not documented", name)
		}
	}
	if !strings.Contains(usage, "Exit status:") || !strings.Contains(usage, "port "+defaultPort) {
		t.Errorf("the usage does not give the exit statuses and the default port:\n%s", usage)
	}
}

// TestVersion: --version (before or after a command) and `version` print
// the version, need no transport security and contact nothing.
func TestVersion(t *testing.T) {
	addr, calls := countingServer(t)
	for _, args := range [][]string{{"--version"}, {"version"}, {"--server", addr, "--insecure", "nodes", "--version"}, {"--insecure", "version"}} {
		stdout, stderr, err := runTest(context.Background(), args...)
		if err != nil || stdout != versionText()+"\n" || !strings.HasPrefix(stdout, "vigilctl "+version) || stderr != "" {
			t.Errorf("%q: %q, stderr %q, %v", args, stdout, stderr, err)
		}
	}
	if calls() != 0 {
		t.Fatalf("version made %d calls", calls())
	}
}

// TestInsecureWarningOnlyWhenConnecting: the warning about --insecure is
// printed once a call is made, and never when the command line is wrong
// and nothing is contacted.
func TestInsecureWarningOnlyWhenConnecting(t *testing.T) {
	addr, _ := countingServer(t)
	for _, args := range [][]string{
		{"--insecure", "--server", addr, "restart", "bad-target", "--reason", "r"},
		{"--insecure", "--server", addr, "nodes", "--bogus"},
		{"--insecure", "--server", addr, "-o", "yaml", "nodes"},
		{"--insecure", "--server", addr, "restart", "node-a/default/web"},
	} {
		_, stderr, err := runTest(context.Background(), args...)
		if exitCode(err) != exitUsage || strings.Contains(stderr, "warning") {
			t.Errorf("%q: %v; stderr %q: want a usage error and no warning", args, err, stderr)
		}
	}
	_, stderr, err := runTest(context.Background(), "--insecure", "--server", addr, "containers")
	if err != nil || strings.Count(stderr, "vigilctl: warning: connecting to "+addr+" without TLS") != 1 {
		t.Errorf("containers: %v; stderr %q, want the warning once", err, stderr)
	}
}

func TestServerAddress(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1":           "127.0.0.1:7400",
		"127.0.0.1:17400":     "127.0.0.1:17400",
		"agg.example":         "agg.example:7400",
		"agg.example:":        "agg.example:7400",
		"agg.example:443":     "agg.example:443",
		"[::1]":               "[::1]:7400",
		"::1":                 "[::1]:7400",
		"[::1]:9":             "[::1]:9",
		"dns:///agg.example":  "dns:///agg.example:7400",
		"dns:///agg:1":        "dns:///agg:1",
		"dns://8.8.8.8/agg":   "dns://8.8.8.8/agg:7400",
		"dns:agg":             "dns:agg:7400",
		"unix:///run/v.sock":  "unix:///run/v.sock",
		"passthrough:///a:1":  "passthrough:///a:1",
		"dns":                 "dns:///dns:7400",
		"unix:9":              "unix:9",
		"":                    "",
		":7400":               "",
		"agg:http":            "",
		"agg:0":               "",
		"agg:65536":           "",
		"a b":                 "",
		"agg/x":               "",
		"dns:///":             "",
		"1::2::3":             "",
		"http://agg.example:": "",
	} {
		got, err := serverAddress(in)
		switch {
		case want == "" && (err == nil || exitCode(err) != exitUsage):
			t.Errorf("serverAddress(%q) = %q, %v; want a usage error", in, got, err)
		case want != "" && (err != nil || got != want):
			t.Errorf("serverAddress(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	// The flag and the environment alike.
	for _, tc := range []struct {
		args []string
		env  string
	}{{[]string{"--insecure", "--server", "127.0.0.1", "nodes"}, ""}, {[]string{"--insecure", "nodes"}, "127.0.0.1"}} {
		inv, err := parseArgs(tc.args, func(k string) string { return map[string]string{"VIGIL_SERVER": tc.env}[k] })
		if err != nil || inv.global.server != "127.0.0.1:7400" {
			t.Errorf("%q with VIGIL_SERVER=%q: %+v, %v; want server 127.0.0.1:7400", tc.args, tc.env, inv, err)
		}
	}
}
