package remediation

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigilhq/vigil/internal/store"
	"github.com/vigilhq/vigil/internal/store/bolt"
)

// benchEngine is an engine on a fresh bbolt file with targets containers
// on 10 nodes, real clock.
func benchEngine(b *testing.B, rulesYAML string, targets int) (*Engine, *bolt.Store) {
	return benchEngineOps(b, rulesYAML, targets, 5000)
}

func benchEngineOps(b *testing.B, rulesYAML string, targets, maxTxnOps int) (*Engine, *bolt.Store) {
	b.Helper()
	st, err := bolt.Open(filepath.Join(b.TempDir(), "state.db"), bolt.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	rs, err := ParseRules([]byte(rulesYAML), "bench.yaml")
	if err != nil {
		b.Fatal(err)
	}
	fleet := NewStaticFleet()
	for i := range targets {
		fleet.Put(FleetContainer{Node: fmt.Sprintf("n%d", i%10), Namespace: "default", ID: fmt.Sprintf("c%d", i), Owner: OwnerVigil})
	}
	e, err := New(Config{Store: st, Fleet: fleet, Rules: StaticRuleSet(rs), Registry: prometheus.NewRegistry(), MaxTxnOps: maxTxnOps})
	if err != nil {
		b.Fatal(err)
	}
	return e, st
}

// benchRulesActing acts on every alert (limits off): the most a decision
// writes (intent, record, journal twice, command, target history).
const benchRulesActing = `
max_actions_per_minute: 0
max_nodes_in_flight: 0
storm_guard: {share: 0}
rules:
  - name: r
    match: {alertname: Unhealthy}
    action: restart_container
    target: {node: node, namespace: namespace, container: container}
    cooldown: 0s
    max_per_hour: 1000000
`

// benchRulesDefaults is the shipped defaults (10 a minute fleet-wide, 10%
// of nodes, storm guard on): past the first few, alerts are held.
const benchRulesDefaults = `
rules:
  - name: r
    match: {alertname: Unhealthy}
    action: restart_container
    target: {node: node, namespace: namespace, container: container}
`

var benchSeq atomic.Int64

func benchAlerts(n, targets int) []Alert {
	out := make([]Alert, n)
	now := time.Now()
	for i := range out {
		seq := benchSeq.Add(1)
		c := int(seq) % targets
		out[i] = Alert{Status: StatusFiring, StartsAt: now, Fingerprint: fmt.Sprintf("%016x", seq),
			Labels: map[string]string{"alertname": "Unhealthy", "node": fmt.Sprintf("n%d", c%10), "namespace": "default", "container": fmt.Sprintf("c%d", c)}}
	}
	return out
}

// BenchmarkReceive: webhooks journaled and decided on bbolt (one fsync'd
// Txn per webhook), by alerts per webhook and rules; alerts/s is the
// figure to compare with the 500/s goal.
func BenchmarkReceive(b *testing.B) {
	for _, rules := range []struct{ name, yaml string }{{"acting", benchRulesActing}, {"defaults", benchRulesDefaults}} {
		for _, per := range []int{1, 10, 100} {
			b.Run(fmt.Sprintf("rules=%s/alerts=%d", rules.name, per), func(b *testing.B) {
				e, _ := benchEngine(b, rules.yaml, 1000)
				ctx := context.Background()
				hooks := make([]*Webhook, b.N)
				for i := range hooks {
					hooks[i] = hook(benchAlerts(per, 1000)...)
				}
				b.ResetTimer()
				start := time.Now()
				for i := 0; i < b.N; i++ {
					if _, err := e.Receive(ctx, hooks[i], time.Now()); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*per)/time.Since(start).Seconds(), "alerts/s")
			})
		}
	}
}

// BenchmarkReceiveSplit: 100-alert webhooks with MaxTxnOps at its default
// (100, for etcd), so each is about ten transactions on bbolt, against
// BenchmarkReceive/rules=acting/alerts=100's one.
func BenchmarkReceiveSplit(b *testing.B) {
	e, _ := benchEngineOps(b, benchRulesActing, 1000, 0)
	ctx := context.Background()
	hooks := make([]*Webhook, b.N)
	for i := range hooks {
		hooks[i] = hook(benchAlerts(100, 1000)...)
	}
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := e.Receive(ctx, hooks[i], time.Now()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*100)/time.Since(start).Seconds(), "alerts/s")
}

// BenchmarkReceiveParallel: one-alert webhooks from 8 goroutines at once, as
// several Alertmanager groups flushing together.
func BenchmarkReceiveParallel(b *testing.B) {
	e, _ := benchEngine(b, benchRulesActing, 1000)
	ctx := context.Background()
	b.SetParallelism(4)
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := e.Receive(ctx, hook(benchAlerts(1, 1000)...), time.Now()); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "alerts/s")
}

// BenchmarkBoltTxnBaseline: one fsync'd bbolt Txn putting one small key,
// the floor under any webhook's latency on the same disk, in the same run.
func BenchmarkBoltTxnBaseline(b *testing.B) {
	st, err := bolt.Open(filepath.Join(b.TempDir(), "state.db"), bolt.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	v := []byte(strings.Repeat("x", 300))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := st.Txn(ctx, []store.Cond{{Key: fmt.Sprintf("/k/%d", i)}}, []store.Op{store.Put(fmt.Sprintf("/k/%d", i), v)}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDispatchAndResult: a command taken from the outbox and its
// result recorded (two Txns), the aggregator's share of the round trip to
// the agent.
func BenchmarkDispatchAndResult(b *testing.B) {
	e, _ := benchEngine(b, benchRulesActing, 1000)
	ctx := context.Background()
	ids := make([]Summary, 0, b.N/100+1)
	for n := 0; n < b.N; n += 100 {
		s, err := e.Receive(ctx, hook(benchAlerts(100, 1000)...), time.Now())
		if err != nil {
			b.Fatal(err)
		}
		ids = append(ids, s)
	}
	b.ResetTimer()
	n := 0
	for _, s := range ids {
		for _, id := range s.IDs {
			if n == b.N {
				return
			}
			n++
			node := ""
			r, err := e.Get(ctx, id)
			if err != nil {
				b.Fatal(err)
			}
			node = r.Target.Node
			c, err := e.Dispatch(ctx, node, id)
			if err != nil {
				b.Fatal(err)
			}
			if err := e.RecordResult(ctx, c.ID, OutcomeSucceeded, ""); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkDecide: the pure decision, with a target history and a full
// fleet budget to scan.
func BenchmarkDecide(b *testing.B) {
	now := time.Now()
	rs := DefaultRules()
	r := &Rule{Name: "r", Action: ActionRestart, Cooldown: time.Minute, MaxPerHour: 3, Escalate: &Escalation{After: 3, Action: ActionStop}}
	in := Input{Now: now, Rules: rs, Rule: r, Action: ActionRestart, Ref: TargetRef{Node: "n1", Namespace: "default", Container: "c"},
		State:  TargetState{Target: Target{Node: "n1", Namespace: "default", ContainerID: "c"}, Owner: OwnerVigil, NodeUp: true},
		Fleet:  FleetSize{Nodes: 100, Targets: 10000},
		Budget: Budget{Target: TargetBudget{Times: []time.Time{now.Add(-30 * time.Minute)}}, InFlight: map[string]map[string]time.Time{}}}
	for i := range 9 {
		in.Budget.FleetTimes = append(in.Budget.FleetTimes, now.Add(-time.Duration(i)*time.Second))
		in.Budget.InFlight[fmt.Sprintf("n%d", i+2)] = map[string]time.Time{"x": now.Add(time.Minute)}
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if d := Decide(in); !d.Act {
			b.Fatal(d.Message)
		}
	}
}

// BenchmarkWebhookToResult: one alert at a time, from the HTTP POST on
// loopback to its result recorded: the webhook's answer (the claim
// committed), the outbox watch firing in Deliver, Dispatch, the command
// handed to a stand-in for the node's stream, and RecordResult as the
// agent's answer arrives. The gRPC stream and the agent's own work are
// not in it. Reports p50 and p99 of the webhook's answer and of the whole.
func BenchmarkWebhookToResult(b *testing.B) {
	e, _ := benchEngine(b, benchRulesActing, 1000)
	srv := httptest.NewServer(e.AlertsHandler())
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		id string
		at time.Time
	}
	results := make(chan result, 64)
	stream := make(chan Command, 64)
	var wg sync.WaitGroup
	for n := range 10 {
		wg.Go(func() {
			_ = e.Deliver(ctx, fmt.Sprintf("n%d", n), func(c Command) error { stream <- c; return nil })
		})
	}
	wg.Go(func() { // the agents, answering at once
		for {
			select {
			case <-ctx.Done():
				return
			case c := <-stream:
				if err := e.RecordResult(context.Background(), c.ID, OutcomeSucceeded, ""); err != nil {
					b.Error(err)
				}
				results <- result{c.ID, time.Now()}
			}
		}
	})
	client := srv.Client()
	answer := make([]time.Duration, 0, b.N)
	whole := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		a := benchAlerts(1, 1000)[0]
		body := fmt.Sprintf(`{"version":"4","groupKey":"g","status":"firing","receiver":"vigil","alerts":[{"status":"firing","labels":{"alertname":"Unhealthy","node":%q,"namespace":"default","container":%q},"startsAt":%q,"fingerprint":%q}]}`,
			a.Labels["node"], a.Labels["container"], a.StartsAt.Format(time.RFC3339Nano), a.Fingerprint)
		start := time.Now()
		resp, err := client.Post(srv.URL, "application/json", strings.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		var sum Summary
		err = json.NewDecoder(resp.Body).Decode(&sum)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || len(sum.IDs) != 1 {
			b.Fatalf("%d %+v %v", resp.StatusCode, sum, err)
		}
		answer = append(answer, time.Since(start))
		for r := range results {
			if r.id == sum.IDs[0] {
				whole = append(whole, r.at.Sub(start))
				break
			}
		}
	}
	b.StopTimer()
	cancel()
	wg.Wait()
	for _, m := range []struct {
		name string
		d    []time.Duration
	}{{"answer", answer}, {"result", whole}} {
		slices.Sort(m.d)
		b.ReportMetric(float64(m.d[len(m.d)/2].Microseconds())/1000, m.name+"-p50-ms")
		b.ReportMetric(float64(m.d[len(m.d)*99/100].Microseconds())/1000, m.name+"-p99-ms")
	}
}
