package remediation

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// Run expires commands on its own ticks, refuses to run twice at once, and
// returns when its context ends.
func TestRun(t *testing.T) {
	h := newHarness(t, "")
	h.container("n1", "a", OwnerVigil, 0)
	e, err := New(Config{Store: h.st, Fleet: h.fleet, Rules: StaticRuleSet(h.rules), Registry: prometheus.NewRegistry(),
		Now: h.clock.Now, Tick: 10 * time.Millisecond, SweepInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	s, err := e.Receive(context.Background(), hook(alert("Unhealthy", "n1", "a", h.clock.Now())), h.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	waitFor(t, "Run to be running", func() bool { return e.running.Load() })
	if err := e.Run(ctx); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("a second Run: %v", err)
	}
	h.clock.Advance(DefaultCommandDeadline)
	waitFor(t, "Run to expire the command", func() bool {
		r, err := e.Get(context.Background(), s.IDs[0])
		return err == nil && r.State == StateExpired
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

// The target's history lives in the store: three restarts within the hour,
// then the escalation to a stop, then the target is left to a human, also
// across an aggregator restart.
func TestEscalationThroughStore(t *testing.T) {
	h := newHarness(t, `
max_actions_per_minute: 0
max_nodes_in_flight: 0
storm_guard: {share: 0}
rules:
  - name: r
    match: {alertname: Unhealthy}
    action: restart_container
    target: {node: node, namespace: namespace, container: container}
    cooldown: 5m
    max_per_hour: 3
    escalate: {after: 3, action: stop_container}
`)
	h.container("n1", "web", OwnerVigil, 0)
	var actions []Action
	for i := range 5 {
		a := alert("Unhealthy", "n1", "web", h.clock.Now())
		a.Fingerprint = "fp"
		s := h.receive(a)
		if i == 4 {
			h.reopen()
		}
		for _, id := range s.IDs {
			r, _ := h.e.Get(context.Background(), id)
			if r.State == StatePending {
				actions = append(actions, r.Action)
			} else if i == 4 && r.Result != string(ReasonEscalated) {
				t.Errorf("after the escalation: %+v", r)
			}
		}
		h.clock.Advance(6 * time.Minute)
	}
	want := []Action{ActionRestart, ActionRestart, ActionRestart, ActionStop}
	if len(actions) != len(want) {
		t.Fatalf("actions = %v, want %v", actions, want)
	}
	for i := range want {
		if actions[i] != want[i] {
			t.Fatalf("actions = %v, want %v", actions, want)
		}
	}
	// Held for a human also after a restart of the aggregator.
	a := alert("Unhealthy", "n1", "web", h.clock.Now())
	if s := h.receive(a); s.Suppressed != 1 {
		t.Errorf("%+v", s)
	}
	// An hour after the escalation the target is anyone's again.
	h.clock.Advance(time.Hour)
	a = alert("Unhealthy", "n1", "web", h.clock.Now())
	if s := h.receive(a); s.Acted != 1 {
		t.Errorf("an hour later: %+v", s)
	}
}
