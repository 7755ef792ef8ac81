package remediation

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vigilhq/vigil/internal/errdefs"
)

func suppressedCount(h *harness, r Reason) float64 {
	return testutil.ToFloat64(h.e.m.suppressed.WithLabelValues(string(r)))
}

// The same alert delivered five times in a row, then concurrently by two
// "Alertmanager replicas" to two engines on the same store ("two
// aggregator replicas"), comes to one command.
func TestSameAlertComesToOneCommand(t *testing.T) {
	h := newHarness(t, "")
	h.container("n1", "web", OwnerVigil, 2)
	a := alert("Unhealthy", "n1", "web", h.clock.Now().Add(-time.Minute))
	for range 5 {
		h.receive(a)
	}
	other := h.engine() // a second replica's engine, its own local lock
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, e := range []*Engine{h.e, other} {
		wg.Go(func() {
			_, err := e.Receive(context.Background(), hook(a), h.clock.Now())
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if out := h.outbox(); len(out) != 1 || out[0].Target.ContainerID != "web" || out[0].Action != ActionRestart {
		t.Fatalf("outbox = %+v, want one restart of web", out)
	}
	if recs := h.records(); len(recs) != 1 || recs[0].State != StatePending {
		t.Fatalf("records = %+v", recs)
	}
	dups := 0
	for _, j := range h.journal("") {
		if j.Kind == JournalDuplicate {
			dups++
		}
	}
	if dups != 6 {
		t.Errorf("%d duplicates journaled, want 6", dups)
	}
	if n := suppressedCount(h, ReasonDuplicate) + testutil.ToFloat64(other.m.suppressed.WithLabelValues("duplicate")); n != 6 {
		t.Errorf("duplicates counted %v, want 6", n)
	}
	// A new firing of the same alert (a new startsAt) is a new intent.
	b := a
	b.StartsAt = h.clock.Now()
	if s := h.receive(b); s.Acted != 1 {
		t.Errorf("a new firing: %+v", s)
	}
}

// Many webhooks at once for different targets, from many goroutines and two
// engines, with the fleet budget in play: the budget holds exactly.
func TestConcurrentBudgetIsExact(t *testing.T) {
	h := newHarness(t, `
max_actions_per_minute: 7
max_nodes_in_flight: 0
storm_guard: {share: 0}
rules:
  - name: r
    match: {alertname: Unhealthy}
    action: restart_container
    target: {node: node, namespace: namespace, container: container}
`)
	engines := []*Engine{h.e, h.engine()}
	var wg sync.WaitGroup
	for i := range 40 {
		id := "c" + string(rune('A'+i/26)) + string(rune('a'+i%26))
		h.container("n1", id, OwnerVigil, 0)
		wg.Go(func() {
			s, err := engines[i%2].Receive(context.Background(), hook(alert("Unhealthy", "n1", id, h.clock.Now())), h.clock.Now())
			if err != nil {
				t.Error(err)
			}
			if s.Alerts != 1 || s.Acted+s.Suppressed != 1 || len(s.IDs) != 1 {
				t.Errorf("summary of a webhook in a group = %+v", s)
			}
		})
	}
	wg.Wait()
	if n := len(h.outbox()); n != 7 {
		t.Fatalf("%d commands, want 7 (the budget)", n)
	}
	budget := 0
	for _, r := range h.records() {
		if r.Result == string(ReasonBudget) {
			budget++
		}
	}
	if budget != 33 {
		t.Errorf("%d suppressed as budget, want 33", budget)
	}
}

// 100 alerts on 100 targets in one webhook with a budget of 10 a minute:
// 10 commands, 90 suppressed as budget. A minute later the same alerts,
// delivered again, act 10 more times: limits delay, they do not drop.
func TestBudgetTenPerMinute(t *testing.T) {
	h := newHarness(t, `
max_actions_per_minute: 10
max_nodes_in_flight: 0
storm_guard: {share: 0}
rules:
  - name: r
    match: {alertname: Unhealthy}
    action: restart_container
    target: {node: node, namespace: namespace, container: container}
`)
	var alerts []Alert
	for i := range 100 {
		node := "n" + string(rune('0'+i%10))
		id := "c" + string(rune('0'+i/10)) + string(rune('0'+i%10))
		h.container(node, id, OwnerVigil, 0)
		alerts = append(alerts, alert("Unhealthy", node, id, h.clock.Now()))
	}
	s := h.receive(alerts...)
	if s.Acted != 10 || s.Suppressed != 90 || len(h.outbox()) != 10 {
		t.Fatalf("summary %+v, outbox %d", s, len(h.outbox()))
	}
	if n := suppressedCount(h, ReasonBudget); n != 90 {
		t.Errorf("vigil_remediations_suppressed_total{reason=budget} = %v", n)
	}
	h.clock.Advance(30 * time.Second)
	if s := h.receive(alerts...); s.Acted != 0 || s.Duplicates != 10 || s.Suppressed != 90 {
		t.Errorf("within the minute: %+v", s)
	}
	h.clock.Advance(31 * time.Second)
	if s := h.receive(alerts...); s.Acted != 10 || s.Duplicates != 10 || s.Suppressed != 80 {
		t.Errorf("a minute later: %+v", s)
	}
}

// The aggregator dies between the claim and the result: the command is
// still in the outbox after a restart, is delivered once, and the journal
// is whole.
func TestReopenBetweenClaimAndResult(t *testing.T) {
	h := newHarness(t, "")
	h.container("n1", "web", OwnerVigil, 3)
	a := alert("Unhealthy", "n1", "web", h.clock.Now())
	s := h.receive(a)
	if s.Acted != 1 {
		t.Fatalf("%+v", s)
	}
	id := s.IDs[0]
	h.reopen()
	h.clock.Advance(time.Millisecond)
	// Alertmanager retries (it did not see our answer): still one intent.
	if s := h.receive(a); s.Duplicates != 1 {
		t.Fatalf("retry after the restart: %+v", s)
	}
	ctx := context.Background()
	cmd, err := h.e.Dispatch(ctx, "n1", id)
	if err != nil {
		t.Fatal(err)
	}
	// Died again after sending, before the result: the command waits for
	// the agent's result (the agent resends it after reconnecting).
	h.reopen()
	h.clock.Advance(time.Millisecond)
	if _, err := h.e.Dispatch(ctx, "n1", id); !errors.Is(err, ErrNotPending) {
		t.Fatalf("a dispatched command was dispatched again: %v", err)
	}
	if err := h.e.RecordResult(ctx, cmd.ID, OutcomeSucceeded, "restarted"); err != nil {
		t.Fatal(err)
	}
	// The agent's resent result after another reconnect changes nothing.
	if err := h.e.RecordResult(ctx, cmd.ID, OutcomeFailed, "late copy"); err != nil {
		t.Fatal(err)
	}
	if len(h.outbox()) != 0 {
		t.Errorf("outbox not empty: %+v", h.outbox())
	}
	r, err := h.e.Get(ctx, id)
	if err != nil || r.State != StateSucceeded || r.Result != "succeeded" {
		t.Fatalf("record = %+v, %v", r, err)
	}
	want := []JournalKind{JournalAlert, JournalDecision, JournalAlert, JournalDuplicate, JournalDispatched, JournalResult}
	var got []JournalKind
	for _, j := range slices.Backward(h.journal("")) {
		got = append(got, j.Kind)
	}
	if !slices.Equal(got, want) {
		t.Errorf("journal = %v, want %v", got, want)
	}
	if n := testutil.ToFloat64(h.e.m.remediations.WithLabelValues("restart_container", "succeeded")); n != 1 {
		t.Errorf("vigil_remediations_total{succeeded} = %v", n)
	}
}

// A command sent and never answered is marked unknown at its deadline plus
// the grace, never sent again; one never sent is expired at its deadline.
func TestExpireAndUnknown(t *testing.T) {
	h := newHarness(t, strings.Replace(testRules, "max_nodes_in_flight: 0", "max_nodes_in_flight: 5", 1))
	h.container("n1", "a", OwnerVigil, 0)
	h.container("n1", "b", OwnerVigil, 0)
	s := h.receive(alert("Unhealthy", "n1", "a", h.clock.Now()), alert("Unhealthy", "n1", "b", h.clock.Now()))
	ctx := context.Background()
	if _, err := h.e.Dispatch(ctx, "n1", s.IDs[0]); err != nil {
		t.Fatal(err)
	}
	var nv0 nodesValue
	if kv, err := h.st.Get(ctx, nodesKey); err != nil || jsonUnmarshal(kv.Value, &nv0) != nil || len(nv0.InFlight["n1"]) != 2 {
		t.Fatalf("in flight = %+v, %v", nv0, err)
	}
	h.reopen()
	h.clock.Advance(DefaultCommandDeadline - time.Second)
	if n, err := h.e.Expire(ctx); err != nil || n != 0 {
		t.Fatalf("before the deadline: %d, %v", n, err)
	}
	h.clock.Advance(time.Second)
	if n, err := h.e.Expire(ctx); err != nil || n != 1 {
		t.Fatalf("at the deadline: %d ended, %v", n, err)
	}
	if r, _ := h.e.Get(ctx, s.IDs[1]); r.State != StateExpired {
		t.Errorf("the pending command: %+v", r)
	}
	if _, err := h.e.Dispatch(ctx, "n1", s.IDs[1]); !errors.Is(err, ErrNotPending) {
		t.Errorf("an expired command was dispatched: %v", err)
	}
	h.clock.Advance(DefaultResultGrace)
	if n, err := h.e.Expire(ctx); err != nil || n != 1 {
		t.Fatalf("at deadline + grace: %d, %v", n, err)
	}
	if r, _ := h.e.Get(ctx, s.IDs[0]); r.State != StateUnknown || r.Result != ResultUnknown {
		t.Errorf("the dispatched command: %+v", r)
	}
	if len(h.outbox()) != 0 {
		t.Errorf("outbox = %+v", h.outbox())
	}
	// A result arriving after that changes nothing.
	if err := h.e.RecordResult(ctx, s.IDs[0], OutcomeSucceeded, ""); err != nil {
		t.Fatal(err)
	}
	if r, _ := h.e.Get(ctx, s.IDs[0]); r.State != StateUnknown {
		t.Errorf("after a late result: %+v", r)
	}
	if n := testutil.ToFloat64(h.e.m.remediations.WithLabelValues("restart_container", "expired")); n != 1 {
		t.Errorf("expired counted %v", n)
	}
	// The node budget counted both and released both.
	var nv nodesValue
	kv, err := h.st.Get(ctx, nodesKey)
	if err != nil || jsonUnmarshal(kv.Value, &nv) != nil || len(nv.InFlight) != 0 {
		t.Errorf("in flight = %+v, %v", nv, err)
	}
}

// The fence carries the container id and restart count the decision saw
// and the intent's revision; an alert that saw another container is
// fenced at once; an agent's fenced answer is counted.
func TestFence(t *testing.T) {
	h := newHarness(t, "")
	h.container("n1", "web", OwnerVigil, 7)
	ctx := context.Background()
	s := h.receive(alert("Unhealthy", "n1", "web", h.clock.Now()))
	cmd, err := h.e.Dispatch(ctx, "n1", s.IDs[0])
	if err != nil {
		t.Fatal(err)
	}
	intent, err := h.st.Get(ctx, intentKey("fp-Unhealthy-n1-web", h.clock.Now(), ActionRestart))
	if err != nil {
		t.Fatal(err)
	}
	if cmd.Fence != (Fence{ContainerID: "web", RestartCount: 7, HasRestartCount: true, IntentRevision: intent.CreateRevision}) || intent.CreateRevision == 0 {
		t.Fatalf("fence = %+v, intent revision %d", cmd.Fence, intent.CreateRevision)
	}
	if err := h.e.RecordResult(ctx, cmd.ID, OutcomeFenced, "restart count is 8, the alert saw 7"); err != nil {
		t.Fatal(err)
	}
	if r, _ := h.e.Get(ctx, cmd.ID); r.State != StateSuppressed || r.Result != "fenced" {
		t.Errorf("record = %+v", r)
	}
	if suppressedCount(h, ReasonFenced) != 1 {
		t.Error("fenced not counted")
	}
	// The agent's policy refuses a command: suppressed, counted.
	s2 := h.receive(alert("Unhealthy", "n1", "web", h.clock.Now().Add(time.Millisecond)))
	c2, err := h.e.Dispatch(ctx, "n1", s2.IDs[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := h.e.RecordResult(ctx, c2.ID, OutcomeRefused, "namespace default is not in --command-namespaces"); err != nil {
		t.Fatal(err)
	}
	if r, _ := h.e.Get(ctx, c2.ID); r.State != StateSuppressed || r.Result != "refused" || !strings.Contains(r.Message, "command-namespaces") {
		t.Errorf("refused record = %+v", r)
	}
	if suppressedCount(h, ReasonRefused) != 1 {
		t.Error("refused not counted")
	}
	// The alert carries the container id it saw; the container was
	// replaced since.
	b := alert("Unhealthy", "n1", "web", h.clock.Now().Add(time.Second))
	b.Labels["container_id"] = "web-before"
	if s := h.receive(b); s.Suppressed != 1 {
		t.Fatalf("%+v", s)
	}
	if suppressedCount(h, ReasonFenced) != 2 {
		t.Error("fenced at decision not counted")
	}
}

// Dry run journals the decision and never makes a command; a kubelet's
// container is killed, not restarted.
func TestDryRunAndOwner(t *testing.T) {
	h := newHarness(t, "")
	h.container("n1", "leaky", OwnerVigil, 0)
	h.fleet.Put(FleetContainer{Node: "n1", Namespace: "k8s.io", ID: "abc123", PodNamespace: "shop", Pod: "frontend", Name: "app", Owner: OwnerKubelet, RestartCount: 4})
	s := h.receive(alert("Leaking", "n1", "leaky", h.clock.Now()))
	if s.Suppressed != 1 || len(h.outbox()) != 0 {
		t.Fatalf("dry run: %+v, outbox %v", s, h.outbox())
	}
	r, _ := h.e.Get(context.Background(), s.IDs[0])
	if r.State != StateSuppressed || r.Result != "dry_run" || !r.DryRun || r.Action != ActionStop {
		t.Errorf("dry-run record = %+v", r)
	}
	pod := Alert{Status: StatusFiring, Labels: map[string]string{"alertname": "Unhealthy", "node": "n1", "namespace": "k8s.io", "pod_namespace": "shop", "pod": "frontend", "container": "app"},
		StartsAt: h.clock.Now(), Fingerprint: "pod"}
	if s := h.receive(pod); s.Acted != 1 {
		t.Fatalf("%+v", s)
	}
	out := h.outbox()
	if len(out) != 1 || out[0].Action != ActionKill || out[0].Signal != 9 || out[0].Target.ContainerID != "abc123" || out[0].Fence.RestartCount != 4 {
		t.Errorf("command for the kubelet's container = %+v", out)
	}
}

// A resolved alert cancels its command while it is not sent, and not after.
func TestResolvedCancelsPending(t *testing.T) {
	h := newHarness(t, "")
	h.container("n1", "a", OwnerVigil, 0)
	h.container("n1", "b", OwnerVigil, 0)
	ctx := context.Background()
	a, b := alert("Unhealthy", "n1", "a", h.clock.Now()), alert("Unhealthy", "n1", "b", h.clock.Now())
	s := h.receive(a, b)
	if _, err := h.e.Dispatch(ctx, "n1", s.IDs[1]); err != nil {
		t.Fatal(err)
	}
	for _, x := range []*Alert{&a, &b} {
		x.Status, x.EndsAt = StatusResolved, h.clock.Now()
	}
	if got := h.receive(a, b); got.Cancelled != 1 || got.Unmatched != 0 || got.Acted+got.Suppressed+got.Duplicates != 0 {
		t.Fatalf("%+v", got)
	}
	if r, _ := h.e.Get(ctx, s.IDs[0]); r.State != StateCancelled || r.Result != "resolved" {
		t.Errorf("pending: %+v", r)
	}
	if r, _ := h.e.Get(ctx, s.IDs[1]); r.State != StateDispatched {
		t.Errorf("dispatched: %+v", r)
	}
	if _, err := h.e.Dispatch(ctx, "n1", s.IDs[0]); !errors.Is(err, ErrNotPending) {
		t.Errorf("a cancelled command was dispatched: %v", err)
	}
	if out := h.outbox(); len(out) != 1 || out[0].ID != s.IDs[1] {
		t.Errorf("outbox = %+v", out)
	}
	if suppressedCount(h, ReasonResolved) != 1 {
		t.Error("resolved not counted")
	}
}

// Deliver sends what is in the outbox and what comes later, once each; a
// send that fails puts the command back.
func TestDeliver(t *testing.T) {
	h := newHarness(t, "")
	for _, id := range []string{"a", "b", "c"} {
		h.container("n1", id, OwnerVigil, 0)
	}
	h.container("n2", "x", OwnerVigil, 0)
	h.receive(alert("Unhealthy", "n1", "a", h.clock.Now()), alert("Unhealthy", "n2", "x", h.clock.Now()))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sent := make(chan Command, 10)
	done := make(chan error, 1)
	go func() { done <- h.e.Deliver(ctx, "n1", func(c Command) error { sent <- c; return nil }) }()
	other := h.engine() // another replica delivering to the same node must not send again
	go func() { _ = other.Deliver(ctx, "n1", func(c Command) error { sent <- c; return nil }) }()
	recv := func() Command {
		t.Helper()
		select {
		case c := <-sent:
			return c
		case <-time.After(20 * time.Second):
			t.Fatal("no command delivered")
		}
		return Command{}
	}
	if c := recv(); c.Target.ContainerID != "a" {
		t.Fatalf("delivered %+v", c)
	}
	h.receive(alert("Unhealthy", "n1", "b", h.clock.Now()))
	if c := recv(); c.Target.ContainerID != "b" {
		t.Fatalf("delivered %+v", c)
	}
	select {
	case c := <-sent:
		t.Fatalf("delivered twice or to the wrong node: %+v", c)
	case <-time.After(200 * time.Millisecond):
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Deliver ended with %v", err)
	}
	// A stream that cannot take it at first (its queue full): the command
	// goes back to the outbox, and Deliver sends it once the stream takes
	// it, once.
	h.receive(alert("Unhealthy", "n1", "c", h.clock.Now()))
	var calls atomic.Int32
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	done2 := make(chan error, 1)
	go func() {
		done2 <- h.e.Deliver(ctx2, "n1", func(c Command) error {
			if calls.Add(1) == 1 {
				return errors.New("queue full")
			}
			sent <- c
			return nil
		})
	}()
	if c := recv(); c.Target.ContainerID != "c" {
		t.Fatalf("delivered %+v", c)
	}
	cancel2()
	if err := <-done2; err != nil {
		t.Fatalf("Deliver ended with %v", err)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("send called %d times, want a failure and a success", n)
	}
	returned := 0
	for _, j := range h.journal("") {
		if j.Kind == JournalReturned && strings.Contains(j.Message, "queue full") {
			returned++
		}
	}
	if returned != 1 {
		t.Errorf("%d returned journal lines", returned)
	}
}

func TestOperatorRequest(t *testing.T) {
	h := newHarness(t, `
max_actions_per_minute: 1
rules: []
`)
	h.container("n1", "web", OwnerVigil, 1)
	h.container("n1", "db", OwnerVigil, 1)
	ctx := context.Background()
	r, err := h.e.Request(ctx, OperatorRequest{Action: ActionRestart, Target: TargetRef{Node: "n1", Namespace: "default", Container: "web"}, Reason: "deploy stuck", Who: "operator/alice"})
	if err != nil || r.State != StatePending || r.RequestedBy != "operator/alice" || r.Source != SourceOperator {
		t.Fatalf("%+v, %v", r, err)
	}
	// The same budget as alerts.
	r, err = h.e.Request(ctx, OperatorRequest{Action: ActionKill, Target: TargetRef{Node: "n1", Namespace: "default", Container: "db"}, Reason: "x", Who: "operator/alice"})
	if err != nil || r.State != StateSuppressed || r.Result != "budget" {
		t.Fatalf("%+v, %v", r, err)
	}
	r, err = h.e.Request(ctx, OperatorRequest{Action: ActionStop, Target: TargetRef{Node: "n1", Namespace: "default", Container: "nope"}, Reason: "x", Who: "operator/bob", DryRun: true})
	if err != nil || r.Result != "target_unknown" {
		t.Fatalf("%+v, %v", r, err)
	}
	for _, bad := range []OperatorRequest{
		{Action: 0, Target: TargetRef{Node: "n1", Container: "web"}, Reason: "x", Who: "w"},
		{Action: ActionRestart, Target: TargetRef{Container: "web"}, Reason: "x", Who: "w"},
		{Action: ActionRestart, Target: TargetRef{Node: "n1"}, Reason: "x", Who: "w"},
		{Action: ActionLinkUp, Target: TargetRef{Node: "n1"}, Reason: "x", Who: "w"},
		{Action: ActionRestart, Signal: 15, Target: TargetRef{Node: "n1", Container: "web"}, Reason: "x", Who: "w"},
		{Action: ActionRestart, Target: TargetRef{Node: "n1", Container: "web"}, Who: "w"},
		{Action: ActionRestart, Target: TargetRef{Node: "n1", Container: "web"}, Reason: "x"},
	} {
		if _, err := h.e.Request(ctx, bad); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%+v: %v", bad, err)
		}
	}
	j := h.journal("")
	if k := kinds(j); len(k) != 6 || k[0] != JournalRequest || k[1] != JournalDecision {
		t.Errorf("journal = %v", k)
	}
}

func TestStormGuard(t *testing.T) {
	h := newHarness(t, `
max_actions_per_minute: 0
max_nodes_in_flight: 0
storm_guard: {share: 25%, min_targets: 3, window: 1m}
rules:
  - name: r
    match: {alertname: Unhealthy}
    action: restart_container
    target: {node: node, namespace: namespace, container: container}
`)
	var alerts []Alert
	for i := range 12 {
		id := "c" + string(rune('a'+i))
		h.container("n1", id, OwnerVigil, 0)
		alerts = append(alerts, alert("Unhealthy", "n1", id, h.clock.Now()))
	}
	if s := h.receive(alerts[:3]...); s.Acted != 3 {
		t.Fatalf("3 of 12 is not a storm: %+v", s)
	}
	// The same three again (another replica's view, after a refresh, and
	// this one's): still three targets, not six.
	other := h.engine()
	h.clock.Advance(firingRefresh)
	for _, e := range []*Engine{h.e, other} {
		if _, err := e.Receive(context.Background(), hook(alerts[:3]...), h.clock.Now()); err != nil {
			t.Fatal(err)
		}
		if testutil.ToFloat64(e.m.storm) != 0 {
			t.Fatal("the same targets firing again counted twice")
		}
	}
	if s := h.receive(alerts[3:5]...); s.Suppressed != 2 || suppressedCount(h, ReasonStorm) != 2 {
		t.Fatalf("5 of 12: %+v", s)
	}
	if testutil.ToFloat64(h.e.m.storm) != 1 {
		t.Error("storm gauge not set")
	}
	// Operators still act.
	if r, err := h.e.Request(context.Background(), OperatorRequest{Action: ActionRestart, Target: TargetRef{Node: "n1", Namespace: "default", Container: "cl"}, Reason: "x", Who: "o"}); err != nil || r.State != StatePending {
		t.Fatalf("%+v %v", r, err)
	}
	// The firing marks age out of the window: the storm ends.
	h.clock.Advance(time.Minute)
	h.e.runOnce(context.Background())
	if testutil.ToFloat64(h.e.m.storm) != 0 {
		t.Error("storm gauge still set")
	}
	if s := h.receive(alerts[5]); s.Acted != 1 {
		t.Fatalf("after the storm: %+v", s)
	}
	var storms int
	for _, j := range h.journal("") {
		if j.Kind == JournalStorm {
			storms++
		}
	}
	if storms != 2 {
		t.Errorf("%d storm entries journaled, want began and ended", storms)
	}
}

func TestSweep(t *testing.T) {
	h := newHarness(t, "retention: 1h\nmax_actions_per_minute: 0\nmax_nodes_in_flight: 0\nstorm_guard: {share: 0}\n"+testRules[strings.Index(testRules, "rules:"):])
	h.container("n1", "a", OwnerVigil, 0)
	ctx := context.Background()
	s := h.receive(alert("Unhealthy", "n1", "a", h.clock.Now()))
	cmd, _ := h.e.Dispatch(ctx, "n1", s.IDs[0])
	if err := h.e.RecordResult(ctx, cmd.ID, OutcomeSucceeded, ""); err != nil {
		t.Fatal(err)
	}
	if n, err := h.e.Sweep(ctx); err != nil || n != 0 {
		t.Fatalf("fresh: %d, %v", n, err)
	}
	h.clock.Advance(2 * time.Hour)
	n, err := h.e.Sweep(ctx)
	if err != nil || n == 0 {
		t.Fatalf("old: %d, %v", n, err)
	}
	for _, p := range []string{journalPrefix, recordsPrefix, intentsPrefix, firingPrefix, targetsPrefix} {
		if kvs, _, _ := h.st.List(ctx, p, 0); len(kvs) != 0 {
			t.Errorf("%s still holds %d keys", p, len(kvs))
		}
	}
}

// Deliver's retry wait grows per failure to a cap, with half of it drawn.
func TestDeliverBackoff(t *testing.T) {
	top := func(n int64) int64 { return n - 1 }
	zero := func(int64) int64 { return 0 }
	want := []time.Duration{100, 200, 400, 800, 1600, 3200, 5000, 5000}
	for f, w := range want {
		w *= time.Millisecond
		if got := deliverBackoff(f, top); got != w {
			t.Errorf("deliverBackoff(%d) with the largest draw = %v, want %v", f, got, w)
		}
		if got := deliverBackoff(f, zero); got != w/2 {
			t.Errorf("deliverBackoff(%d) with the smallest draw = %v, want %v", f, got, w/2)
		}
	}
	if got := deliverBackoff(1000, top); got != deliverBackoffMax {
		t.Errorf("deliverBackoff(1000) = %v, want the cap", got)
	}
}
