package agent

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/statedir"
	"github.com/vigilhq/vigil/internal/testenv"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// commandRig is an agent streaming to a real aggregator, with the commands'
// results the agent reported.
type commandRig struct {
	t       *testing.T
	h       *harness
	agg     *aggregatorProc
	aggHTTP string
	restart func(*Config)

	mu      sync.Mutex
	results []*vigilv1.CommandResult
}

func newCommandRig(t *testing.T, mod func(*Config)) *commandRig {
	r := &commandRig{t: t, h: newHarness(t)}
	rig := streamingAgentWith(t, r.h, func(c *Config) {
		c.CommandResultSink = func(res *vigilv1.CommandResult) {
			r.mu.Lock()
			r.results = append(r.results, res)
			r.mu.Unlock()
		}
		if mod != nil {
			mod(c)
		}
	})
	r.agg, r.aggHTTP, r.restart = rig.agg, rig.aggHTTP, rig.restart
	return r
}

// send hands cmd to the aggregator for the agent, once the agent's stream
// is up.
func (r *commandRig) send(cmd *vigilv1.Command) {
	r.t.Helper()
	waitUntil(r.t, 30*time.Second, "the aggregator to take the command", func() bool {
		err := r.agg.agg.Gateway().SendCommand("test-node", cmd)
		if err != nil && !errors.Is(err, errdefs.ErrUnavailable) {
			r.t.Fatal(err)
		}
		return err == nil
	})
}

// sendUntil sends cmd, and again every 2 s (a command queued for a stream
// that has just ended is dropped by the aggregator: its caller retries, as
// remediation will), until cond holds; it fails after 30 s.
func (r *commandRig) sendUntil(cmd *vigilv1.Command, what string, cond func() bool) {
	r.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r.send(cmd)
		for next := time.Now().Add(2 * time.Second); time.Now().Before(next); time.Sleep(50 * time.Millisecond) {
			if cond() {
				return
			}
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// reported counts the results the agent reported for id so far.
func (r *commandRig) reported(id string) []*vigilv1.CommandResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*vigilv1.CommandResult
	for _, res := range r.results {
		if res.GetCommandId() == id {
			out = append(out, res)
		}
	}
	return out
}

// atAggregator waits until the aggregator holds a result for id satisfying
// pred and returns it.
func (r *commandRig) atAggregator(id string, pred func(*vigilv1.CommandResult) bool) *vigilv1.CommandResult {
	r.t.Helper()
	var got *vigilv1.CommandResult
	waitUntil(r.t, 30*time.Second, "the result of "+id+" at the aggregator", func() bool {
		for _, res := range r.agg.agg.Fleet().CommandResults("test-node") {
			if res.GetCommandId() == id && pred(res) {
				got = res
				return true
			}
		}
		return false
	})
	return got
}

func outcomeIs(o vigilv1.CommandOutcome) func(*vigilv1.CommandResult) bool {
	return func(r *vigilv1.CommandResult) bool { return r.GetOutcome() == o }
}

var taskStarted = func(ev *vigilv1.ContainerEvent) bool {
	return ev.GetType() == vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_STATE_CHANGED && ev.GetMessage() == "task started"
}

// TestCommandRunsOnce (issues 21 and 20): a RESTART command delivered
// twice, and once more after an agent restart, restarts the container once;
// the redeliveries are answered with the recorded result (not a DUPLICATE
// that would overwrite it at the aggregator), and the next agent reports it
// again.
func TestCommandRunsOnce(t *testing.T) {
	r := newCommandRig(t, nil)
	h := r.h
	h.run("target", map[string]string{"vigil.io/restart-policy": "no"}, "sleep")
	h.waitState("target", "running", 30*time.Second, func(c *vigilv1.Container) bool {
		return c.GetState() == vigilv1.ContainerState_CONTAINER_STATE_RUNNING
	})
	cmd := &vigilv1.Command{Id: "restart-once", Action: vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART,
		Target: &vigilv1.Target{Namespace: h.ns, ContainerId: "target"}, Reason: "test"}
	h.waitFor("target", "its first task", 30*time.Second, taskStarted)
	h.clearEvents()
	// Delivered twice at once (the second while the first is carried out:
	// its result follows), then once more after it finished (answered
	// with the recorded result).
	r.send(cmd)
	r.send(cmd)
	r.atAggregator(cmd.Id, outcomeIs(vigilv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED))
	n := len(r.reported(cmd.Id))
	r.send(cmd)
	waitUntil(t, 30*time.Second, "the redelivery answered", func() bool { return len(r.reported(cmd.Id)) > n })
	h.waitFor("target", "the restart's new task", 30*time.Second, restarted)
	time.Sleep(time.Second)
	if n := h.count("target", taskStarted) + h.count("target", restarted); n != 1 {
		t.Fatalf("the command started %d tasks, want 1\n%s", n, h.describe("target"))
	}
	for _, res := range r.reported(cmd.Id) {
		if res.GetOutcome() != vigilv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED {
			t.Errorf("a delivery was answered %v, want the recorded SUCCEEDED", res.GetOutcome())
		}
	}

	h.stop()
	h.clearEvents()
	r.mu.Lock()
	r.results = nil
	r.mu.Unlock()
	h.start(r.restart)
	// The next agent reports the result again at its start, and answers a
	// third delivery with it.
	waitUntil(t, 30*time.Second, "the result reported again after the agent restart", func() bool { return len(r.reported(cmd.Id)) >= 1 })
	n = len(r.reported(cmd.Id))
	r.sendUntil(cmd, "the third delivery answered", func() bool { return len(r.reported(cmd.Id)) > n })
	time.Sleep(time.Second)
	if n := h.count("target", taskStarted) + h.count("target", restarted); n != 0 {
		t.Fatalf("the command was carried out again after the agent restart\n%s", h.describe("target"))
	}
	if res := r.atAggregator(cmd.Id, func(*vigilv1.CommandResult) bool { return true }); res.GetOutcome() != vigilv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED {
		t.Fatalf("the aggregator holds %v for the command, want SUCCEEDED", res)
	}
}

// TestCommandInterruptedNotRepeated: a command the agent was carrying out
// when it died is never carried out again: the next agent reports it
// failed, and answers its redelivery with that result.
func TestCommandInterruptedNotRepeated(t *testing.T) {
	reached := make(chan struct{}, 1)
	r := newCommandRig(t, func(c *Config) { c.ShutdownGrace = 0 })
	h := r.h
	h.run("target", map[string]string{"vigil.io/restart-policy": "no"}, "sleep")
	h.waitState("target", "running", 30*time.Second, func(c *vigilv1.Container) bool {
		return c.GetState() == vigilv1.ContainerState_CONTAINER_STATE_RUNNING
	})
	// The agent dies after accepting the command, before acting: the
	// hook stands for that (it never acts, and waits for the end).
	h.stop()
	h.hook = func(a *Agent) {
		a.commandHook = func(ctx context.Context, _ *vigilv1.Command, _ func(context.Context) error) error {
			reached <- struct{}{}
			<-ctx.Done()
			return ctx.Err()
		}
	}
	h.start(r.restart)
	cmd := &vigilv1.Command{Id: "interrupted", Action: vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART,
		Target: &vigilv1.Target{Namespace: h.ns, ContainerId: "target"}}
	accepted := false
	r.sendUntil(cmd, "the command accepted", func() bool {
		select {
		case <-reached:
			accepted = true
		default:
		}
		return accepted
	})
	h.stop()
	h.hook = nil
	h.clearEvents()
	h.start(r.restart)
	res := r.atAggregator(cmd.Id, outcomeIs(vigilv1.CommandOutcome_COMMAND_OUTCOME_FAILED))
	// Killed in the middle, the next agent says it was interrupted; here the
	// hook sees the stopping agent cancel it, and records that.
	if msg := res.GetMessage(); !strings.Contains(msg, "not carried out again") && !strings.Contains(msg, "context canceled") {
		t.Errorf("interrupted command's result says %q", msg)
	}
	r.sendUntil(cmd, "the redelivery answered", func() bool {
		n := 0
		for _, x := range r.reported(cmd.Id) {
			if x.GetOutcome() == vigilv1.CommandOutcome_COMMAND_OUTCOME_FAILED {
				n++
			}
		}
		return n >= 2
	})
	time.Sleep(time.Second)
	if n := h.count("target", taskStarted) + h.count("target", restarted); n != 0 {
		t.Fatalf("an interrupted command was carried out by the next agent\n%s", h.describe("target"))
	}
}

// TestStopThenStartCommands: STOP stops a container for good (its policy
// does not bring it back); START clears that and starts it, not counted as
// a restart (as docker start), and the policy is in force again. A command outside --command-namespaces is refused
// with the reason.
func TestStopThenStartCommands(t *testing.T) {
	r := newCommandRig(t, func(c *Config) { c.StopGrace = 5 * time.Second })
	h := r.h
	h.run("svc", map[string]string{"vigil.io/restart-policy": "always"}, "sleep")
	h.waitState("svc", "running", 30*time.Second, func(c *vigilv1.Container) bool {
		return c.GetState() == vigilv1.ContainerState_CONTAINER_STATE_RUNNING
	})
	h.waitFor("svc", "its first task", 30*time.Second, taskStarted)
	h.clearEvents()
	target := &vigilv1.Target{Namespace: h.ns, ContainerId: "svc"}
	r.send(&vigilv1.Command{Id: "stop-1", Action: vigilv1.RemediationAction_REMEDIATION_ACTION_STOP, Target: target})
	r.atAggregator("stop-1", outcomeIs(vigilv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED))
	h.waitState("svc", "stopped for good", 30*time.Second, func(c *vigilv1.Container) bool {
		return c.GetState() == vigilv1.ContainerState_CONTAINER_STATE_STOPPED && c.GetExplicitlyStopped()
	})
	time.Sleep(2 * time.Second)
	if n := h.count("svc", taskStarted) + h.count("svc", restarted); n != 0 {
		t.Fatalf("restarted after STOP\n%s", h.describe("svc"))
	}

	r.send(&vigilv1.Command{Id: "start-1", Action: vigilv1.RemediationAction_REMEDIATION_ACTION_START, Target: target})
	r.atAggregator("start-1", outcomeIs(vigilv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED))
	c := h.waitState("svc", "running again, no longer stopped", 30*time.Second, func(c *vigilv1.Container) bool {
		return c.GetState() == vigilv1.ContainerState_CONTAINER_STATE_RUNNING && !c.GetExplicitlyStopped()
	})
	// A START is no restart, as docker start: a task started, nothing
	// counted.
	h.waitFor("svc", "the START's task", 30*time.Second, taskStarted)
	if n := h.count("svc", restarted); n != 0 || c.GetRestartCount() != 0 || c.GetCounters().GetRestartsTotal() != 0 {
		t.Fatalf("STOP then START counted as a restart: %d RESTARTED events, restart count %d, restarts_total %d\n%s",
			n, c.GetRestartCount(), c.GetCounters().GetRestartsTotal(), h.describe("svc"))
	}
	// The policy is in force again: a crash is restarted.
	cl := h.env.Client(t)
	ctx := namespaces.WithNamespace(context.Background(), h.ns)
	cont, err := cl.LoadContainer(ctx, "svc")
	if err != nil {
		t.Fatal(err)
	}
	tk, err := cont.Task(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := tk.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	h.waitFor("svc", "a policy restart after START", 30*time.Second, restarted)
	h.waitState("svc", "the policy's restart counted", 30*time.Second, func(c *vigilv1.Container) bool {
		return c.GetRestartCount() == 1 && c.GetCounters().GetRestartsTotal() == 1
	})

	r.send(&vigilv1.Command{Id: "kill-elsewhere", Action: vigilv1.RemediationAction_REMEDIATION_ACTION_KILL,
		Target: &vigilv1.Target{Namespace: "not-allowed", ContainerId: "svc"}})
	// Every namespace is allowed by default: a container not found there.
	r.atAggregator("kill-elsewhere", outcomeIs(vigilv1.CommandOutcome_COMMAND_OUTCOME_NOT_FOUND))
}

// TestCommandNamespacesRefused: with --command-namespaces, a command for
// another namespace is refused with the reason, and nothing is done.
func TestCommandNamespacesRefused(t *testing.T) {
	r := newCommandRig(t, func(c *Config) { c.CommandNamespaces = []string{"only-this-one"} })
	h := r.h
	h.run("svc", map[string]string{"vigil.io/restart-policy": "no"}, "sleep")
	h.waitState("svc", "running", 30*time.Second, func(c *vigilv1.Container) bool {
		return c.GetState() == vigilv1.ContainerState_CONTAINER_STATE_RUNNING
	})
	r.send(&vigilv1.Command{Id: "kill-1", Action: vigilv1.RemediationAction_REMEDIATION_ACTION_KILL,
		Target: &vigilv1.Target{Namespace: h.ns, ContainerId: "svc"}})
	res := r.atAggregator("kill-1", outcomeIs(vigilv1.CommandOutcome_COMMAND_OUTCOME_REFUSED))
	if !strings.Contains(res.GetMessage(), "not among the namespaces the agent allows commands in") {
		t.Errorf("refusal says %q", res.GetMessage())
	}
	time.Sleep(time.Second)
	if c := h.containerState("svc"); c.GetState() != vigilv1.ContainerState_CONTAINER_STATE_RUNNING {
		t.Fatalf("a refused kill stopped the container: %v", c.GetState())
	}
}

// TestStopSignalFromImage (issue 22, item 5): the agent stops a task with
// its image's STOPSIGNAL. The container's shell ignores SIGTERM and exits
// 3 on SIGINT; with a stop timeout of 60s, a stop by SIGTERM would end in
// SIGKILL (137) only after a minute.
func TestStopSignalFromImage(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(nil)
	img := h.env.StopSignalImage(t, h.ns, "SIGINT")
	h.env.RunContainer(t, testenv.ContainerSpec{
		Namespace: h.ns,
		ID:        "shell",
		Image:     img,
		Args:      []string{"sh", "-c", `trap "exit 3" INT; trap "" TERM; while :; do sleep 0.1; done`},
		Labels: map[string]string{
			"vigil.io/restart-policy":  "always",
			"vigil.io/health-cmd":      "false",
			"vigil.io/health-interval": "1s",
			"vigil.io/health-retries":  "1",
			LabelStopTimeout:           "60",
		},
	})
	ev := h.waitFor("shell", "the exit of the unhealthy restart's stop", 40*time.Second, exited)
	if got := ev.GetExit().GetCode(); got != 3 {
		t.Fatalf("stopped with exit code %d, want 3 (SIGINT, the image's STOPSIGNAL)\n%s", got, h.describe("shell"))
	}
	if c := ev.GetContainer(); c.GetId() != "shell" {
		t.Fatal(fmt.Sprint(c))
	}
}

// TestCommandFoundInterruptedAtStart: a command the state dir says was
// accepted and never finished (the agent was SIGKILLed while carrying it
// out) is reported failed by the next agent, never carried out again.
func TestCommandFoundInterruptedAtStart(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	s, err := statedir.Open(statedir.Config{Dir: h.stateDir})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(func(tx statedir.Tx) error {
		tx.AcceptCommand("killed-midway", time.Now().Add(-time.Minute), time.Time{})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	var mu sync.Mutex
	var got []*vigilv1.CommandResult
	h.start(func(c *Config) {
		c.CommandResultSink = func(r *vigilv1.CommandResult) {
			mu.Lock()
			got = append(got, r)
			mu.Unlock()
		}
	})
	waitUntil(t, 30*time.Second, "the interrupted command's result", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) > 0
	})
	mu.Lock()
	r := got[0]
	mu.Unlock()
	if r.GetCommandId() != "killed-midway" || r.GetOutcome() != vigilv1.CommandOutcome_COMMAND_OUTCOME_FAILED || !strings.Contains(r.GetMessage(), "not carried out again") {
		t.Fatalf("result %v; want killed-midway FAILED, not carried out again", r)
	}
}

// TestIsolatedAgentRefusesCommands (issue 25): an agent that finds itself
// isolated refuses remote commands, with the reason, and acts on none. A
// real agent and aggregator; the isolation is set by hand (the one fault
// here: with gossip, isolation means the stream is down, so a command can
// only meet it when the stream delivered it just before dropping; the
// gossip loop, off in this agent, would otherwise set it).
// TestGossipNodeConditions shows the agent find itself isolated.
func TestIsolatedAgentRefusesCommands(t *testing.T) {
	r := newCommandRig(t, nil)
	h := r.h
	h.run("svc", map[string]string{"vigil.io/restart-policy": "no"}, "sleep")
	h.waitState("svc", "running", 30*time.Second, func(c *vigilv1.Container) bool {
		return c.GetState() == vigilv1.ContainerState_CONTAINER_STATE_RUNNING
	})
	why := "stream down and no peer answered a probe (0 alive in the view)"
	h.agent.isolated.Store(&why)
	r.send(&vigilv1.Command{Id: "kill-iso", Action: vigilv1.RemediationAction_REMEDIATION_ACTION_KILL,
		Target: &vigilv1.Target{Namespace: h.ns, ContainerId: "svc"}})
	res := r.atAggregator("kill-iso", outcomeIs(vigilv1.CommandOutcome_COMMAND_OUTCOME_REFUSED))
	if res.GetMessage() != "isolated: "+why {
		t.Errorf("refusal says %q", res.GetMessage())
	}
	if c := h.containerState("svc"); c.GetState() != vigilv1.ContainerState_CONTAINER_STATE_RUNNING {
		t.Fatalf("a refused kill stopped the container: %v", c.GetState())
	}

	// No longer isolated: the next command is carried out.
	h.agent.isolated.Store(nil)
	r.send(&vigilv1.Command{Id: "kill-after", Action: vigilv1.RemediationAction_REMEDIATION_ACTION_KILL,
		Target: &vigilv1.Target{Namespace: h.ns, ContainerId: "svc"}})
	r.atAggregator("kill-after", outcomeIs(vigilv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED))
}

// TestKillCommandSendsItsSignal (the user's report: `vigilctl kill --signal
// TERM` always sent SIGKILL): a KILL sends the command's signal. Two
// containers run the same shell, which exits 42 on SIGTERM: the KILL with
// SIGTERM ends one with code 42 (a SIGKILL would show 137, KILL), the KILL
// with signal 0 ends the other by SIGKILL, as before the field existed. A
// KILL with a signal above 64 is refused with the reason and does nothing.
func TestKillCommandSendsItsSignal(t *testing.T) {
	r := newCommandRig(t, nil)
	h := r.h
	img := h.env.BusyboxImage(t, h.ns)
	for _, id := range []string{"term", "kill0"} {
		h.env.RunContainer(t, testenv.ContainerSpec{
			Namespace: h.ns, ID: id, Image: img,
			Args:   []string{"sh", "-c", `trap "exit 42" TERM; while :; do sleep 0.1; done`},
			Labels: map[string]string{"vigil.io/restart-policy": "no"},
		})
		h.waitFor(id, "its task started", 30*time.Second, taskStarted)
	}
	kill := func(cmdID, id string, sig uint32) *vigilv1.Command {
		return &vigilv1.Command{Id: cmdID, Action: vigilv1.RemediationAction_REMEDIATION_ACTION_KILL, Signal: sig,
			Target: &vigilv1.Target{Namespace: h.ns, ContainerId: id}, Reason: "test"}
	}

	r.send(kill("kill-65", "term", 65))
	res := r.atAggregator("kill-65", outcomeIs(vigilv1.CommandOutcome_COMMAND_OUTCOME_REFUSED))
	if !strings.Contains(res.GetMessage(), "signal 65") {
		t.Errorf("the refusal says %q; want it to name signal 65", res.GetMessage())
	}
	if c := h.containerState("term"); c.GetState() != vigilv1.ContainerState_CONTAINER_STATE_RUNNING || h.count("term", exited) != 0 {
		t.Fatalf("a refused KILL ended the container: %v\n%s", c.GetState(), h.describe("term"))
	}

	for _, tc := range []struct {
		id     string
		sig    uint32
		code   uint32
		reason vigilv1.ExitReason
		signal string
	}{
		{"term", uint32(syscall.SIGTERM), 42, vigilv1.ExitReason_EXIT_REASON_ERROR, ""},
		{"kill0", 0, 137, vigilv1.ExitReason_EXIT_REASON_SIGNAL, "KILL"},
	} {
		cmdID := "kill-" + tc.id
		r.send(kill(cmdID, tc.id, tc.sig))
		r.atAggregator(cmdID, outcomeIs(vigilv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED))
		e := h.waitFor(tc.id, "the exit the KILL caused", 30*time.Second, exited).GetExit()
		if e.GetCode() != tc.code || e.GetReason() != tc.reason || e.GetSignal() != tc.signal {
			t.Errorf("KILL with signal %d: exit %v; want code %d, %v, signal %q\n%s", tc.sig, e, tc.code, tc.reason, tc.signal, h.describe(tc.id))
		}
		c := h.waitState(tc.id, "stopped, its exit counted", 30*time.Second, func(c *vigilv1.Container) bool {
			return c.GetState() == vigilv1.ContainerState_CONTAINER_STATE_STOPPED && exitsOf(c, tc.reason, tc.code) == 1
		})
		if n := c.GetCounters().GetRestartsTotal(); n != 0 {
			t.Errorf("a KILL under policy no counted %d restarts", n)
		}
	}
}

// TestRestartCommandCountedOnce (the user's report: a RESTART command under
// policy no restarted the task without counting it; under always it was
// counted, but as the policy's restart of a crash, its backoff advanced): a
// RESTART command is an operator's restart, as docker restart, whatever
// the policy. Each one makes exactly one new task, counted once (the restart
// count, vigil_container_restarts_total at the aggregator, one RESTARTED
// event that names the command), its stop is no crash (no restart decision,
// the backoff not advanced), and the policy does not restart the container
// a second time. A second command counts a second restart.
func TestRestartCommandCountedOnce(t *testing.T) {
	r := newCommandRig(t, func(c *Config) { c.StopGrace = 5 * time.Second })
	h := r.h
	ids := map[string]string{"pol-no": "no", "pol-always": "always"}
	for id, policy := range ids {
		h.run(id, map[string]string{"vigil.io/restart-policy": policy}, "sleep")
		h.waitFor(id, "its first task", 30*time.Second, taskStarted)
	}
	decided := func(ev *vigilv1.ContainerEvent) bool {
		return ev.GetType() == vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_RESTART_DECISION
	}
	for id, policy := range ids {
		first := h.waitState(id, "running", 30*time.Second, func(c *vigilv1.Container) bool {
			return c.GetState() == vigilv1.ContainerState_CONTAINER_STATE_RUNNING && c.GetPid() != 0
		})
		pid := first.GetPid()
		for n := uint32(1); n <= 2; n++ {
			cmdID := fmt.Sprintf("restart-%s-%d", id, n)
			r.send(&vigilv1.Command{Id: cmdID, Action: vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART,
				Target: &vigilv1.Target{Namespace: h.ns, ContainerId: id}, Reason: "test"})
			r.atAggregator(cmdID, outcomeIs(vigilv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED))
			c := h.waitState(id, fmt.Sprintf("running a new task, restart %d counted", n), 30*time.Second, func(c *vigilv1.Container) bool {
				return c.GetState() == vigilv1.ContainerState_CONTAINER_STATE_RUNNING && c.GetPid() != 0 && c.GetPid() != pid &&
					c.GetRestartCount() == n && c.GetCounters().GetRestartsTotal() == uint64(n)
			})
			pid = c.GetPid()
			waitUntil(t, 30*time.Second, fmt.Sprintf("vigil_container_restarts_total of %s at %d at the aggregator", id, n), func() bool {
				for _, v := range aggregatorSeries(r.aggHTTP, "vigil_container_restarts_total", `container="`+id+`"`) {
					return v == strconv.Itoa(int(n))
				}
				return false
			})
			ev := h.waitFor(id, "a RESTARTED event naming the command", 30*time.Second, func(ev *vigilv1.ContainerEvent) bool {
				return restarted(ev) && strings.Contains(ev.GetMessage(), cmdID)
			})
			if !strings.Contains(ev.GetMessage(), "on command") {
				t.Errorf("%s: the RESTARTED event says %q; want it to say it was by command", id, ev.GetMessage())
			}
		}
		// The policy has had its chance to restart it again (its stop
		// window is 250 ms, its backoff 200 ms): it did not.
		time.Sleep(2 * time.Second)
		c := h.containerState(id)
		if c.GetPid() != pid || c.GetRestartCount() != 2 || c.GetCounters().GetRestartsTotal() != 2 {
			t.Fatalf("%s (policy %s): pid %d (want %d), restart count %d, restarts_total %d after two commands; want 2 and 2\n%s",
				id, policy, c.GetPid(), pid, c.GetRestartCount(), c.GetCounters().GetRestartsTotal(), h.describe(id))
		}
		if n := h.count(id, restarted); n != 2 {
			t.Errorf("%s (policy %s): %d RESTARTED events for two commands, want 2\n%s", id, policy, n, h.describe(id))
		}
		if n := h.count(id, taskStarted); n != 1 {
			t.Errorf("%s (policy %s): %d tasks started outside the commands, want only the first\n%s", id, policy, n, h.describe(id))
		}
		if n := h.count(id, exited); n != 2 {
			t.Errorf("%s (policy %s): %d exits for two commands, want 2\n%s", id, policy, n, h.describe(id))
		}
		if n := h.count(id, decided); n != 0 {
			t.Errorf("%s (policy %s): the policy decided on a command's stop\n%s", id, policy, h.describe(id))
		}
		if b := c.GetBackoff(); b.GetConsecutiveRestarts() != 0 || b.GetCurrentDelay().AsDuration() != 0 || b.GetCrashLooping() {
			t.Errorf("%s (policy %s): the commands advanced the backoff: %v", id, policy, b)
		}
	}
}

// TestRestartCommandCutByAgentDeath: an agent that dies in the middle of a
// RESTART command, after the task's stop and its delete and before the new
// task, leaves the container to its restart policy: the next agent does not
// carry the command out again (it reports it failed), and the policy
// decides as on a failed restart: "always" brings the container back (a
// restart of the policy, counted once), "no" leaves it down.
func TestRestartCommandCutByAgentDeath(t *testing.T) {
	r := newCommandRig(t, func(c *Config) { c.ShutdownGrace = 0 })
	h := r.h
	ids := map[string]string{"cut-always": "always", "cut-no": "no"}
	pids := map[string]uint32{}
	for id, policy := range ids {
		h.run(id, map[string]string{"vigil.io/restart-policy": policy}, "sleep")
		pids[id] = h.waitState(id, "running", 30*time.Second, func(c *vigilv1.Container) bool {
			return c.GetState() == vigilv1.ContainerState_CONTAINER_STATE_RUNNING && c.GetPid() != 0
		}).GetPid()
	}
	cl := h.env.Client(t)
	ctx := namespaces.WithNamespace(context.Background(), h.ns)
	// As far as the dying agent got: the task killed and deleted, no new
	// one. Then its action hangs until the agent stops (with no grace: its
	// loop is gone by then, and the action's end changes nothing).
	h.stop()
	h.hook = func(a *Agent) {
		a.commandHook = func(actx context.Context, cmd *vigilv1.Command, _ func(context.Context) error) error {
			cont, err := cl.LoadContainer(ctx, cmd.GetTarget().GetContainerId())
			if err != nil {
				return err
			}
			tk, err := cont.Task(ctx, nil)
			if err != nil {
				return err
			}
			exited, err := tk.Wait(ctx)
			if err != nil {
				return err
			}
			if err := tk.Kill(ctx, syscall.SIGKILL); err != nil {
				return err
			}
			<-exited
			if _, err := tk.Delete(ctx); err != nil {
				return err
			}
			<-actx.Done()
			return actx.Err()
		}
	}
	h.start(r.restart)
	for id := range ids {
		cmd := &vigilv1.Command{Id: "cut-" + id, Action: vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART,
			Target: &vigilv1.Target{Namespace: h.ns, ContainerId: id}, Reason: "test"}
		r.send(cmd)
		// The stop's exit reached the loop (and the tracker's mark with it).
		h.waitFor(id, "the command's stop seen", 30*time.Second, exited)
	}
	h.stop()
	h.hook = nil
	h.clearEvents()
	h.start(r.restart)

	back := h.waitState("cut-always", "running again, restarted by its policy", 30*time.Second, func(c *vigilv1.Container) bool {
		return c.GetState() == vigilv1.ContainerState_CONTAINER_STATE_RUNNING && c.GetPid() != 0 && c.GetPid() != pids["cut-always"]
	})
	if back.GetRestartCount() != 1 || back.GetCounters().GetRestartsTotal() != 1 {
		t.Errorf("cut-always: restart count %d, restarts_total %d; want the policy's one restart counted once\n%s",
			back.GetRestartCount(), back.GetCounters().GetRestartsTotal(), h.describe("cut-always"))
	}
	for id := range ids {
		r.atAggregator("cut-"+id, outcomeIs(vigilv1.CommandOutcome_COMMAND_OUTCOME_FAILED))
	}
	if c := h.containerState("cut-no"); c.GetState() == vigilv1.ContainerState_CONTAINER_STATE_RUNNING {
		t.Errorf("cut-no (policy no) runs again after a cut RESTART command; want it left down\n%s", h.describe("cut-no"))
	}
	if n := h.count("cut-no", taskStarted) + h.count("cut-no", restarted); n != 0 {
		t.Errorf("cut-no: the next agent carried the cut command out\n%s", h.describe("cut-no"))
	}
	if n := h.count("cut-always", restarted); n != 1 {
		t.Errorf("cut-always: %d RESTARTED events after the cut, want 1\n%s", n, h.describe("cut-always"))
	}
}
