package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
	vruntime "github.com/vigilhq/vigil/internal/runtime"
	"github.com/vigilhq/vigil/internal/testenv"
)

func TestParseFlagsRejectsBadConfig(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--state-dir", ""}, "state dir is empty"},
		{[]string{"--interval", "10ms"}, "sample interval 10ms is below 1s"},
		{[]string{"--aggregator", "nohost"}, `aggregator address "nohost"`},
		{[]string{"--aggregator", "127.0.0.1:7400"}, "needs a TLS certificate, key and CA (or insecure"},
		{[]string{"--aggregator", "127.0.0.1:7400", "--insecure", "--tls-ca", "ca.crt"}, "insecure and TLS files are both set"},
		{[]string{"--stats-source", "magic"}, `stats source "magic"`},
		{[]string{"--container-log-max-bytes", "-1"}, "container log max bytes must not be negative, got -1"},
		{[]string{"--fs-usage-interval", "10ms"}, "fs usage interval 10ms: want 0 (off) or 1s or more"},
		{[]string{"--network=false", "--network-affects-health"}, "network affecting health needs network monitoring"},
		{[]string{"extra"}, "unexpected arguments: extra"},
		{[]string{"--gc-percent", "5"}, "--gc-percent 5: want 10 or more"},
		{[]string{"--max-procs", "0"}, "--max-procs 0: want 1 or more"},
		{[]string{"--shutdown-grace", "-1s"}, "shutdown grace must not be negative, got -1s"},
		{[]string{"--bootstrap-token-file", "t"}, "--bootstrap-token-file needs --aggregator"},
		{[]string{"--bootstrap-token-file", "t", "--aggregator", "127.0.0.1:7400"}, "needs --tls-ca"},
		{[]string{"--bootstrap-token-file", "t", "--aggregator", "127.0.0.1:7400", "--tls-ca", "ca", "--tls-cert", "c"}, "choose one"},
		{[]string{"--gossip-listen", "0.0.0.0:7946"}, "--gossip-listen needs --gossip-key-file (gossip is encrypted), or --gossip-insecure"},
		{[]string{"--gossip-listen", "0.0.0.0:7946", "--gossip-insecure", "--gossip-key-file", "k"}, "--gossip-key-file and --gossip-insecure are both set"},
		{[]string{"--gossip-seeds", "10.0.0.1:7946"}, "need --gossip-listen (gossip is off without it)"},
		{[]string{"--gossip-cross-check-peers", "2"}, "need --gossip-listen (gossip is off without it)"},
		{[]string{"--gossip-listen", "0.0.0.0:7946", "--gossip-insecure", "--gossip-cross-check-peers", "-1"}, "--gossip-cross-check-peers -1: want 0 (off) or more"},
		{[]string{"--gossip-listen", "node-a:7946", "--gossip-insecure"}, `gossip listen address "node-a:7946": want an IP address`},
		{[]string{"--gossip-listen", "0.0.0.0", "--gossip-insecure"}, `gossip listen address "0.0.0.0"`},
		{[]string{"--gossip-listen", "0.0.0.0:7946", "--gossip-insecure", "--gossip-advertise", "node-a"}, `gossip advertise address "node-a": want an IP address`},
	} {
		_, _, err := parseFlags(tc.args, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want it to say %q", tc.args, err, tc.want)
		}
	}
	// Every problem is reported at once.
	_, _, err := parseFlags([]string{"--state-dir", "", "--interval", "1ms"}, &bytes.Buffer{})
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "state dir") || !strings.Contains(err.Error(), "interval") {
		t.Errorf("err = %v, want both problems and ErrInvalid", err)
	}
}

func TestParseFlagsBootstrap(t *testing.T) {
	dir := t.TempDir()
	cfg, pf, err := parseFlags([]string{"--node-name", "n1", "--state-dir", dir, "--aggregator", "127.0.0.1:7400",
		"--tls-ca", "/etc/vigil/ca.crt", "--bootstrap-token-file", "/etc/vigil/token"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TLS.Cert != filepath.Join(dir, "pki", "node.crt") || cfg.TLS.Key != filepath.Join(dir, "pki", "node.key") || !cfg.TLS.Pending {
		t.Fatalf("TLS files = %+v, want the state dir's pki/ and pending", cfg.TLS)
	}
	if k, err := pf.bootstrap.keeper(cfg); err != nil || k == nil || k.Files().Cert != cfg.TLS.Cert {
		t.Fatalf("keeper = %v, %v", k, err)
	}
}

func TestParseFlagsGossip(t *testing.T) {
	cfg, _, err := parseFlags([]string{"--state-dir", t.TempDir(), "--gossip-listen", "0.0.0.0:7946", "--gossip-advertise", "10.0.0.5",
		"--gossip-seeds", "10.0.0.6:7946, 10.0.0.7", "--gossip-seed-dns", "vigil-agent-gossip.vigil-system.svc:7946",
		"--gossip-key-file", "/etc/vigil/gossip/keys", "--gossip-cross-check-peers", "3"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	g := cfg.Gossip
	if g.Listen != "0.0.0.0:7946" || g.Advertise != "10.0.0.5" || len(g.Seeds) != 2 || g.Seeds[1] != "10.0.0.7" ||
		g.SeedDNS != "vigil-agent-gossip.vigil-system.svc:7946" || g.KeyFile != "/etc/vigil/gossip/keys" || g.Insecure || g.CrossCheckPeers != 3 {
		t.Fatalf("gossip config = %+v", g)
	}
	cfg, _, err = parseFlags([]string{"--state-dir", t.TempDir()}, &bytes.Buffer{})
	if err != nil || cfg.Gossip.Listen != "" || cfg.Gossip.CrossCheckPeers != 0 {
		t.Fatalf("gossip must be off by default: %+v, %v", cfg.Gossip, err)
	}
}

func TestParseFlagsDefaults(t *testing.T) {
	t.Setenv("NODE_NAME", "node-7")
	cfg, pf, err := parseFlags([]string{"--namespaces", "default, k8s.io", "--state-dir", t.TempDir()}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeName != "node-7" || pf.logLevel != "info" || pf.gcPercent != 50 || pf.maxProcs != 2 || len(cfg.Namespaces) != 2 || cfg.Namespaces[1] != "k8s.io" {
		t.Fatalf("cfg = %+v, process flags %+v", cfg, pf)
	}
	if cfg.AggregatorAddress != "" || !cfg.Network || cfg.StatsSource != "cgroup" || cfg.ShutdownGrace != 15*time.Second {
		t.Fatalf("unexpected defaults: %+v", cfg)
	}
	if cfg.FSUsageInterval != time.Minute {
		t.Fatalf("fs usage interval default %v, want 1m", cfg.FSUsageInterval)
	}
	if cfg.ContainerLogMaxBytes != vruntime.DefaultLogMaxBytes {
		t.Fatalf("container log max bytes default %d, want runtime.DefaultLogMaxBytes", cfg.ContainerLogMaxBytes)
	}
	if cfg, _, err := parseFlags([]string{"--state-dir", t.TempDir(), "--container-log-max-bytes", "1048576"}, &bytes.Buffer{}); err != nil || cfg.ContainerLogMaxBytes != 1<<20 {
		t.Fatalf("--container-log-max-bytes 1048576: %d, %v", cfg.ContainerLogMaxBytes, err)
	}
}

// TestRunStopsCleanly: with containerd absent the agent keeps running (and
// says so on /healthz); cancelling its context (what SIGTERM does) makes run
// return nil promptly.
func TestRunStopsCleanly(t *testing.T) {
	// run caps GOMAXPROCS (--max-procs 2 by default) unless the environment
	// sets it: start from more, as on a big node.
	capped := os.Getenv("GOMAXPROCS") == ""
	if capped {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(8))
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var logs bytes.Buffer
	go func() {
		done <- run(ctx, []string{
			"--node-name", "n1", "--state-dir", dir,
			"--containerd", filepath.Join(dir, "no-such.sock"),
			"--metrics-listen", addr, "--network=false",
		}, io.Discard, &syncWriter{b: &logs})
	}()
	var body string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			continue
		}
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		resp.Body.Close()
		body = b.String()
		break
	}
	if !strings.Contains(body, "containerd: unavailable") {
		t.Fatalf("/healthz = %q, want it to report containerd unavailable", body)
	}
	if n := runtime.GOMAXPROCS(0); capped && n != 2 {
		t.Errorf("GOMAXPROCS is %d after start, want the --max-procs default of 2", n)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run after cancel: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return within 15s of cancel")
	}
}

// syncWriter serialises writes from the agent's goroutines.
type syncWriter struct {
	mu sync.Mutex
	b  *bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func TestReloadOnHUP(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	hup := make(chan os.Signal)
	calls := make(chan struct{}, 2)
	errs := []error{errors.New("bad key file"), nil}
	var buf syncBuffer
	done := make(chan struct{})
	go func() {
		reloadOnHUP(ctx, hup, func() error {
			err := errs[0]
			errs = errs[1:]
			calls <- struct{}{}
			return err
		}, slog.New(slog.NewTextHandler(&buf, nil)))
		close(done)
	}()
	for i := 0; i < 2; i++ {
		hup <- syscall.SIGHUP
		<-calls
	}
	cancel()
	<-done
	if log := buf.String(); !strings.Contains(log, "gossip keys not reloaded; the keys in use stay") || !strings.Contains(log, "bad key file") || !strings.Contains(log, "SIGHUP: gossip keys reloaded") {
		t.Fatalf("log:\n%s", log)
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestVersionFlag: --version prints main.version and nothing else to
// stdout, and run returns nil at once (the process exits 0) without
// checking or starting anything: not even an empty state dir is read.
func TestVersionFlag(t *testing.T) {
	defer func(v string) { version = v }(version)
	version = "v1.2.3-test"
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := run(ctx, []string{"--version", "--state-dir", ""}, &stdout, &stderr); err != nil {
		t.Fatalf("run --version: %v", err)
	}
	if stdout.String() != "v1.2.3-test\n" || stderr.Len() != 0 {
		t.Fatalf("run --version printed %q to stdout and %q to stderr; want the version alone on stdout", stdout.String(), stderr.String())
	}
}

// TestVersionFlagBinary: the version --version prints is the one the build
// sets with -ldflags "-X main.version=...", and the binary exits 0.
func TestVersionFlagBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent")
	}
	testenv.CheckReleaseVersion(t, ".", "v9.8.7-ldflags")
}
