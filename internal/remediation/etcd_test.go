package remediation

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/store/etcd"
	"github.com/vigilhq/vigil/internal/store/etcd/etcdtest"
	"github.com/vigilhq/vigil/internal/testenv"
)

// Two aggregator replicas, each with its own etcd client talking to a
// different member of a real 3-member cluster: the same alert sent to both
// at once comes to one command; concurrent webhooks across both respect the
// fleet budget exactly; a command decided on one is delivered by the other
// and its result recorded by the first; without quorum the webhook answers
// 503 (store_unavailable) and recovers by itself.
func TestReplicasOnEtcd(t *testing.T) {
	testenv.Require(t)
	c := etcdtest.StartCluster(t, 3)
	prefix := fmt.Sprintf("/test/%s/", t.Name())
	rs, err := ParseRules([]byte(`
max_actions_per_minute: 8
max_nodes_in_flight: 0
storm_guard: {share: 0}
rules:
  - name: r
    match: {alertname: Unhealthy}
    action: restart_container
    target: {node: node, namespace: namespace, container: container}
`), "etcd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	fleet := NewStaticFleet()
	for i := range 41 {
		fleet.Put(FleetContainer{Node: fmt.Sprintf("n%d", i%4), Namespace: "default", ID: fmt.Sprintf("c%d", i), Owner: OwnerVigil})
	}
	var engines []*Engine
	var stores []*etcd.Store
	for i := range 2 {
		st, err := etcd.New(etcd.Config{Endpoints: []string{c.Endpoint(i)}, Prefix: prefix, RequestTimeout: 2 * time.Second, DialTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		e, err := New(Config{Store: st, Fleet: fleet, Rules: StaticRuleSet(rs), Registry: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		engines, stores = append(engines, e), append(stores, st)
	}
	ctx := context.Background()
	commands := func() []commandValue {
		t.Helper()
		kvs, _, err := stores[0].List(ctx, commandsPrefix, 0)
		if err != nil {
			t.Fatal(err)
		}
		out := make([]commandValue, len(kvs))
		for i, kv := range kvs {
			if err := jsonUnmarshal(kv.Value, &out[i]); err != nil {
				t.Fatal(err)
			}
		}
		return out
	}

	// One alert, ten deliveries at once, five to each replica.
	same := alert("Unhealthy", "n0", "c0", time.Now().Add(-time.Minute))
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() {
			if _, err := engines[i%2].Receive(ctx, hook(same), time.Now()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := len(commands()); n != 1 {
		t.Fatalf("%d commands from one alert delivered 10 times to 2 replicas", n)
	}

	// 40 alerts on 40 targets, one webhook each, across both replicas:
	// the budget of 8 a minute leaves 7.
	for i := 1; i <= 40; i++ {
		wg.Go(func() {
			a := alert("Unhealthy", fmt.Sprintf("n%d", i%4), fmt.Sprintf("c%d", i), time.Now())
			if _, err := engines[i%2].Receive(ctx, hook(a), time.Now()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	cmds := commands()
	if len(cmds) != 8 {
		t.Fatalf("%d commands, want 8 (the fleet budget across both replicas)", len(cmds))
	}
	budget := testutil.ToFloat64(engines[0].m.suppressed.WithLabelValues("budget")) + testutil.ToFloat64(engines[1].m.suppressed.WithLabelValues("budget"))
	if budget != 33 {
		t.Errorf("budget suppressions counted %v across replicas, want 33", budget)
	}

	// Decided anywhere, delivered by the replica holding the node, its
	// result recorded by the other.
	node := cmds[0].Target.Node
	var mine []commandValue
	for _, c := range cmds {
		if c.Target.Node == node {
			mine = append(mine, c)
		}
	}
	dctx, cancel := context.WithCancel(ctx)
	sent := make(chan Command, 10)
	done := make(chan error, 1)
	go func() { done <- engines[1].Deliver(dctx, node, func(c Command) error { sent <- c; return nil }) }()
	for range mine {
		select {
		case c := <-sent:
			if c.Fence.IntentRevision == 0 || c.Target.Node != node {
				t.Errorf("delivered %+v", c)
			}
			if err := engines[0].RecordResult(ctx, c.ID, OutcomeSucceeded, "done"); err != nil {
				t.Fatal(err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("not every command of %s was delivered", node)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Deliver: %v", err)
	}
	if r, err := engines[1].Get(ctx, mine[0].ID); err != nil || r.State != StateSucceeded {
		t.Errorf("record = %+v, %v", r, err)
	}

	// No quorum: the replica's webhook answers 503; back, it acts again.
	c.Kill(1)
	c.Kill(2)
	h := engines[0].AlertsHandler()
	body := `{"version":"4","groupKey":"g","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"Unhealthy","node":"n0","namespace":"default","container":"c40"},"startsAt":"` +
		time.Now().Format(time.RFC3339Nano) + `","fingerprint":"quorum"}]}`
	if code, resp := post(t, h, http.MethodPost, body); code != http.StatusServiceUnavailable || !strings.Contains(resp, "unavailable") {
		t.Errorf("without quorum: %d %s", code, resp)
	}
	if n := testutil.ToFloat64(engines[0].m.suppressed.WithLabelValues("store_unavailable")); n != 1 {
		t.Errorf("store_unavailable counted %v", n)
	}
	_, err = engines[0].Receive(ctx, hook(alert("Unhealthy", "n0", "c40", time.Now())), time.Now())
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("Receive without quorum: %v", err)
	}
	c.Restart(1)
	c.Restart(2)
	waitFor(t, "the webhook to be taken again", func() bool {
		code, _ := post(t, h, http.MethodPost, body)
		return code == http.StatusOK
	})
}

// A webhook of 150 alerts is more than etcd takes in one transaction (128
// writes): it is committed in several, and answered once all are; the
// sweep deletes in batches etcd takes too.
func TestLargeWebhookOnEtcd(t *testing.T) {
	testenv.Require(t)
	c := etcdtest.StartCluster(t, 1)
	st, err := etcd.New(etcd.Config{Endpoints: c.Endpoints(), Prefix: fmt.Sprintf("/test/%s/", t.Name())})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rs, err := ParseRules([]byte("retention: 1h\n"+benchRulesActing), "etcd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	fleet := NewStaticFleet()
	var alerts []Alert
	clk := &clock{t: time.Now()}
	for i := range 150 {
		id := fmt.Sprintf("c%d", i)
		fleet.Put(FleetContainer{Node: fmt.Sprintf("n%d", i%5), Namespace: "default", ID: id, Owner: OwnerVigil})
		alerts = append(alerts, alert("Unhealthy", fmt.Sprintf("n%d", i%5), id, clk.Now()))
	}
	e, err := New(Config{Store: st, Fleet: fleet, Rules: StaticRuleSet(rs), Registry: prometheus.NewRegistry(), Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s, err := e.Receive(ctx, hook(alerts...), clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	if s.Acted != 150 || len(s.IDs) != 150 {
		t.Fatalf("summary %+v", s)
	}
	if s, err := e.Receive(ctx, hook(alerts...), clk.Now()); err != nil || s.Duplicates != 150 {
		t.Fatalf("again: %+v, %v", s, err)
	}
	kvs, _, err := st.List(ctx, commandsPrefix, 0)
	if err != nil || len(kvs) != 150 {
		t.Fatalf("%d commands, %v", len(kvs), err)
	}
	for _, id := range s.IDs {
		r, err := e.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		c, err := e.Dispatch(ctx, r.Target.Node, id)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.RecordResult(ctx, c.ID, OutcomeSucceeded, ""); err != nil {
			t.Fatal(err)
		}
	}
	clk.Advance(2 * time.Hour)
	n, err := e.Sweep(ctx)
	if err != nil || n < 600 {
		t.Fatalf("swept %d, %v", n, err)
	}
	for _, p := range []string{journalPrefix, recordsPrefix, intentsPrefix, firingPrefix, targetsPrefix, commandsPrefix} {
		if kvs, _, _ := st.List(ctx, p, 0); len(kvs) != 0 {
			t.Errorf("%s still holds %d keys", p, len(kvs))
		}
	}
}
