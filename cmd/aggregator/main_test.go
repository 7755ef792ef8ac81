package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/pki"
	"github.com/vigilhq/vigil/internal/testenv"
)

func TestFlagsRefuseWithoutTransportSecurity(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "give --tls-cert, --tls-key and --tls-ca"},
		{[]string{"--insecure", "--tls-cert", "x"}, "choose one"},
		{[]string{"--tls-cert", "/nonexistent.crt"}, "certificate, key and CA files are all required"},
		{[]string{"--insecure", "--log-level", "loud"}, "--log-level \"loud\""},
		{[]string{"--insecure", "--stale-after", "-1s"}, "stale-after -1s is negative"},
		{[]string{"--insecure", "extra"}, "unexpected arguments"},
		{[]string{"--insecure", "--gc-percent", "5"}, "--gc-percent 5"},
		{[]string{"--insecure", "--grpc-listen", "0.0.0.0:7400"}, "insecure mode serves loopback only"},
		{[]string{"--insecure", "--ca-cert", "x"}, "needs --ca-cert, --ca-key, --bootstrap-tokens-file and --data-dir together"},
		{[]string{"--insecure", "--api-tokens-file", "/nonexistent"}, "--api-tokens-file"},
		{[]string{"--insecure", "--max-string-bytes", "10"}, "string bytes at least 256"},
		{[]string{"--insecure", "--lease-ttl", "5s"}, "--lease-ttl needs --etcd-endpoints"},
		{[]string{"--insecure", "--advertise-api", "10.0.0.1:7400"}, "--advertise-api needs --etcd-endpoints"},
		{[]string{"--insecure", "--peer-server-name", "vigil-aggregator.vigil-system.svc"}, "--peer-server-name needs TLS"},
	} {
		_, _, err := parseFlags(tc.args, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%q) = %v, want an error saying %q", tc.args, err, tc.want)
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("parseFlags(%q): %v does not wrap ErrInvalid", tc.args, err)
		}
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestRunServesAndStops starts the real main loop with mTLS and checks that
// it serves and returns promptly and cleanly when its context ends (what
// SIGTERM does through signal.NotifyContext).
func TestRunServesAndStops(t *testing.T) {
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f, err := ca.WriteFiles(dir, "aggregator", "aggregator")
	if err != nil {
		t.Fatal(err)
	}
	httpAddr := freeAddr(t)
	args := []string{"--grpc-listen", freeAddr(t), "--http-listen", httpAddr,
		"--tls-cert", f.Cert, "--tls-key", f.Key, "--tls-ca", filepath.Join(dir, "ca.crt"), "--log-level", "warn"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var logs bytes.Buffer
	go func() { done <- run(ctx, args, io.Discard, &logs) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("not ready within 5s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v after shutdown", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return within 10s of its context ending")
	}
}

// TestVersionFlag: --version prints main.version alone on stdout and
// returns nil (exit 0) without reading or checking anything else: no TLS
// flags are needed, and the others are not validated.
func TestVersionFlag(t *testing.T) {
	defer func(v string) { version = v }(version)
	version = "v1.2.3-test"
	for _, args := range [][]string{{"--version"}, {"-version", "--gc-percent", "5"}} {
		var stdout, stderr bytes.Buffer
		if err := run(context.Background(), args, &stdout, &stderr); err != nil {
			t.Fatalf("run(%q) = %v, want nil", args, err)
		}
		if stdout.String() != "v1.2.3-test\n" || stderr.Len() != 0 {
			t.Fatalf("run(%q): stdout %q, stderr %q; want the version alone on stdout", args, stdout.String(), stderr.String())
		}
	}
}

// TestVersionFromLdflags: the binary built with -ldflags "-X
// main.version=..." prints that version for --version and exits 0.
func TestVersionFromLdflags(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the aggregator binary")
	}
	testenv.CheckReleaseVersion(t, ".", "v9.8.7-ldflags")
}
