package remediation

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
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
	e, err := New(Config{Store: st, Fleet: fleet, Rules: StaticRuleSet(rs), Registry: prometheus.NewRegistry()})
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
