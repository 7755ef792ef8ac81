package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/pki"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// aggregatorProc is a real aggregator served in-process on fixed loopback
// addresses, so that it can be killed and started again where agents expect
// it.
type aggregatorProc struct {
	t      testing.TB
	cfg    aggregator.Config
	agg    *aggregator.Aggregator
	cancel context.CancelFunc
	done   chan error
}

func startAggregator(t testing.TB, files pki.Files, grpcAddr, httpAddr string) *aggregatorProc {
	t.Helper()
	tlsCfg, err := pki.ServerConfig(files)
	if err != nil {
		t.Fatal(err)
	}
	cfg := aggregator.DefaultConfig()
	cfg.GRPCListen, cfg.HTTPListen = grpcAddr, httpAddr
	cfg.TLS = tlsCfg
	cfg.AckInterval = 50 * time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	p := &aggregatorProc{t: t, cfg: cfg}
	p.start()
	t.Cleanup(p.stop)
	return p
}

func (p *aggregatorProc) start() {
	p.t.Helper()
	var err error
	// The old listener may take a moment to be released.
	for i := 0; i < 50; i++ {
		cfg := p.cfg
		cfg.Registry = nil // a new process: a new registry
		p.agg, err = aggregator.New(cfg)
		if err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		p.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel, p.done = cancel, make(chan error, 1)
	go func() { p.done <- p.agg.Run(ctx) }()
}

// stop ends the aggregator; its in-memory state is gone with it.
func (p *aggregatorProc) stop() {
	if p.cancel == nil {
		return
	}
	p.cancel()
	p.cancel = nil
	<-p.done
}

// exitsInMetrics sums vigil_container_exits_total on the aggregator's
// /metrics for containers whose name starts with prefix.
func exitsInMetrics(t *testing.T, httpAddr, prefix string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		return -1, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	re := regexp.MustCompile(`(?m)^vigil_container_exits_total\{[^}]*container="` + regexp.QuoteMeta(prefix) + `[^"]*"[^}]*\} (\d+)$`)
	total := 0
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		n, _ := strconv.Atoi(m[1])
		total += n
	}
	return total, string(b)
}

// TestStreamToAggregatorLosesNoExit runs the real agent against a real
// aggregator over mutual TLS on loopback: exits of real containers show in
// the aggregator's /metrics and JSON API, and a burst of 100 exits during
// which the aggregator is killed and started again (with empty memory) ends
// with exactly 100 counted.
func TestStreamToAggregatorLosesNoExit(t *testing.T) {
	h := newHarness(t)
	dir := t.TempDir()
	ca, err := pki.NewCA("vigil-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	srvFiles, err := ca.WriteFiles(dir, "aggregator", "aggregator")
	if err != nil {
		t.Fatal(err)
	}
	nodeFiles, err := ca.WriteFiles(dir, "node", "test-node")
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr, httpAddr := freeAddr(t), freeAddr(t)
	agg := startAggregator(t, srvFiles, grpcAddr, httpAddr)

	agentHTTP := freeAddr(t)
	h.start(func(c *Config) {
		c.MetricsListen = agentHTTP
		c.AggregatorAddress = grpcAddr
		c.TLS = nodeFiles
		c.TLSServerName = "localhost"
		c.StopWindow = 0
		c.BackoffInitial = 50 * time.Millisecond
		c.BackoffMax = 100 * time.Millisecond
	})

	// One exit first: it must show in /metrics and in the API.
	h.run("single", map[string]string{"vigil.io/restart-policy": "no"}, "exit", "3", "--after", "200ms")
	waitUntil(t, 30*time.Second, "the exit of single in /metrics", func() bool {
		n, _ := exitsInMetrics(t, httpAddr, "single")
		return n == 1
	})
	resp, err := apiGet(t, ca, httpAddr, "/api/v1/containers?node=test-node")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var list struct {
		Containers []struct {
			Node      string          `json:"node"`
			Container json.RawMessage `json:"container"`
		} `json:"containers"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatalf("/api/v1/containers: %v: %s", err, body)
	}
	if len(list.Containers) != 1 || !strings.Contains(string(list.Containers[0].Container), `"single"`) ||
		!strings.Contains(string(list.Containers[0].Container), "EXIT_REASON_ERROR") {
		t.Fatalf("/api/v1/containers does not show single's exit: %s", body)
	}

	// The agent's own /metrics shows its node with the same names, and
	// /metrics/self its cost.
	get := func(path string) string {
		resp, err := http.Get("http://" + agentHTTP + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", path, resp.Status)
		}
		return string(b)
	}
	if n, _ := exitsInMetrics(t, agentHTTP, "single"); n != 1 {
		t.Fatalf("agent /metrics: single's exits = %d, want 1:\n%s", n, get("/metrics"))
	}
	if !strings.Contains(get("/metrics"), `vigil_node_up{node="test-node"} 1`) {
		t.Fatalf("agent /metrics has no vigil_node_up for its node:\n%s", get("/metrics"))
	}
	// The first collection runs a second after the agent started: with
	// the test image already built (the whole package's run), the exit
	// above can show sooner.
	waitUntil(t, 30*time.Second, "a first resources collection in /metrics/self", func() bool {
		return strings.Contains(get("/metrics/self"), `vigil_agent_collector_success{collector="resources"} 1`)
	})
	self := get("/metrics/self")
	for _, name := range []string{"vigil_agent_collection_duration_seconds", "vigil_agent_collector_success{collector=\"resources\"} 1", "vigil_agent_state_writes_total", "vigil_agent_restart_overhead_seconds", "vigil_agent_uplink_", "vigil_agent_runtime_", "vigil_agent_health_", "process_resident_memory_bytes"} {
		if !strings.Contains(self, name) {
			t.Errorf("agent /metrics/self lacks %s", name)
		}
	}
	if !strings.HasPrefix(get("/healthz"), "ok") {
		t.Error("agent /healthz does not answer ok")
	}

	// The burst: 10 containers that each exit 10 times (on-failure:9), 100
	// exits in all. Kill the aggregator in the middle and start a new one.
	for i := 0; i < 10; i++ {
		h.run(fmt.Sprintf("burst%d", i), map[string]string{"vigil.io/restart-policy": "on-failure:9"}, "exit", "1", "--after", "100ms")
	}
	waitUntil(t, 60*time.Second, "some exits before the kill", func() bool {
		n := 0
		for i := 0; i < 10; i++ {
			n += h.count(fmt.Sprintf("burst%d", i), exited)
		}
		return n >= 30
	})
	agg.stop()
	time.Sleep(time.Second) // exits keep happening while it is down
	agg.start()

	for i := 0; i < 10; i++ {
		h.waitFor(fmt.Sprintf("burst%d", i), "give up", 120*time.Second, isDecision(vigilv1.RestartDecisionKind_RESTART_DECISION_KIND_GIVE_UP))
	}
	var last string
	waitUntil(t, 30*time.Second, "exactly 100 burst exits in /metrics", func() bool {
		var n int
		n, last = exitsInMetrics(t, httpAddr, "burst")
		return n == 100
	})
	n, _ := exitsInMetrics(t, httpAddr, "burst")
	if n != 100 {
		t.Fatalf("burst exits in /metrics = %d, want 100\n%s", n, last)
	}
}

func waitUntil(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
