package remediation

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigilhq/vigil/internal/store"
	"github.com/vigilhq/vigil/internal/store/bolt"
)

// clock is a settable clock for the engine and the store.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// harness is an engine on a real bbolt store in a temp dir.
type harness struct {
	t     *testing.T
	path  string
	st    *bolt.Store
	fleet *StaticFleet
	clock *clock
	rules *Rules
	reg   *prometheus.Registry
	e     *Engine
}

const testRules = `
max_actions_per_minute: 0
max_nodes_in_flight: 0
storm_guard: {share: 0}
rules:
  - name: restart-unhealthy
    match: {alertname: Unhealthy}
    action: restart_container
    target: {node: node, namespace: namespace, container: container, pod_namespace: pod_namespace, pod: pod}
    cooldown: 0s
    max_per_hour: 100
  - name: stop-leaking
    match: {alertname: Leaking}
    action: stop_container
    target: {node: node, namespace: namespace, container: container}
    dry_run: true
`

func newHarness(t *testing.T, rulesYAML string) *harness {
	t.Helper()
	if rulesYAML == "" {
		rulesYAML = testRules
	}
	rs, err := ParseRules([]byte(rulesYAML), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, path: filepath.Join(t.TempDir(), "state.db"), fleet: NewStaticFleet(),
		clock: &clock{t: time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)}, rules: rs}
	h.open()
	t.Cleanup(func() { h.st.Close() })
	return h
}

// open opens the store and a new engine on it, as an aggregator starting.
func (h *harness) open() {
	h.t.Helper()
	st, err := bolt.Open(h.path, bolt.Options{Now: h.clock.Now})
	if err != nil {
		h.t.Fatal(err)
	}
	h.st = st
	h.e = h.engine()
}

func (h *harness) engine() *Engine {
	h.t.Helper()
	h.reg = prometheus.NewRegistry()
	e, err := New(Config{Store: h.st, Fleet: h.fleet, Rules: StaticRuleSet(h.rules), Registry: h.reg, Now: h.clock.Now})
	if err != nil {
		h.t.Fatal(err)
	}
	return e
}

// reopen closes the store and opens it again with a new engine: an
// aggregator that died and started again.
func (h *harness) reopen() {
	h.t.Helper()
	if err := h.st.Close(); err != nil {
		h.t.Fatal(err)
	}
	h.open()
}

func (h *harness) container(node, id string, owner Owner, restarts uint32) {
	h.fleet.Put(FleetContainer{Node: node, Namespace: "default", ID: id, Owner: owner, RestartCount: restarts})
}

func alert(name, node, container string, startsAt time.Time) Alert {
	return Alert{Status: StatusFiring, Labels: map[string]string{"alertname": name, "node": node, "namespace": "default", "container": container},
		Annotations: map[string]string{"summary": container + " is unwell"}, StartsAt: startsAt, Fingerprint: fmt.Sprintf("fp-%s-%s-%s", name, node, container)}
}

func hook(alerts ...Alert) *Webhook {
	return &Webhook{Version: "4", GroupKey: "g", Status: StatusFiring, Receiver: "vigil", Alerts: alerts}
}

func (h *harness) receive(alerts ...Alert) Summary {
	h.t.Helper()
	s, err := h.e.Receive(context.Background(), hook(alerts...), h.clock.Now())
	if err != nil {
		h.t.Fatal(err)
	}
	return s
}

// outbox is every command waiting in any node's outbox.
func (h *harness) outbox() []commandValue {
	h.t.Helper()
	kvs, _, err := h.st.List(context.Background(), commandsPrefix, 0)
	if err != nil {
		h.t.Fatal(err)
	}
	out := make([]commandValue, len(kvs))
	for i, kv := range kvs {
		if err := jsonUnmarshal(kv.Value, &out[i]); err != nil {
			h.t.Fatal(err)
		}
	}
	return out
}

func (h *harness) records() []Remediation {
	h.t.Helper()
	l, err := h.e.List(context.Background(), ListFilter{Limit: MaxListLimit})
	if err != nil {
		h.t.Fatal(err)
	}
	return l
}

func (h *harness) journal(id string) []JournalEntry {
	h.t.Helper()
	j, err := h.e.Journal(context.Background(), id, MaxListLimit)
	if err != nil {
		h.t.Fatal(err)
	}
	return j
}

// kinds lists journal kinds oldest first.
func kinds(j []JournalEntry) []JournalKind {
	out := make([]JournalKind, len(j))
	for i := range j {
		out[len(j)-1-i] = j[i].Kind
	}
	return out
}

var _ store.Store = (*bolt.Store)(nil)
