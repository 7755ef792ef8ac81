package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/agent/uplink"
	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/pki"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// apiGet GETs path from the aggregator's HTTP API over TLS, as a viewer
// whose certificate ca signs (the API needs TLS and a credential).
func apiGet(t *testing.T, ca *pki.CA, httpAddr, path string) (*http.Response, error) {
	t.Helper()
	f, err := ca.WriteIdentity(t.TempDir(), "viewer", pki.Identity{Role: pki.RoleViewer, Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	tc, err := pki.ClientConfig(f, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: tc}
	defer tr.CloseIdleConnections()
	return (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + httpAddr + path)
}

// TestBootstrapRenewsDuringExitBurst runs the real agent with only a
// bootstrap token (its certificate comes from the certificate keeper, as
// vigil-agent --bootstrap-token-file runs it) against a real aggregator
// that issues 4-second certificates. The agent gets its certificate and
// streams; during a burst of 100 exits of real containers the certificate
// is renewed several times, the stream is not replaced, and the aggregator
// counts every exit exactly once.
func TestBootstrapRenewsDuringExitBurst(t *testing.T) {
	h := newHarness(t)
	dir := t.TempDir()
	ca, err := pki.NewCA("vigil-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	srvFiles, err := ca.WriteServer(dir, "aggregator", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	caCert, caKey, err := ca.WriteCA(dir, "signer")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := pki.LoadCA(caCert, caKey)
	if err != nil {
		t.Fatal(err)
	}
	tokensFile := filepath.Join(dir, "bootstrap-tokens")
	if err := os.WriteFile(tokensFile, []byte("daemonset-token-0123456789 daemonset\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokens, err := pki.OpenBootstrapTokens(tokensFile)
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, err := pki.ServerConfig(srvFiles)
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr, httpAddr := freeAddr(t), freeAddr(t)
	cfg := aggregator.DefaultConfig()
	cfg.GRPCListen, cfg.HTTPListen, cfg.TLS = grpcAddr, httpAddr, serverTLS
	cfg.AckInterval = 50 * time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.Bootstrap = &aggregator.BootstrapConfig{CA: signer, Tokens: tokens, NodeCertTTL: 4 * time.Second,
		BindingsFile: filepath.Join(dir, "node-bindings.json")}
	agg, err := aggregator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	aggDone := make(chan error, 1)
	go func() { aggDone <- agg.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-aggDone })

	// The agent's side: the token file of the Secret, the keeper beside
	// the agent, the certificate files in the state dir.
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("daemonset-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	keeper, err := uplink.NewKeeper(uplink.KeeperConfig{Address: grpcAddr, ServerName: "localhost", CAFile: srvFiles.CA,
		TokenFile: tokenFile, Dir: filepath.Join(h.stateDir, "pki"), NodeName: "test-node",
		RetryInitial: 50 * time.Millisecond, RetryMax: 500 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	kctx, stopKeeper := context.WithCancel(context.Background())
	kdone := make(chan error, 1)
	go func() { kdone <- keeper.Run(kctx) }()
	t.Cleanup(func() {
		stopKeeper()
		if err := <-kdone; err != nil {
			t.Errorf("keeper: %v", err)
		}
	})

	agentHTTP := freeAddr(t)
	h.start(func(c *Config) {
		c.MetricsListen = agentHTTP
		c.AggregatorAddress = grpcAddr
		c.TLS = keeper.Files()
		c.TLSServerName = "localhost"
		c.StopWindow = 0
		c.BackoffInitial = 50 * time.Millisecond
		c.BackoffMax = 100 * time.Millisecond
	})
	waitUntil(t, 30*time.Second, "the agent bootstrapped and streaming", func() bool {
		nodes := agg.Fleet().Nodes()
		return keeper.Issued() >= 1 && len(nodes) == 1 && nodes[0].GetState() == vigilv1.NodeState_NODE_STATE_UP
	})
	reconnects := agentCounter(t, agentHTTP, "vigil_agent_uplink_reconnects_total")
	renewals := keeper.Renewals()

	// 10 containers that each exit 10 times (on-failure:9), half a second
	// apart: several certificate lifetimes.
	for i := 0; i < 10; i++ {
		h.run(fmt.Sprintf("burst%d", i), map[string]string{"vigil.io/restart-policy": "on-failure:9"}, "exit", "1", "--after", "500ms")
	}
	for i := 0; i < 10; i++ {
		h.waitFor(fmt.Sprintf("burst%d", i), "give up", 120*time.Second, isDecision(vigilv1.RestartDecisionKind_RESTART_DECISION_KIND_GIVE_UP))
	}
	var last string
	waitUntil(t, 30*time.Second, "exactly 100 burst exits in /metrics", func() bool {
		var n int
		n, last = exitsInMetrics(t, httpAddr, "burst")
		return n == 100
	})
	time.Sleep(500 * time.Millisecond)
	if n, _ := exitsInMetrics(t, httpAddr, "burst"); n != 100 {
		t.Fatalf("burst exits in /metrics = %d, want 100\n%s", n, last)
	}
	if got := keeper.Renewals() - renewals; got < 2 {
		t.Fatalf("renewals during the burst = %d, want at least 2", got)
	}
	if got := agentCounter(t, agentHTTP, "vigil_agent_uplink_reconnects_total"); got != reconnects {
		t.Fatalf("the agent's stream reconnected %v times during the renewals", got-reconnects)
	}
	t.Logf("100 exits counted once; %d renewals during the burst, no reconnect", keeper.Renewals()-renewals)

	// The API shows the node's containers to a viewer over TLS.
	resp, err := apiGet(t, ca, httpAddr, "/api/v1/containers?node=test-node&page_size=5")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/api/v1/containers as a viewer: %s", resp.Status)
	}
}

// agentCounter reads one unlabelled counter from the agent's /metrics/self.
func agentCounter(t *testing.T, addr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics/self")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("agent /metrics/self lacks %s", name)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
