package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/store/bolt"
)

// asMainEnv set to 1 makes the test binary run vigilctl's main (TestMain):
// what a shell sees, exit status included.
const asMainEnv = "VIGILCTL_TEST_AS_MAIN"

// vigilctlProcess runs vigilctl with args as a process, without the VIGIL_*
// environment of the test.
func vigilctlProcess(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "VIGIL_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, asMainEnv+"=1")
	var out, errw bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errw
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("vigilctl %q: %v", args, err)
	}
	return out.String(), errw.String(), code
}

// TestExitStatusOfTheProcess: what a script sees. A refused action exits 3
// with its reason on stderr, once, whatever the output format, and the
// decision on stdout; a wrong command line exits 2 with its error once,
// after the usage; help exits 0 with the usage on stdout; an unreachable
// aggregator exits 1.
func TestExitStatusOfTheProcess(t *testing.T) {
	st, err := bolt.Open(filepath.Join(t.TempDir(), "vigil.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	agg, _, _ := runAggregator(t, aggregator.Config{GRPCListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Insecure: true,
		ShutdownTimeout: 2 * time.Second, Logger: slog.New(slog.DiscardHandler), Store: st})
	addr := agg.GRPCAddr().String()

	reason := "vigilctl: restart node-a/default/nosuch: not done: suppressed (target_unknown): target node-a/default/nosuch: "
	for _, format := range []string{"table", "wide", "json"} {
		stdout, stderr, code := vigilctlProcess(t, "--server", addr, "--insecure", "-o", format, "restart", "node-a/default/nosuch", "--reason", "x")
		if code != exitNotDone || strings.Count(stderr, reason) != 1 || !strings.Contains(stdout, "nosuch") || strings.Contains(stdout, "not done") {
			t.Errorf("-o %s restart of an unknown target: exit %d\nstdout:\n%s\nstderr:\n%s\nwant exit 3, the decision on stdout and %q on stderr",
				format, code, stdout, stderr, reason)
		}
	}
	stdout, stderr, code := vigilctlProcess(t, "--server", addr, "--insecure", "restart", "node-a/default/nosuch", "--reason", "x", "--dry-run")
	if code != exitNotDone || !strings.Contains(stderr, "(dry run): would not be done: suppressed (target_unknown)") {
		t.Errorf("dry run of an unknown target: exit %d, stderr %q", code, stderr)
	}

	stdout, stderr, code = vigilctlProcess(t, "--insecure", "--server", addr, "containers", "--bogus")
	if code != exitUsage || stdout != "" || strings.Count(stderr, "flag provided but not defined: -bogus") != 1 ||
		!strings.HasSuffix(stderr, "\nvigilctl: flag provided but not defined: -bogus\n") || !strings.Contains(stderr, "Usage:") {
		t.Errorf("containers --bogus: exit %d, stdout %q, stderr:\n%s\nwant exit 2, the usage, then the error once", code, stdout, stderr)
	}
	stdout, stderr, code = vigilctlProcess(t, "--insecure", "--server", addr, "nodes", "release", "--help")
	if code != exitOK || !strings.HasPrefix(stdout, "Usage:\n  vigilctl [flags] nodes") || stderr != "" {
		t.Errorf("nodes release --help: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	stdout, stderr, code = vigilctlProcess(t)
	if code != exitUsage || !strings.HasSuffix(stderr, "vigilctl: no command given: want "+commandList()+"\n") {
		t.Errorf("no command: exit %d, stderr:\n%s", code, stderr)
	}
	stdout, _, code = vigilctlProcess(t, "--version")
	if code != exitOK || !strings.HasPrefix(stdout, "vigilctl dev") {
		t.Errorf("--version: exit %d, %q", code, stdout)
	}

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := lis.Addr().String()
	lis.Close()
	_, stderr, code = vigilctlProcess(t, "--insecure", "--server", closed, "nodes")
	if code != exitError || !strings.Contains(stderr, "vigilctl: cannot reach aggregator at "+closed) {
		t.Errorf("nodes against a closed port: exit %d, stderr %q", code, stderr)
	}
}

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, exitOK},
		{&helpRequest{}, exitOK},
		{usagef("x"), exitUsage},
		{fmt.Errorf("wrapped: %w", usagef("x")), exitUsage},
		{&notDoneError{code: exitNotDone}, exitNotDone},
		{&notDoneError{code: exitOutcomeUnknown}, exitOutcomeUnknown},
		{fmt.Errorf("cannot reach: %w", errdefs.ErrUnavailable), exitError},
		{fmt.Errorf("list containers: %w", errdefs.ErrInvalid), exitError}, // the server's InvalidArgument is no usage error
	} {
		if got := exitCode(tc.err); got != tc.want {
			t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}
