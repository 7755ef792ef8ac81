package main

import (
	"bytes"
	"errors"
	"flag"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/vigilhq/vigil/internal/errdefs"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// FuzzParseArgs: any command line either parses or fails with a usage
// error (exit 2) or a request for help (exit 0), never panics; what it
// accepts has a server with a port, and never a node name or target that
// starts with "-" (a mistyped flag). Arguments are separated by NUL.
func FuzzParseArgs(f *testing.F) {
	for _, s := range []string{
		"nodes\x00--insecure",
		"--server\x00h:1\x00--insecure\x00containers\x00--node\x00a\x00--unhealthy\x00--all\x00-o\x00wide",
		"events\x00--namespace=k8s.io\x00--tls-ca\x00x",
		"-o=json\x00--timeout\x00-1s\x00nodes",
		"containers\x00--pod",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		args := strings.Split(line, "\x00")
		inv, err := parseArgs(args, noEnv)
		if err != nil {
			var u *usageError
			var h *helpRequest
			if !(errors.As(err, &u) && errors.Is(err, errdefs.ErrInvalid)) && !(errors.As(err, &h) && errors.Is(err, flag.ErrHelp)) {
				t.Fatalf("parseArgs(%q) = %v: neither a usage error nor help", args, err)
			}
			return
		}
		if inv.command == "version" {
			return
		}
		if inv.global.timeout <= 0 || inv.global.server == "" {
			t.Fatalf("parseArgs(%q) accepted %+v", args, inv.global)
		}
		if again, err := serverAddress(inv.global.server); err != nil || again != inv.global.server {
			t.Fatalf("parseArgs(%q) accepted server %q, which reads again as %q, %v", args, inv.global.server, again, err)
		}
		if strings.HasPrefix(inv.release, "-") || strings.HasPrefix(inv.target, "-") {
			t.Fatalf("parseArgs(%q) accepted release %q, target %q", args, inv.release, inv.target)
		}
		if _, action := actionCommands[inv.command]; action && (inv.targetProto == nil || strings.TrimSpace(inv.reason) == "") {
			t.Fatalf("parseArgs(%q) accepted an action without a target or reason: %+v", args, inv)
		}
	})
}

// FuzzServerAddress: whatever --server or VIGIL_SERVER says, it is read
// without panicking, as a usage error or as an address that reads again
// as itself; without a scheme, that is HOST:PORT with a port from 1 to
// 65535 (never gRPC's default of 443 by omission).
func FuzzServerAddress(f *testing.F) {
	for _, s := range []string{"127.0.0.1", "agg.example:7400", "[::1]", "::1", "dns:///agg", "unix:///run/v.sock", ":7400", "agg:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := serverAddress(s)
		if err != nil {
			if exitCode(err) != exitUsage {
				t.Fatalf("serverAddress(%q) = %v: not a usage error", s, err)
			}
			return
		}
		if again, err := serverAddress(got); err != nil || again != got {
			t.Fatalf("serverAddress(%q) = %q, which reads again as %q, %v", s, got, again, err)
		}
		for _, scheme := range grpcSchemes {
			if strings.HasPrefix(got, scheme) {
				return
			}
		}
		host, port, err := net.SplitHostPort(got)
		if err != nil || host == "" {
			t.Fatalf("serverAddress(%q) = %q: %v", s, got, err)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			t.Fatalf("serverAddress(%q) = %q: port %q", s, got, port)
		}
	})
}

// FuzzRender: whatever the aggregator sends (here: any protobuf bytes),
// every format renders it without panicking, and a table has exactly one
// line per row and no control character but the newlines ending them: text
// from agents can neither break rows apart nor drive the terminal.
func FuzzRender(f *testing.F) {
	fx := fixture()
	for _, m := range []proto.Message{
		&vigilv1.ListContainersResponse{Containers: fx.containers},
		&vigilv1.ListNodesResponse{Nodes: fx.nodes},
		fx.events[2],
		// Text with C0 and C1 controls (ESC, NEL, CSI).
		&vigilv1.ListContainersResponse{Containers: []*vigilv1.NodeContainer{{Node: "node\u0085a",
			Container: &vigilv1.Container{Id: "web\x1b[2J", Namespace: "default\u009b31m", Image: "img\tx\u0080"}}}},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, format := range []string{"table", "wide", "json"} {
			var out bytes.Buffer
			p := &printer{w: &out, errw: &bytes.Buffer{}, format: format, now: now}
			var cs vigilv1.ListContainersResponse
			if proto.Unmarshal(data, &cs) == nil {
				out.Reset()
				if err := p.containers(&cs); err != nil {
					t.Fatal(err)
				}
				checkLines(t, format, out.String(), len(cs.GetContainers()))
			}
			var ns vigilv1.ListNodesResponse
			if proto.Unmarshal(data, &ns) == nil {
				out.Reset()
				if err := p.nodes(&ns); err != nil {
					t.Fatal(err)
				}
				checkLines(t, format, out.String(), len(ns.GetNodes()))
			}
			var ev vigilv1.WatchEventsResponse
			if proto.Unmarshal(data, &ev) == nil {
				out.Reset()
				if err := p.event(&ev); err != nil {
					t.Fatal(err)
				}
				want := 2 // header and the event
				if format == "json" {
					want = 1
				}
				if format != "json" {
					checkControls(t, format, out.String())
				}
				if n := strings.Count(out.String(), "\n"); n != want {
					t.Fatalf("%s event rendered as %d lines:\n%s", format, n, out.String())
				}
			}
		}
	})
}

func checkLines(t *testing.T, format, out string, rows int) {
	t.Helper()
	if format == "json" {
		return
	}
	checkControls(t, format, out)
	if rows == 0 {
		return
	}
	if n := strings.Count(out, "\n"); n != rows+1 {
		t.Fatalf("%s table of %d rows has %d lines:\n%s", format, rows, n, out)
	}
}

// checkControls fails when a table has a control character other than the
// newlines ending its rows.
func checkControls(t *testing.T, format, out string) {
	t.Helper()
	for _, r := range out {
		if unicode.IsControl(r) && r != '\n' {
			t.Fatalf("%s table has control character %U:\n%q", format, r, out)
		}
	}
}

// FuzzTooSlowSince: whatever status the aggregator ends a watch with (here:
// any google.rpc.Status bytes, details included), reading it as a slow
// watcher's drop never panics, and a time to resume from is only taken
// from a ResourceExhausted status with a WATCHER_TOO_SLOW ErrorInfo whose
// since parses.
func FuzzTooSlowSince(f *testing.F) {
	at := time.Date(2026, 12, 3, 9, 0, 0, 123, time.UTC)
	for _, st := range []*status.Status{
		status.New(codes.ResourceExhausted, "too slow"),
		status.New(codes.Unavailable, "gone"),
	} {
		f.Add(mustStatusBytes(f, st))
	}
	for _, since := range []string{at.Format(time.RFC3339Nano), "yesterday", ""} {
		st, err := status.New(codes.ResourceExhausted, "too slow").WithDetails(&errdetails.ErrorInfo{
			Reason: tooSlowReason, Domain: "vigil.io", Metadata: map[string]string{"since": since, "feed": "local"}})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(mustStatusBytes(f, st))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var p spb.Status
		if proto.Unmarshal(b, &p) != nil {
			return
		}
		err := status.FromProto(&p).Err()
		since, ok := tooSlowSince(err)
		if !ok {
			return
		}
		if codes.Code(p.GetCode()) != codes.ResourceExhausted {
			t.Fatalf("a time to resume from (%v) read from a %v status", since, codes.Code(p.GetCode()))
		}
		found := false
		for _, d := range status.FromProto(&p).Details() {
			if info, isInfo := d.(*errdetails.ErrorInfo); isInfo && info.GetReason() == tooSlowReason {
				if got, err := time.Parse(time.RFC3339Nano, info.GetMetadata()["since"]); err == nil && got.Equal(since) {
					found = true
				}
			}
		}
		if !found {
			t.Fatalf("resume time %v is in no WATCHER_TOO_SLOW detail of %v", since, &p)
		}
	})
}

func mustStatusBytes(f *testing.F, st *status.Status) []byte {
	b, err := proto.Marshal(st.Proto())
	if err != nil {
		f.Fatal(err)
	}
	return b
}
