package agent

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/vigilhq/vigil/internal/container"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// exitsOf is the container's exit count for (reason, code).
func exitsOf(c *vigilv1.Container, reason vigilv1.ExitReason, code uint32) uint64 {
	for _, e := range c.GetCounters().GetExits() {
		if e.GetReason() == reason && e.GetCode() == code {
			return e.GetCount()
		}
	}
	return 0
}

// TestExitWhileAgentDownCounted (issue 22, item 2): a task that ran when the
// agent stopped and is gone when it comes back exited unseen: the exit is
// counted once, as unknown (code 255, its status went with the task), and
// an event says the missing task is taken as an operator's stop. A task
// replaced by another while the agent was down (the operator started a new
// one) has its exit counted once too, and is not restarted by policy.
// Neither is counted again by the next agent.
func TestExitWhileAgentDownCounted(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(nil)
	h.run("gone", map[string]string{"vigil.io/restart-policy": "always"}, "sleep")
	h.run("replaced", map[string]string{"vigil.io/restart-policy": "always"}, "sleep")
	for _, id := range []string{"gone", "replaced"} {
		h.waitState(id, "running", 30*time.Second, func(c *vigilv1.Container) bool {
			return c.GetState() == vigilv1.ContainerState_CONTAINER_STATE_RUNNING
		})
	}
	h.stop()

	// While the agent is down: "gone" is killed and its task deleted;
	// "replaced" too, and a new task started (ctr task start).
	h.env.DeleteTask(t, h.ns, "gone")
	cont := h.env.DeleteTask(t, h.ns, "replaced")
	ctx := namespaces.WithNamespace(context.Background(), h.ns)
	time.Sleep(2500 * time.Millisecond) // past the slack between two start times of one task
	tk, err := cont.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if err := tk.Start(ctx); err != nil {
		t.Fatal(err)
	}
	h.clearEvents()

	h.start(nil)
	unknown := func(ev *vigilv1.ContainerEvent) bool {
		return exited(ev) && ev.GetExit().GetReason() == vigilv1.ExitReason_EXIT_REASON_UNKNOWN && ev.GetExit().GetCode() == 255
	}
	h.waitFor("gone", "the unseen exit", 30*time.Second, unknown)
	ev := h.waitFor("gone", "explicit stop", 30*time.Second, isDecision(vigilv1.RestartDecisionKind_RESTART_DECISION_KIND_SKIP_EXPLICIT_STOP))
	if !strings.Contains(ev.GetMessage(), "operator's stop") {
		t.Errorf("the explicit stop's event does not say it is taken as an operator's stop: %q", ev.GetMessage())
	}
	h.waitFor("replaced", "the unseen exit", 30*time.Second, unknown)
	c := h.waitState("gone", "stopped with its exit counted", 30*time.Second, func(c *vigilv1.Container) bool {
		return exitsOf(c, vigilv1.ExitReason_EXIT_REASON_UNKNOWN, 255) == 1
	})
	if c.GetState() != vigilv1.ContainerState_CONTAINER_STATE_STOPPED || c.GetLastExit().GetCode() != 255 || !c.GetExplicitlyStopped() {
		t.Errorf("gone: state %v, last exit %v, explicitly stopped %v; want stopped, 255, true", c.GetState(), c.GetLastExit(), c.GetExplicitlyStopped())
	}
	r := h.waitState("replaced", "running with its exit counted", 30*time.Second, func(c *vigilv1.Container) bool {
		return exitsOf(c, vigilv1.ExitReason_EXIT_REASON_UNKNOWN, 255) == 1
	})
	if r.GetState() != vigilv1.ContainerState_CONTAINER_STATE_RUNNING || r.GetRestartCount() != 0 {
		t.Errorf("replaced: state %v, restart count %d; want running, 0 (an operator's start)", r.GetState(), r.GetRestartCount())
	}
	time.Sleep(2 * time.Second)
	if n := h.count("gone", restarted); n != 0 {
		t.Fatalf("gone was restarted\n%s", h.describe("gone"))
	}

	// The next agent counts nothing again.
	h.stop()
	h.clearEvents()
	h.start(nil)
	for _, id := range []string{"gone", "replaced"} {
		c := h.waitState(id, "known again", 30*time.Second, func(*vigilv1.Container) bool { return true })
		time.Sleep(time.Second)
		c = h.containerState(id)
		if n := exitsOf(c, vigilv1.ExitReason_EXIT_REASON_UNKNOWN, 255); n != 1 {
			t.Errorf("%s: %d unknown exits after another agent restart, want 1", id, n)
		}
		if n := h.count(id, exited); n != 0 {
			t.Errorf("%s: an exit reported again\n%s", id, h.describe(id))
		}
	}
}

// TestAgentRestartKeepsStoppedState (issue 22, item 3): after an agent
// restart, containers an operator stopped are still reported stopped with
// their last exit (not "created" without one), show no backoff since no
// restart is pending, and are not announced (ADDED) a second time; no
// decision is reported for them.
func TestAgentRestartKeepsStoppedState(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(func(c *Config) { c.BackoffInitial = 300 * time.Millisecond; c.BackoffMax = 30 * time.Second })
	h.run("stopped", map[string]string{"vigil.io/restart-policy": "always"}, "sleep")
	h.run("looper", map[string]string{"vigil.io/restart-policy": "always"}, "exit", "1", "--after", "100ms")
	h.waitFor("looper", "3 restarts", 60*time.Second, func(ev *vigilv1.ContainerEvent) bool {
		return restarted(ev) && ev.GetContainer().GetRestartCount() >= 3
	})
	// The looper is stopped by an operator between two runs: its task
	// deleted while its restart waits out the backoff.
	h.waitFor("looper", "a backoff", 60*time.Second, func(ev *vigilv1.ContainerEvent) bool {
		return isDecision(vigilv1.RestartDecisionKind_RESTART_DECISION_KIND_BACKOFF)(ev) && ev.GetDecision().GetDelay().AsDuration() >= time.Second
	})
	h.env.DeleteTask(t, h.ns, "looper")
	h.waitFor("looper", "explicit stop", 30*time.Second, isDecision(vigilv1.RestartDecisionKind_RESTART_DECISION_KIND_SKIP_EXPLICIT_STOP))
	// "stopped": kill, then delete, as nerdctl stop does.
	cl := h.env.Client(t)
	ctx := namespaces.WithNamespace(context.Background(), h.ns)
	c, err := cl.LoadContainer(ctx, "stopped")
	if err != nil {
		t.Fatal(err)
	}
	tk, err := c.Task(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := tk.Wait(ctx)
	_ = tk.Kill(ctx, syscall.SIGKILL)
	<-st
	if _, err := tk.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	h.waitFor("stopped", "explicit stop", 30*time.Second, isDecision(vigilv1.RestartDecisionKind_RESTART_DECISION_KIND_SKIP_EXPLICIT_STOP))
	before := map[string]*vigilv1.Container{}
	for _, id := range []string{"stopped", "looper"} {
		before[id] = h.waitState(id, "stopped with an exit", 10*time.Second, func(c *vigilv1.Container) bool {
			return c.GetState() == vigilv1.ContainerState_CONTAINER_STATE_STOPPED && c.GetLastExit() != nil
		})
	}
	h.stop()
	h.clearEvents()

	h.start(func(c *Config) { c.BackoffInitial = 300 * time.Millisecond; c.BackoffMax = 30 * time.Second })
	for _, id := range []string{"stopped", "looper"} {
		c := h.waitState(id, "known after the agent restart", 30*time.Second, func(*vigilv1.Container) bool { return true })
		if c.GetState() != vigilv1.ContainerState_CONTAINER_STATE_STOPPED {
			t.Errorf("%s: state %v after the agent restart, want STOPPED", id, c.GetState())
		}
		if got, want := c.GetLastExit(), before[id].GetLastExit(); got.GetCode() != want.GetCode() || got.GetReason() != want.GetReason() {
			t.Errorf("%s: last exit %v after the agent restart, was %v", id, got, want)
		}
		if b := c.GetBackoff(); b.GetCrashLooping() || b.GetCurrentDelay().AsDuration() != 0 || b.GetNextRestartAt() != nil {
			t.Errorf("%s: backoff %v shown with no restart pending", id, b)
		}
		if !c.GetExplicitlyStopped() {
			t.Errorf("%s: explicit stop forgotten", id)
		}
	}
	time.Sleep(2 * time.Second)
	for _, id := range []string{"stopped", "looper"} {
		if n := h.count(id, isType(vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_ADDED)); n != 0 {
			t.Errorf("%s announced again after the agent restart\n%s", id, h.describe(id))
		}
		if n := h.count(id, isType(vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_RESTART_DECISION)); n != 0 {
			t.Errorf("%s: a decision reported after the agent restart\n%s", id, h.describe(id))
		}
	}
}

// TestOperatorStopRacingRestartNoMisleadingEvent (issue 22, item 4): an
// operator's delete that lands while the agent's restart is in flight is
// reported as an explicit stop, without a "task deleted by vigil for a
// restart" before it.
func TestOperatorStopRacingRestartNoMisleadingEvent(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	reached, release := make(chan struct{}, 1), make(chan struct{})
	h.hook = func(a *Agent) {
		a.restartHook = func(ctx context.Context, _ container.Key, restart func(context.Context) error) error {
			select {
			case reached <- struct{}{}:
			default:
			}
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
			return restart(ctx)
		}
	}
	h.start(nil)
	h.run("svc", map[string]string{"vigil.io/restart-policy": "always"}, "exit", "1", "--after", "300ms")
	select {
	case <-reached:
	case <-time.After(30 * time.Second):
		t.Fatalf("no restart began\n%s", h.describe("svc"))
	}
	h.env.DeleteTask(t, h.ns, "svc") // the operator's delete comes first
	close(release)
	h.waitFor("svc", "explicit stop", 30*time.Second, isDecision(vigilv1.RestartDecisionKind_RESTART_DECISION_KIND_SKIP_EXPLICIT_STOP))
	for _, r := range h.eventsFor("svc") {
		if strings.Contains(r.ev.GetMessage(), "deleted by vigil") {
			t.Fatalf("misleading event on an operator's stop: %q\n%s", r.ev.GetMessage(), h.describe("svc"))
		}
	}
	if n := h.count("svc", restarted); n != 0 {
		t.Fatalf("restarted after the operator's delete\n%s", h.describe("svc"))
	}
}

// TestPendingRestartNotDecidedAgain (issue 22, item 3): a restart decided
// before the agent restarted, still pending, is carried out by the next
// agent without reporting the old decision again (it was logged with its
// original delay, although it was nearly due).
func TestPendingRestartNotDecidedAgain(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(func(c *Config) { c.StopWindow = 3 * time.Second })
	h.run("pending", map[string]string{"vigil.io/restart-policy": "always"}, "exit", "1", "--after", "200ms")
	h.waitFor("pending", "restart decision", 30*time.Second, isDecision(vigilv1.RestartDecisionKind_RESTART_DECISION_KIND_RESTART))
	h.stop()
	h.clearEvents()
	h.start(func(c *Config) { c.StopWindow = 3 * time.Second })
	h.waitFor("pending", "the pending restart", 30*time.Second, restarted)
	if n := h.count("pending", isType(vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_RESTART_DECISION)); n != 0 {
		t.Fatalf("the pending restart's decision was reported again\n%s", h.describe("pending"))
	}
	if n := h.count("pending", exited); n != 0 {
		t.Fatalf("the exit was reported again\n%s", h.describe("pending"))
	}
}
