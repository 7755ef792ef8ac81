package replicasbench

import (
	"context"
	"fmt"
	"io"
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
	"github.com/vigilhq/vigil/internal/store"
	"github.com/vigilhq/vigil/internal/store/bolt"
	"github.com/vigilhq/vigil/internal/store/etcd"
	"github.com/vigilhq/vigil/internal/store/etcd/etcdtest"
	"github.com/vigilhq/vigil/internal/testenv"
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

// webhookContainers is the agent's container count, and so the most
// iterations one sub-benchmark can run (each alert names a container of its
// own).
const webhookContainers = 1000

// BenchmarkWebhookToAgent: an alert POSTed to the real aggregator's webhook
// (loopback HTTP) until its command arrives at a real agent's uplink over
// the gRPC stream ("to-agent": the webhook to command acknowledged,
// the action left out), and until the stand-in agent's immediate result is
// journaled ("to-result"). Alerts one after another, each for a container
// of its own, so each pays its own durable writes (the claim, the dispatch
// mark, the result). The same scene with the journal on bbolt (a file in a
// temp dir, fsync'd) and on a real 3-member etcd 3.4 cluster on loopback
// (every write is a raft round over the three members plus each member's
// fsync), in one run: compare the two, not the absolute times. Each
// iteration also times one bare create-if-absent Txn on the same store
// (the baseline: "bare-txn"), so that the store's share of the path is
// read in the same conditions.
//
//	go test -run '^$' -bench WebhookToAgent -benchtime 500x ./test/bench/replicas
func BenchmarkWebhookToAgent(b *testing.B) {
	b.Run("store=bolt", func(b *testing.B) {
		st, err := bolt.Open(filepath.Join(b.TempDir(), "vigil.db"), bolt.Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		webhookToAgent(b, st, nil)
	})
	b.Run("store=etcd3", func(b *testing.B) {
		testenv.Require(b)
		cluster := etcdtest.StartCluster(b, 3)
		st, err := etcd.New(etcd.Config{Endpoints: cluster.Endpoints(), Prefix: "/bench/"})
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		webhookToAgent(b, st, func() map[string]float64 { return etcdCalls(b, cluster.Endpoints()) })
	})
}

// etcdCalls sums the KV calls every member of a cluster has answered, by
// method (etcd's grpc_server_handled_total on its client URL's /metrics).
func etcdCalls(b *testing.B, endpoints []string) map[string]float64 {
	b.Helper()
	calls := map[string]float64{}
	for _, ep := range endpoints {
		resp, err := http.Get(ep + "/metrics")
		if err != nil {
			b.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			b.Fatal(err)
		}
		for _, line := range strings.Split(string(body), "\n") {
			if !strings.HasPrefix(line, "grpc_server_handled_total{") || !strings.Contains(line, `grpc_service="etcdserverpb.KV"`) {
				continue
			}
			_, rest, _ := strings.Cut(line, `grpc_method="`)
			method, _, _ := strings.Cut(rest, `"`)
			var v float64
			if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err != nil {
				b.Fatalf("etcd metrics line %q: %v", line, err)
			}
			calls[method] += v
		}
	}
	if len(calls) == 0 {
		b.Fatal("no etcd KV call counts in the members' /metrics")
	}
	return calls
}

// webhookToAgent runs the scene on st. calls, when not nil, counts the
// store's calls by method (etcd's); the calls each alert's path makes are
// then reported, without the benchmark's own (its listings while it waits
// for the result, and the baseline Txn).
func webhookToAgent(b *testing.B, st store.Store, calls func() map[string]float64) {
	if b.N > webhookContainers {
		b.Fatalf("more iterations (%d) than containers (%d): run with -benchtime Nx, N <= %d", b.N, webhookContainers, webhookContainers)
	}
	dir := b.TempDir()
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
	for i := range webhookContainers {
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
				select {
				case arrived <- c.GetTarget().GetContainerId():
				case <-ctx.Done():
					return
				}
				_ = u.SendCommandResult(&vigilv1.CommandResult{CommandId: c.GetId(), Outcome: vigilv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED})
			}
		}
	}()
	conn, err := grpc.NewClient(agg.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	api := vigilv1.NewVigilClient(conn)
	waitFor(b, 30*time.Second, "the agent's containers at the aggregator", func() error {
		resp, err := api.ListContainers(ctx, &vigilv1.ListContainersRequest{Node: "n1", PageSize: 1})
		if err != nil {
			return err
		}
		if len(resp.GetContainers()) == 0 {
			return fmt.Errorf("none yet")
		}
		return nil
	})

	// What one listing costs the store, to take the benchmark's own
	// listings out of the per-alert counts.
	perListing := map[string]float64{}
	if calls != nil {
		const listings = 50
		c0 := calls()
		for range listings {
			if _, err := api.ListRemediations(ctx, &vigilv1.ListRemediationsRequest{Limit: 1}); err != nil {
				b.Fatal(err)
			}
		}
		for m, v := range calls() {
			perListing[m] = (v - c0[m]) / listings
		}
	}
	var callsBefore map[string]float64
	if calls != nil {
		callsBefore = calls()
	}
	polls := 0

	hc := &http.Client{Timeout: 10 * time.Second}
	url := "http://" + agg.HTTPAddr().String() + "/api/v1/alerts"
	var toCommand, toResult, bare []time.Duration
	value := make([]byte, 200) // about an intent's size
	b.ResetTimer()
	for i := range b.N {
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
			b.Fatalf("no command for %s within 10 s", id)
		}
		toCommand = append(toCommand, time.Since(start))
		// Until the result is journaled: the listing shows it succeeded.
		for {
			list, err := api.ListRemediations(ctx, &vigilv1.ListRemediationsRequest{Limit: 1})
			polls++
			if err != nil {
				b.Fatal(err)
			}
			if r := list.GetRemediations(); len(r) == 1 && r[0].GetTarget().GetContainerId() == id &&
				r[0].GetState() == vigilv1.RemediationState_REMEDIATION_STATE_SUCCEEDED {
				break
			}
			if time.Since(start) > 10*time.Second {
				b.Fatalf("the result for %s was not journaled within 10 s", id)
			}
			time.Sleep(200 * time.Microsecond)
		}
		toResult = append(toResult, time.Since(start))
		// The baseline, interleaved so that it sees the same load: one
		// bare create-if-absent Txn of one key on the same store, the
		// floor under each of the path's durable writes.
		t0 := time.Now()
		if _, err := store.Create(ctx, st, fmt.Sprintf("bench/baseline/%06d", i), value, store.NoLease); err != nil {
			b.Fatal(err)
		}
		bare = append(bare, time.Since(t0))
	}
	b.StopTimer()
	if calls != nil {
		// What each alert's path asked of the store (the webhook's claim,
		// the dispatch, the result): on etcd each call is a round through
		// the raft leader, reads included (they are linearizable).
		after := calls()
		for _, m := range []string{"Range", "Txn", "Put"} {
			own := float64(polls) * perListing[m]
			if m == "Txn" {
				own += float64(b.N) // the baseline's
			}
			b.ReportMetric((after[m]-callsBefore[m]-own)/float64(b.N), "store-"+strings.ToLower(m)+"/alert")
		}
	}
	b.ReportMetric(percentileMs(toCommand, 0.5), "p50-to-agent-ms")
	b.ReportMetric(percentileMs(toCommand, 0.99), "p99-to-agent-ms")
	b.ReportMetric(percentileMs(toResult, 0.5), "p50-to-result-ms")
	b.ReportMetric(percentileMs(toResult, 0.99), "p99-to-result-ms")
	b.ReportMetric(percentileMs(bare, 0.5), "p50-bare-txn-ms")
	b.ReportMetric(percentileMs(bare, 0.99), "p99-bare-txn-ms")
}

// webhookBody is Alertmanager's webhook (version 4) carrying one firing
// alert for one container.
func webhookBody(fingerprint, startsAt, node, container string) string {
	return fmt.Sprintf(`{"version":"4","status":"firing","receiver":"vigil","groupKey":"{}:{alertname=\"VigilContainerUnhealthy\"}",
"groupLabels":{"alertname":"VigilContainerUnhealthy"},"commonLabels":{},"commonAnnotations":{},"externalURL":"http://am","truncatedAlerts":0,
"alerts":[{"status":"firing","labels":{"alertname":"VigilContainerUnhealthy","node":%q,"namespace":"default","container":%q},
"annotations":{},"startsAt":%q,"endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":%q}]}`, node, container, startsAt, fingerprint)
}

// percentileMs is the p-th quantile of d (nearest rank), in milliseconds.
func percentileMs(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return float64(s[min(len(s)-1, int(float64(len(s))*p))].Microseconds()) / 1000
}

// waitFor polls cond until it returns nil, failing the test with what it
// last said once timeout has passed.
func waitFor(tb testing.TB, timeout time.Duration, what string, cond func() error) {
	tb.Helper()
	waitForPoll(tb, timeout, 20*time.Millisecond, what, cond)
}
