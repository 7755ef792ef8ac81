package aggregator_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigilhq/vigil/internal/agent/uplink"
	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/remediation"
	"github.com/vigilhq/vigil/internal/store/bolt"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// benchRules turn the fleet-wide limits off: every alert of the benchmark
// names a target of its own and must act.
const benchRules = `
max_actions_per_minute: 0
max_nodes_in_flight: 0
storm_guard:
  share: 0
rules:
  - name: restart-unhealthy
    match:
      alertname: VigilContainerUnhealthy
    action: restart_container
    target:
      node: node
      namespace: namespace
      container: container
`

// BenchmarkWebhookToAgent: an alert POSTed to the real aggregator's webhook
// (bbolt journal, loopback HTTP) until its command arrives at a real
// agent's uplink over the gRPC stream, and until the agent's result is
// journaled; the action itself is left out (the stand-in agent answers at
// once). Alerts are sent one after another, each for a container of its
// own. Reports p50 and p99 of both.
func BenchmarkWebhookToAgent(b *testing.B) {
	const containers = 1000
	dir := b.TempDir()
	st, err := bolt.Open(filepath.Join(dir, "vigil.db"), bolt.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	rulesPath := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(rulesPath, []byte(benchRules), 0o600); err != nil {
		b.Fatal(err)
	}
	rules, err := remediation.NewRuleSet(rulesPath)
	if err != nil {
		b.Fatal(err)
	}
	quiet := slog.New(slog.DiscardHandler)
	agg, err := aggregator.New(aggregator.Config{GRPCListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Insecure: true,
		ShutdownTimeout: 2 * time.Second, Logger: quiet, Store: st, Rules: rules})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	wg.Add(1)
	go func() { defer wg.Done(); _ = agg.Run(ctx) }()

	snap := &vigilv1.Snapshot{}
	for i := range containers {
		snap.Containers = append(snap.Containers, &vigilv1.Container{Id: fmt.Sprintf("c%d", i), Namespace: "default",
			State: vigilv1.ContainerState_CONTAINER_STATE_RUNNING, Manager: vigilv1.Manager_MANAGER_VIGIL})
	}
	u, err := uplink.New(uplink.Config{Address: agg.GRPCAddr().String(), NodeName: "n1", Logger: quiet, MaxMessageBytes: 16 << 20},
		func() *vigilv1.Snapshot { return snap })
	if err != nil {
		b.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); _ = u.Run(ctx) }()

	// The stand-in agent: notes when each command arrives and answers it.
	arrived := make(chan string, 16)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case c := <-u.Commands():
				arrived <- c.GetTarget().GetContainerId()
				_ = u.SendCommandResult(&vigilv1.CommandResult{CommandId: c.GetId(), Outcome: vigilv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED})
			}
		}
	}()
	api := vigilv1.NewVigilClient(dialInsecure(b, agg.GRPCAddr().String()))
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := api.ListContainers(ctx, &vigilv1.ListContainersRequest{Node: "n1", PageSize: 1})
		if err == nil && len(resp.GetContainers()) > 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("the agent's containers never reached the aggregator: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	hc := &http.Client{Timeout: 10 * time.Second}
	url := "http://" + agg.HTTPAddr().String() + "/api/v1/alerts"
	var toCommand, toResult []time.Duration
	b.ResetTimer()
	for i := range b.N {
		if i >= containers {
			b.Fatalf("more iterations (%d) than containers (%d): run with -benchtime Nx, N <= %d", b.N, containers, containers)
		}
		id := fmt.Sprintf("c%d", i)
		body := webhookBody(fmt.Sprintf("fp%d", i), "2026-12-02T10:00:00Z", "n1", id)
		start := time.Now()
		resp, err := hc.Post(url, "application/json", strings.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("webhook: %s", resp.Status)
		}
		select {
		case got := <-arrived:
			if got != id {
				b.Fatalf("command for %s, want %s", got, id)
			}
		case <-time.After(10 * time.Second):
			b.Fatalf("no command for %s", id)
		}
		toCommand = append(toCommand, time.Since(start))
		// Until the result is journaled: the listing shows it succeeded.
		for {
			list, err := api.ListRemediations(ctx, &vigilv1.ListRemediationsRequest{Limit: 1})
			if err != nil {
				b.Fatal(err)
			}
			if r := list.GetRemediations(); len(r) == 1 && r[0].GetTarget().GetContainerId() == id &&
				r[0].GetState() == vigilv1.RemediationState_REMEDIATION_STATE_SUCCEEDED {
				break
			}
			time.Sleep(200 * time.Microsecond)
		}
		toResult = append(toResult, time.Since(start))
	}
	b.StopTimer()
	pct := func(d []time.Duration, p float64) float64 {
		s := slices.Clone(d)
		slices.Sort(s)
		return float64(s[min(len(s)-1, int(float64(len(s))*p))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(toCommand, 0.5), "p50-to-agent-ms")
	b.ReportMetric(pct(toCommand, 0.99), "p99-to-agent-ms")
	b.ReportMetric(pct(toResult, 0.5), "p50-to-result-ms")
	b.ReportMetric(pct(toResult, 0.99), "p99-to-result-ms")
}

func dialInsecure(tb testing.TB, addr string) *grpc.ClientConn {
	tb.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}
