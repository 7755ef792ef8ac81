package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/health"
	"github.com/vigilhq/vigil/internal/restart"
	"github.com/vigilhq/vigil/internal/runtime"
)

// The decision functions' table tests. Each row names the integration test
// (against a real containerd) that proves the same rule end to end, or
// "table only" for a rule no integration test reaches on demand. The
// mapping, rule by rule:
//
//	decideExit        TestOnFailureRestartsExactlyNTimes, TestOnFailureIgnoresCleanExit,
//	                  TestAlwaysRestartsAfterCleanExit, TestNeverFightsTheKubelet,
//	                  TestUnlessStoppedHonoursExplicitStop, TestAgentRestartKeepsCountsAndStops,
//	                  TestPendingRestartNotDecidedAgain, TestFinishesAnInterruptedRestart ("created")
//	decideTaskDeleted TestUnlessStoppedHonoursExplicitStop, TestOperatorStopRacingRestartNoMisleadingEvent,
//	                  TestLateDeleteOfPreviousRunsRestart, test/crash TestAgentKilledAtRandom
//	decideFound       TestFinishesAnInterruptedRestart ("deleted", "created"), TestRestartCommandCutByAgentDeath, TestNodeRestartLosesTasks,
//	                  TestTaskDeletedWhileAgentDown, TestExitWhileAgentDownCounted, TestAgentRestartKeepsStoppedState
//	decideUnseenRestart   TestExitWhileAgentDownCounted (replaced task)
//	decideRestartMadeAway TestFinishesAnInterruptedRestart ("started")
//	decideRestartDue  TestUnhealthyContainerIsRestarted (stop first), TestRestartDueBeforeResult,
//	                  TestFinishesAnInterruptedRestart (resume), TestStopThenStartCommands (explicit stop)
//	decideRestartResult TestOperatorStopRacingRestartNoMisleadingEvent (task gone), TestShimLostRestartIsNotARun
//	                  (a shim lost: retried off the policy, then counted), table only (create retries,
//	                  containerd unavailable: TestDecideRestartResultUnavailable)
//	decideExit / decideTaskDeleted of a leftover (Event.Leftover): TestDecideLeftoverExitAndDelete,
//	                  table only (runtime's TestRestartClearsLeftoverOnAlreadyExists marks them)
//	decidePause       TestPausedContainerIsNotProbed
//	decideUnhealthy / decideHealthy TestUnhealthyContainerIsRestarted, TestNetworkConditionMakesUnhealthy
//	decideExit / decideStart of a RESTART command (CommandRestart), decideCommandRestartEnd
//	                  TestRestartCommandCountedOnce (policies no and always), TestCommandRunsOnce,
//	                  table rows for on-failure and unless-stopped (TestDecideCommandRestart)
//	decideStart       TestStopThenStartCommands (a START is no restart), TestOnFailureRestartsExactlyNTimes
//	decideCommand     TestCommandRunsOnce, TestCommandNamespacesRefused, TestStopThenStartCommands,
//	                  TestIsolatedAgentRefusesCommands, TestKillCommandSendsItsSignal (a KILL's signal)
//	                  (rows in TestDecideCommand, commands_test.go;
//	                  a command seen before, and one interrupted by a crash, are the state dir's
//	                  records: TestCommandRunsOnce, TestCommandInterruptedNotRepeated)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func tracker(kind restart.Kind, max int, st restart.State) restart.Tracker {
	b := restart.DefaultBackoff()
	b.Initial, b.Max = 100*time.Millisecond, time.Second
	return restart.Tracker{Policy: restart.Policy{Kind: kind, MaxRetries: max, Backoff: b}, State: st}
}

func running(at time.Time) restart.State { return restart.State{Running: true, StartedAt: at} }

// pending is the state after an exit at t0 decided a restart.
func pending(kind restart.Kind) restart.State {
	tr := tracker(kind, 0, running(t0.Add(-time.Minute)))
	tr.OnExit(1, "error", t0)
	return tr.State
}

func TestDecideExit(t *testing.T) {
	exit := func(code uint32, at time.Time) runtime.Exit {
		r := runtime.ExitError
		if code == 0 {
			r = runtime.ExitCompleted
		}
		return runtime.Exit{Code: code, Reason: r, At: at}
	}
	onFailure3 := tracker(restart.KindOnFailure, 3, running(t0.Add(-time.Minute)))
	onFailure3.State.Retries = 3
	kubelet := tracker(restart.KindAlways, 0, running(t0.Add(-time.Minute)))
	kubelet.ManagedBy = "kubelet"
	stopped := tracker(restart.KindUnlessStopped, 0, running(t0.Add(-time.Minute)))
	stopped.State.ExplicitlyStopped = true
	rows := []struct {
		name, proves string
		v            ctrView
		exit         runtime.Exit
		notARun      bool
		count        bool
		kind         restart.DecisionKind
	}{
		{"a failure under on-failure restarts", "TestOnFailureRestartsExactlyNTimes",
			ctrView{Tracker: tracker(restart.KindOnFailure, 3, running(t0.Add(-time.Minute)))}, exit(1, t0), false, true, restart.DecisionRestart},
		{"on-failure:3 gives up after 3 restarts", "TestOnFailureRestartsExactlyNTimes",
			ctrView{Tracker: onFailure3}, exit(1, t0), false, true, restart.DecisionGiveUp},
		{"a clean exit under on-failure is not restarted", "TestOnFailureIgnoresCleanExit",
			ctrView{Tracker: tracker(restart.KindOnFailure, 0, running(t0.Add(-time.Minute)))}, exit(0, t0), false, true, restart.DecisionNone},
		{"always restarts after a clean exit", "TestAlwaysRestartsAfterCleanExit",
			ctrView{Tracker: tracker(restart.KindAlways, 0, running(t0.Add(-time.Minute)))}, exit(0, t0), false, true, restart.DecisionRestart},
		{"the kubelet's container is never restarted", "TestNeverFightsTheKubelet",
			ctrView{Tracker: kubelet, Manager: runtime.ManagerKubelet}, exit(1, t0), false, true, restart.DecisionSkipManaged},
		{"an explicitly stopped container stays down", "TestUnlessStoppedHonoursExplicitStop",
			ctrView{Tracker: stopped}, exit(1, t0), false, true, restart.DecisionSkipExplicitStop},
		{"an exit already counted is not counted again", "TestAgentRestartKeepsCountsAndStops",
			ctrView{Tracker: tracker(restart.KindNo, 0, running(t0.Add(-time.Minute))), LastExitSeen: t0}, exit(1, t0), false, false, restart.DecisionNone},
		{"a pending restart's exit replayed after an agent restart repeats it, uncounted", "TestPendingRestartNotDecidedAgain",
			ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways)), LastExitSeen: t0}, exit(1, t0), false, false, restart.DecisionRestart},
		{"the created task of an interrupted restart exiting is not a run", "TestFinishesAnInterruptedRestart (created), test/crash",
			ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways)), LastExitSeen: t0, Begun: t0.Add(time.Second)}, exit(137, t0.Add(2*time.Second)), true, false, 0},
		{"the old task's exit (before the mark) is not taken for the created task's", "TestFinishesAnInterruptedRestart",
			ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways)), LastExitSeen: t0, Begun: t0.Add(time.Second)}, exit(1, t0), false, false, restart.DecisionRestart},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			before := r.v.Tracker.State
			d := decideExit(r.v, r.exit, false)
			if d.NotARun != r.notARun || d.Count != r.count || d.Decision.Kind != r.kind {
				t.Errorf("%s: got notARun %v count %v decision %v; want %v %v %v", r.proves, d.NotARun, d.Count, d.Decision.Kind, r.notARun, r.count, r.kind)
			}
			if r.v.Tracker.State != before {
				t.Errorf("deciding changed the view's tracker")
			}
		})
	}
}

// TestDecideCommandRestart: a RESTART command is an operator's restart,
// whatever the policy: the exit its stop causes is counted among exits but
// decided by no policy and advances nothing (backoff, crash loop,
// on-failure's count), and the start it makes is one restart, by command.
// TestRestartCommandCountedOnce proves it for policies no and always.
func TestDecideCommandRestart(t *testing.T) {
	// Each policy's state after a crash and its policy restart: one
	// restart in a row, so that what a crash would advance is visible.
	afterOneRestart := func(kind restart.Kind) restart.Tracker {
		tr := tracker(kind, 3, running(t0.Add(-time.Minute)))
		tr.OnExit(1, "error", t0.Add(-30*time.Second))
		tr.OnStart(t0.Add(-29 * time.Second))
		return tr
	}
	stop := runtime.Exit{Code: 143, Reason: runtime.ExitSignal, Signal: "TERM", At: t0}
	startAt := t0.Add(200 * time.Millisecond)
	for _, kind := range []restart.Kind{restart.KindNo, restart.KindOnFailure, restart.KindAlways, restart.KindUnlessStopped} {
		t.Run(kind.String(), func(t *testing.T) {
			before := afterOneRestart(kind)
			if kind == restart.KindNo {
				before = tracker(kind, 0, running(t0.Add(-time.Minute)))
			}
			v := ctrView{Tracker: before, InFlight: true, ExpectDelete: true, CommandRestart: true}
			ex := decideExit(v, stop, false)
			st := ex.Tracker.State
			if !ex.Count || !ex.ByCommand || ex.Decision.Kind != 0 || ex.SignalHint {
				t.Errorf("the command's stop: count %v by command %v decision %v hint %v; want counted, by command, no decision",
					ex.Count, ex.ByCommand, ex.Decision.Kind, ex.SignalHint)
			}
			if st.Running || st.Pending || st.ConsecutiveRestarts != before.State.ConsecutiveRestarts ||
				st.Retries != before.State.Retries || st.CurrentDelay != before.State.CurrentDelay || st.CrashLooping || st.RestartCount != before.State.RestartCount {
				t.Errorf("the command's stop moved the policy: %+v, before %+v", st, before.State)
			}
			v.Tracker = ex.Tracker
			sd := decideStart(v, startAt, true)
			if !sd.Restarted || !sd.ByCommand || sd.Superseded {
				t.Errorf("the command's start: restarted %v by command %v superseded %v; want a restart by command", sd.Restarted, sd.ByCommand, sd.Superseded)
			}
			st = sd.Tracker.State
			if st.RestartCount != before.State.RestartCount+1 || !st.Running || st.Pending ||
				st.ConsecutiveRestarts != before.State.ConsecutiveRestarts || st.CurrentDelay != before.State.CurrentDelay {
				t.Errorf("after the command's start: %+v; want one more restart and the backoff as before (%+v)", st, before.State)
			}
			// Replayed (a resync after a reconnect): the same start, not
			// counted again.
			v.Tracker = sd.Tracker
			if again := decideStart(v, startAt, false); again.Restarted {
				t.Error("the command's start replayed was counted again")
			}
		})
	}
}

func TestDecideStart(t *testing.T) {
	stopped := func(kind restart.Kind) restart.Tracker {
		tr := tracker(kind, 0, running(t0.Add(-time.Minute)))
		tr.OnExplicitStop(t0)
		tr.OnExit(143, "signal", t0)
		return tr
	}
	cmdStopped := func(kind restart.Kind) restart.Tracker {
		tr := tracker(kind, 0, running(t0.Add(-time.Minute)))
		tr.OnCommandStop(t0)
		return tr
	}
	cmdStarted := func(kind restart.Kind) restart.Tracker {
		tr := cmdStopped(kind)
		tr.OnCommandRestart(t0.Add(time.Second))
		return tr
	}
	rows := []struct {
		name, proves string
		v            ctrView
		live         bool
		restarted    bool
		byCommand    bool
		superseded   bool
	}{
		{"the start of a policy's pending restart is a restart", "TestOnFailureRestartsExactlyNTimes",
			ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways))}, true, true, false, false},
		{"a RESTART command's start is a restart under policy no", "TestRestartCommandCountedOnce (no)",
			ctrView{Tracker: stopped(restart.KindNo), CommandRestart: true}, true, true, true, false},
		{"a RESTART command's start replaces a pending restart, counted once", "TestRestartCommandCountedOnce",
			ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways)), CommandRestart: true}, true, true, true, false},
		{"a START command's start (after a STOP) is no restart, as docker start", "TestStopThenStartCommands",
			ctrView{Tracker: stopped(restart.KindAlways), InFlight: true, ExpectDelete: true}, true, false, false, false},
		{"a start while the policy's restart is pending is that restart (an operator's racing it too)", "table only",
			ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways))}, false, true, false, false},
		{"a task found running that the saved state has running is the same run", "TestAgentRestartKeepsCountsAndStops",
			ctrView{Tracker: tracker(restart.KindAlways, 0, running(t0.Add(-time.Hour)))}, false, false, false, false},
		{"a task found running by the next agent after a RESTART command's stop, its start unseen (the agent died): the command's restart, counted once", "table only",
			ctrView{Tracker: cmdStopped(restart.KindAlways)}, false, true, false, false},
		{"... and the same start seen again after that changes nothing", "table only",
			ctrView{Tracker: cmdStarted(restart.KindAlways)}, false, false, false, false},
		{"a RESTART command's old task found running again (a resync before its stop) changes nothing", "table only",
			ctrView{Tracker: tracker(restart.KindAlways, 0, running(t0)), CommandRestart: true}, false, false, false, false},
	}
	for _, r := range rows {
		startedAt := t0.Add(time.Second)
		if !r.live && r.v.Tracker.State.Running && r.v.CommandRestart {
			startedAt = r.v.Tracker.State.StartedAt
		}
		d := decideStart(r.v, startedAt, r.live)
		if d.Restarted != r.restarted || d.ByCommand != r.byCommand || d.Superseded != r.superseded {
			t.Errorf("%s (%s): restarted %v by command %v superseded %v; want %v %v %v", r.name, r.proves,
				d.Restarted, d.ByCommand, d.Superseded, r.restarted, r.byCommand, r.superseded)
		}
	}
}

func TestDecideCommandRestartEnd(t *testing.T) {
	failed := errors.New("create: boom")
	afterDelete := fmt.Errorf("start (%w): boom", runtime.ErrAfterDelete)
	exited := func(kind restart.Kind) restart.Tracker {
		tr := tracker(kind, 0, running(t0.Add(-time.Minute)))
		tr.OnCommandStop(t0)
		return tr
	}
	rows := []struct {
		name, proves string
		v            ctrView
		err          error
		restartFrom  uint64
		dueWhileBusy bool
		want         commandRestartEnd
	}{
		{"it worked: a due restart from before the command's start is the one it replaced", "TestRestartCommandCountedOnce",
			ctrView{Tracker: tracker(restart.KindAlways, 0, running(t0))}, nil, 0, true, commandRestartEnd{}},
		{"it worked, and its task exited since and was decided again: that restart runs", "table only",
			ctrView{Tracker: tracker(restart.KindAlways, 0, restart.State{RestartCount: 1, Pending: true})}, nil, 0, true, commandRestartEnd{RunDue: true}},
		{"it worked before its stop's exit and its start reached the loop: they stay the command's", "TestRestartCommandCountedOnce (flaked before)",
			ctrView{Tracker: tracker(restart.KindAlways, 0, running(t0)), CommandRestart: true}, nil, 0, false, commandRestartEnd{}},
		{"it failed after its stop under always: the policy decides, resumed past the delete", "table only",
			ctrView{Tracker: exited(restart.KindAlways)}, afterDelete, 0, false, commandRestartEnd{PolicyDecides: true, Resume: true, Release: true}},
		{"it failed after its stop under no: the policy decides (and leaves it down)", "table only",
			ctrView{Tracker: exited(restart.KindNo)}, failed, 0, false, commandRestartEnd{PolicyDecides: true, Release: true}},
		{"it failed with a policy restart pending: that restart goes on", "table only",
			ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways))}, failed, 0, false, commandRestartEnd{RunDue: true, Release: true}},
		{"it failed and the task still runs: nothing (its exit, if any, is the policy's)", "table only",
			ctrView{Tracker: tracker(restart.KindAlways, 0, running(t0))}, failed, 0, false, commandRestartEnd{Release: true}},
	}
	for _, r := range rows {
		if got := decideCommandRestartEnd(r.v, r.err, r.restartFrom, r.dueWhileBusy); got != r.want {
			t.Errorf("%s (%s): %+v, want %+v", r.name, r.proves, got, r.want)
		}
	}
}

func TestDecideTaskDeleted(t *testing.T) {
	begun := t0.Add(time.Second)
	rows := []struct {
		name, proves string
		v            ctrView
		want         deleteVerdict
	}{
		{"a delete while it runs is an operator's stop", "TestUnlessStoppedHonoursExplicitStop",
			ctrView{Tracker: tracker(restart.KindUnlessStopped, 0, running(t0))}, deleteOperatorStop},
		{"a delete while our restart is in flight is ours (its result says more)", "TestOperatorStopRacingRestartNoMisleadingEvent",
			ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways)), InFlight: true, ExpectDelete: true}, deleteOurs},
		{"the previous run's delete landing late finishes its restart", "TestLateDeleteOfPreviousRunsRestart",
			ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways)), Begun: begun, Timer: true}, deleteOurRestart},
		{"containerd's cleanup of a create we interrupted, between retries, is ours", "test/crash TestAgentKilledAtRandom",
			ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways)), Begun: begun, Resume: true, CreateRetries: 1}, deleteOurRestart},
		{"a pending restart not begun: the delete of the exited task is an operator's stop", "TestTaskDeletedWhileAgentDown",
			ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways))}, deleteOperatorStop},
	}
	for _, r := range rows {
		if got := decideTaskDeleted(r.v, false); got != r.want {
			t.Errorf("%s (%s): %v, want %v", r.name, r.proves, got, r.want)
		}
	}
}

// A task that Restart itself killed and deleted as a leftover (the created,
// never-started task of an interrupted restart, replaced under
// ResumeInterrupted: runtime.Event.Leftover, TestRestartClearsLeftoverOnAlreadyExists
// in internal/runtime) is neither a workload's exit nor an operator's stop,
// whatever the view says.
func TestDecideLeftoverExitAndDelete(t *testing.T) {
	begun := t0.Add(time.Second)
	onFailure1 := tracker(restart.KindOnFailure, 1, running(t0.Add(-time.Minute)))
	onFailure1.State.Retries = 1
	stopped := tracker(restart.KindUnlessStopped, 0, running(t0.Add(-time.Minute)))
	stopped.State.ExplicitlyStopped = true
	rows := []struct {
		name string
		v    ctrView
	}{
		{"our resumed restart in flight", ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways)), Begun: begun, Resume: true, InFlight: true, ExpectDelete: true}},
		{"a pending restart, the leftover's exit after the mark", ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways)), Begun: begun, Resume: true}},
		// Without the mark, the exit would be counted and the delete taken
		// for an operator's stop: the container left down.
		{"a running tracker, no mark, nothing in flight", ctrView{Tracker: tracker(restart.KindUnlessStopped, 0, running(t0.Add(-time.Minute)))}},
		{"on-failure:1 used up: the exit would give up", ctrView{Tracker: onFailure1}},
		{"explicitly stopped", ctrView{Tracker: stopped}},
	}
	for _, r := range rows {
		before := r.v.Tracker.State
		d := decideExit(r.v, runtime.Exit{Code: 137, Reason: runtime.ExitSignal, At: begun.Add(time.Second)}, true)
		if !d.Leftover || d.Count || d.NotARun || d.Decision.Kind != 0 || d.SignalHint || d.Tracker.State != before {
			t.Errorf("%s: a leftover's exit decided %+v, want nothing counted or decided", r.name, d)
		}
		if got := decideTaskDeleted(r.v, true); got != deleteLeftover {
			t.Errorf("%s: a leftover's delete is %v, want deleteLeftover", r.name, got)
		}
		// The same events unmarked keep their meaning (the rows above).
		if decideExit(r.v, runtime.Exit{Code: 137, Reason: runtime.ExitSignal, At: begun.Add(time.Second)}, false).Leftover || decideTaskDeleted(r.v, false) == deleteLeftover {
			t.Errorf("%s: an unmarked event read as a leftover's", r.name)
		}
	}
}

func TestDecideFound(t *testing.T) {
	run := runFacts{Started: t0.Add(time.Hour), Now: t0.Add(time.Hour)}
	rebooted := run
	rebooted.Rebooted = true
	stopped := pending(restart.KindAlways)
	stopped.Pending, stopped.ExplicitlyStopped = false, true
	cmdStopped := running(t0)
	cmdStopped.Running, cmdStopped.CommandStopped = false, true
	cmdStoppedPending := pending(restart.KindAlways)
	cmdStoppedPending.CommandStopped = true
	rows := []struct {
		name, proves string
		v            ctrView
		r            runFacts
		want         foundVerdict
	}{
		{"a restart begun by the previous run, its old task deleted: finished", "TestFinishesAnInterruptedRestart (deleted)",
			ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways)), Begun: t0}, run, foundResume},
		{"a restart begun by the previous run, its new task created and never started: finished", "TestFinishesAnInterruptedRestart (created)",
			ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways)), Begun: t0, State: runtime.StateCreated, Pid: 42}, run, foundResume},
		{"after a reboot, a pending restart is carried out", "TestNodeRestartLosesTasks",
			ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways))}, rebooted, foundRebootPending},
		{"after a reboot, a running task is lost: an exit", "TestNodeRestartLosesTasks",
			ctrView{Tracker: tracker(restart.KindAlways, 0, running(t0))}, rebooted, foundRebootLost},
		{"after a reboot, an operator's stop stays", "TestNodeRestartLosesTasks",
			ctrView{Tracker: tracker(restart.KindAlways, 0, stopped)}, rebooted, foundNothing},
		{"a pending restart whose exited task was deleted while the agent was down: an operator's stop", "TestTaskDeletedWhileAgentDown",
			ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways))}, run, foundDeletedBeforeRestart},
		{"a running task gone while the agent was down: exit counted, operator's stop", "TestExitWhileAgentDownCounted",
			ctrView{Tracker: tracker(restart.KindAlways, 0, running(t0))}, run, foundExitedAndDeleted},
		{"the previous run died in a RESTART command, after its stop: the policy decides", "TestRestartCommandCutByAgentDeath",
			ctrView{Tracker: tracker(restart.KindAlways, 0, cmdStopped)}, run, foundCommandCut},
		{"... with the command's new task created and never started", "TestRestartCommandCutByAgentDeath",
			ctrView{Tracker: tracker(restart.KindAlways, 0, cmdStopped), State: runtime.StateCreated, Pid: 42}, run, foundCommandCut},
		{"... with a restart of the policy pending when the command came: not an operator's delete", "table only",
			ctrView{Tracker: tracker(restart.KindAlways, 0, cmdStoppedPending)}, run, foundCommandCut},
		{"... and the node rebooted since: the policy decides all the same", "table only",
			ctrView{Tracker: tracker(restart.KindAlways, 0, cmdStopped)}, rebooted, foundCommandCut},
		{"a stopped container with nothing pending: nothing", "TestAgentRestartKeepsStoppedState",
			ctrView{Tracker: tracker(restart.KindAlways, 0, stopped)}, run, foundNothing},
		{"another manager's container: nothing", "TestNeverFightsTheKubelet",
			ctrView{Tracker: tracker(restart.KindAlways, 0, running(t0)), Manager: runtime.ManagerKubelet}, rebooted, foundNothing},
		{"already at work on it (a timer armed): nothing", "table only",
			ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways)), Timer: true}, run, foundNothing},
	}
	for _, r := range rows {
		if got := decideFound(r.v, r.r); got != r.want {
			t.Errorf("%s (%s): %v, want %v", r.name, r.proves, got, r.want)
		}
	}
}

func TestDecideUnseenRestartAndMadeAway(t *testing.T) {
	// TestExitWhileAgentDownCounted: a task replaced while the agent was down.
	v := ctrView{Tracker: tracker(restart.KindNo, 0, running(t0)), StartedAt: t0.Add(time.Minute)}
	if !decideUnseenRestart(v) {
		t.Error("a task started a minute after the saved one is not taken for an unseen restart")
	}
	v.StartedAt = t0.Add(time.Second) // the same task, its start read from /proc
	if decideUnseenRestart(v) {
		t.Error("the same task (start time within the slack) taken for an unseen restart")
	}
	// TestFinishesAnInterruptedRestart ("started"): the restart made away.
	p := ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways)), Begun: t0.Add(time.Second)}
	if !decideRestartMadeAway(p, t0.Add(2*time.Second)) {
		t.Error("an exit after the mark is not taken for the made-away restart's task")
	}
	if decideRestartMadeAway(p, t0) {
		t.Error("the old task's exit (before the mark) taken for a restart made away")
	}
	p.Begun = time.Time{}
	if decideRestartMadeAway(p, t0.Add(2*time.Second)) {
		t.Error("a restart never begun counted as made away")
	}
}

func TestDecideRestartDue(t *testing.T) {
	exit := &runtime.Exit{Code: 1, At: t0}
	stoppedState := pending(restart.KindAlways)
	stoppedState.ExplicitlyStopped = true
	rows := []struct {
		name, proves string
		v            ctrView
		want         dueVerdict
		plan         restartPlan
	}{
		{"a pending restart runs, its overhead measured from the exit", "TestOnFailureRestartsExactlyNTimes",
			ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways)), State: runtime.StateStopped}, dueRun,
			restartPlan{MeasureFrom: t0}}, // the first restart: no delay chosen
		{"an unhealthy restart stops the running task first", "TestUnhealthyContainerIsRestarted",
			ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways)), State: runtime.StateRunning}, dueRun,
			restartPlan{StopFirst: true}},
		{"a resumed restart requires no old task", "TestFinishesAnInterruptedRestart",
			ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways)), Resume: true}, dueRun,
			restartPlan{Resume: true}},
		{"due while an action runs: when it ends", "TestRestartDueBeforeResult",
			ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways)), InFlight: true}, dueLater, restartPlan{}},
		{"stopped explicitly since: skipped", "TestStopThenStartCommands",
			ctrView{Tracker: tracker(restart.KindAlways, 0, stoppedState)}, dueSkip, restartPlan{}},
		{"a RESTART command replaces it (its timer fired before the command cancelled it): skipped", "TestRestartCommandCountedOnce",
			ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways)), InFlight: true, CommandRestart: true}, dueSkip, restartPlan{}},
		{"nothing pending: skipped", "table only",
			ctrView{Tracker: tracker(restart.KindAlways, 0, running(t0))}, dueSkip, restartPlan{}},
	}
	for _, r := range rows {
		got, plan := decideRestartDue(r.v, exit, 0)
		if got != r.want || plan != r.plan {
			t.Errorf("%s (%s): %v %+v, want %v %+v", r.name, r.proves, got, plan, r.want, r.plan)
		}
	}
}

func TestDecideRestartResult(t *testing.T) {
	raced := fmt.Errorf("create: %w", runtime.ErrCreateRaced)
	// A shim lost, as Restart returns it: containerd's answer (test/crash,
	// and runtime's TestRestartShimKilledInCreate) translated at the
	// runtime's edge.
	shimLost := func(call, what, desc string) error {
		return fmt.Errorf("restart ns/c: %s (%w): containerd %s: %w: rpc error: code = Unknown desc = %s", what, runtime.ErrAfterDelete, call, runtime.ErrShimLost, desc)
	}
	lostInCreate := shimLost("task_create", "create task", "failed to create shim task: ttrpc: closed: unknown")
	lostInStart := shimLost("task_start", "start task", "ttrpc: closed: unknown")
	lostBeforeDelete := fmt.Errorf("restart ns/c: containerd task_get: %w: rpc error: code = Unknown desc = ttrpc: closed: unknown", runtime.ErrShimLost)
	for _, r := range []struct {
		name      string
		err       error
		tries     int // CreateRetries
		shimTries int // ShimLostRetries
		resumed   bool
		begun     time.Time
		want      resultVerdict
		retryIn   time.Duration
		resume    bool
	}{
		{"done", nil, 0, 0, false, t0, resultDone, 0, false},
		{"a create raced: again in a second", raced, 0, 0, false, t0, resultRetryCreate, time.Second, true},
		// test/crash: the policy gave up after 10 and left the container
		// down; it keeps trying, every 30 s, off the policy.
		{"a create still raced after 10 tries: every 30 s, never given up", raced, 10, 0, false, t0, resultRetryCreate, 30 * time.Second, true},
		{"a bundle left: every 30 s", fmt.Errorf("x: %w", runtime.ErrBundleLeft), 50, 0, false, t0, resultRetryCreate, 30 * time.Second, true},
		{"the exited task deleted first: an operator's stop (TestOperatorStopRacingRestartNoMisleadingEvent)", fmt.Errorf("x: %w", runtime.ErrTaskGone), 0, 0, false, t0, resultOperatorStop, 0, false},
		{"another failure before the mark: the policy decides, the old task is still there", errors.New("stop before restart: boom"), 0, 0, false, time.Time{}, resultFailed, 0, false},
		// TestBootstrapRenewsDuringExitBurst on a loaded machine: a create
		// timed out after the old task's delete; the next try required it,
		// and the container was taken for stopped by an operator.
		{"a failure after the old task's delete: the policy decides, the next try resumes", fmt.Errorf("restart ns/c: create task (%w): no answer within 10s", runtime.ErrAfterDelete), 0, 0, false, t0, resultFailed, 0, true},
		// TestAgentRestartKeepsCountsAndStops on a loaded machine: the
		// restart's task_get timed out while an operator deleted the task;
		// the next try must still find it gone: an operator's stop.
		{"a failure before the old task's delete: the next try requires it", errors.New("restart ns/c: containerd task_get: no answer within 10s"), 0, 0, false, t0, resultFailed, 0, false},
		// test/crash under load: the create's shim died ("ttrpc: closed"),
		// the policy counted it and on-failure gave up on a container that
		// never ran. TestShimLostRestartIsNotARun.
		{"the shim lost in the create: again in 1 s, off the policy, resumed", lostInCreate, 0, 0, false, t0, resultRetryShimLost, time.Second, true},
		{"the shim lost in the start: the same", lostInStart, 0, 1, false, t0, resultRetryShimLost, 2 * time.Second, true},
		{"the fifth shim lost in a row: 16 s, still off the policy", lostInCreate, 0, 4, false, t0, resultRetryShimLost, 16 * time.Second, true},
		// A container whose every create kills its shim is not retried
		// forever off the policy (TestShimLostRestartIsNotARun, "always").
		{"the sixth in a row: a failed run, the policy decides, resumed", lostInCreate, 0, 5, false, t0, resultFailedShimLost, 0, true},
		{"the twentieth in a row: still counted", lostInStart, 0, 19, false, t0, resultFailedShimLost, 0, true},
		{"the shim lost before the old task's delete: again, requiring it", lostBeforeDelete, 0, 0, false, t0, resultRetryShimLost, time.Second, false},
		{"a resumed restart whose shim was lost early stays resumed", lostBeforeDelete, 0, 2, true, t0, resultRetryShimLost, 4 * time.Second, true},
		// A shim lost wraps errdefs.ErrUnavailable, yet it has its own
		// bound: containerd's silence is retried for as long as it takes.
		{"containerd silent after shim losses: unavailable, never counted", fmt.Errorf("restart ns/c: containerd task_get: no answer: %w", errdefs.ErrUnavailable), 0, 9, false, t0, resultRetryUnavailable, time.Second, false},
	} {
		v := ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways)),
			CreateRetries: r.tries, ShimLostRetries: r.shimTries, Resume: r.resumed, Begun: r.begun}
		got, in, resume := decideRestartResult(v, r.err)
		if got != r.want || in != r.retryIn || resume != r.resume {
			t.Errorf("%s: %v in %v resume %v, want %v in %v resume %v", r.name, got, in, resume, r.want, r.retryIn, r.resume)
		}
	}
	if !errors.Is(lostInCreate, errdefs.ErrUnavailable) {
		t.Error("runtime.ErrShimLost is not an errdefs.ErrUnavailable")
	}
}

// A restart that containerd did not answer is no run of the container: it
// is tried again, 1 s doubling to 30 s, for as long as it takes, never
// counted against the policy (test/crash under load: on-failure:5 gave up
// after 5 create timeouts and left containers down).
func TestDecideRestartResultUnavailable(t *testing.T) {
	hanging := func(call string) error {
		if call == "task_create" {
			return fmt.Errorf("restart ns/c: create task (%w): containerd %s: no answer within 10s (runtime hanging): %w: %w",
				runtime.ErrAfterDelete, call, errdefs.ErrUnavailable, context.DeadlineExceeded)
		}
		return fmt.Errorf("restart ns/c: get task: containerd %s: no answer within 10s (runtime hanging): %w: %w",
			call, errdefs.ErrUnavailable, context.DeadlineExceeded)
	}
	notConnected := fmt.Errorf("restart ns/c: containerd at /run/c.sock not connected: %w", errdefs.ErrUnavailable)
	for _, r := range []struct {
		name    string
		err     error
		tries   int
		begun   time.Time
		resumed bool
		retryIn time.Duration
		resume  bool
	}{
		{"a create that timed out after the old task's delete: again in 1 s, resumed", hanging("task_create"), 0, t0, false, time.Second, true},
		{"the second try: 2 s", hanging("task_create"), 1, t0, false, 2 * time.Second, true},
		{"the fifth: 16 s (on-failure:5 would have given up)", hanging("task_create"), 4, t0, false, 16 * time.Second, true},
		{"the sixth and on: capped at 30 s", hanging("task_create"), 5, t0, false, 30 * time.Second, true},
		{"the hundredth: still 30 s, never given up", hanging("task_create"), 99, t0, false, 30 * time.Second, true},
		// TestAgentRestartKeepsCountsAndStops: an operator's delete racing a
		// restart whose task_get timed out must still read as a stop at
		// the next try, which requires the old task.
		{"a timeout before the old task's delete: again, requiring it", hanging("task_get"), 0, t0, false, time.Second, false},
		{"not connected, before the mark: again, requiring the old task", notConnected, 2, time.Time{}, false, 4 * time.Second, false},
		// A resumed restart (an interrupted one, or one that failed after
		// the delete) that containerd did not answer stays resumed: the
		// old task may be gone.
		{"a resumed restart that timed out early stays resumed", hanging("task_get"), 3, t0, true, 8 * time.Second, true},
		{"a resumed restart not connected stays resumed", notConnected, 0, t0, true, time.Second, true},
	} {
		v := ctrView{Tracker: tracker(restart.KindOnFailure, 5, pending(restart.KindOnFailure)), UnavailableRetries: r.tries, Begun: r.begun, Resume: r.resumed}
		got, in, resume := decideRestartResult(v, r.err)
		if got != resultRetryUnavailable || in != r.retryIn || resume != r.resume {
			t.Errorf("%s: %v in %v resume %v, want %v in %v resume %v", r.name, got, in, resume, resultRetryUnavailable, r.retryIn, r.resume)
		}
	}
	// A create race that also reads as unavailable keeps its own retry.
	raced := fmt.Errorf("create: %w: %w", runtime.ErrCreateRaced, errdefs.ErrUnavailable)
	if got, in, _ := decideRestartResult(ctrView{Tracker: tracker(restart.KindAlways, 0, pending(restart.KindAlways))}, raced); got != resultRetryCreate || in != time.Second {
		t.Errorf("a raced create: %v in %v, want a create retry in 1s", got, in)
	}
}

func TestDecideHealthAndPause(t *testing.T) {
	// TestPausedContainerIsNotProbed.
	if decidePause(true) || !decidePause(false) {
		t.Error("a paused container is probed, or a resumed one is not")
	}
	// TestUnhealthyContainerIsRestarted: restart on unhealthy kills at once.
	tr := tracker(restart.KindAlways, 0, running(t0))
	tr.Policy.RestartOnUnhealthy = true
	d := decideUnhealthy(ctrView{Tracker: tr}, t0.Add(time.Minute))
	if !d.Decision.Restarts() || !d.Stop || !d.Tracker.State.Pending {
		t.Errorf("unhealthy under restart-on-unhealthy: %+v", d)
	}
	// The same while an action of ours runs: decided, no second stop.
	if d := decideUnhealthy(ctrView{Tracker: tr, InFlight: true}, t0.Add(time.Minute)); d.Stop || !d.Decision.Restarts() {
		t.Errorf("unhealthy while in flight: %+v", d)
	}
	tr.Policy.RestartOnUnhealthy = false
	if d := decideUnhealthy(ctrView{Tracker: tr}, t0.Add(time.Minute)); d.Stop || d.Decision.Kind != restart.DecisionNone {
		t.Errorf("unhealthy without restart-on-unhealthy: %+v", d)
	}
	// TestNetworkConditionMakesUnhealthy: healthy again counts toward the
	// backoff's reset.
	if h := decideHealthy(ctrView{Tracker: tr}, t0.Add(time.Minute)); !h.Tracker.State.HealthySince.Equal(t0.Add(time.Minute)) {
		t.Errorf("healthy: %+v", h.Tracker.State)
	}
}

// Issue 25's cross-check: which failed probes peers are asked about, and
// what their verdict does (the integration of the cross-check itself,
// peers reaching an address or not: TestGossipCrossCheck).
func TestDecideCrossCheck(t *testing.T) {
	pod := netip.MustParseAddrPort("10.88.0.7:8080")
	for _, r := range []struct {
		name    string
		on      bool
		kind    health.Kind
		addr    netip.AddrPort
		hostNet bool
		want    string
		ask     bool
	}{
		{"a TCP probe of a pod address", true, health.KindTCP, pod, false, "10.88.0.7:8080", true},
		{"an HTTP probe of a pod address", true, health.KindHTTP, pod, false, "10.88.0.7:8080", true},
		{"an IPv6 pod address", true, health.KindTCP, netip.MustParseAddrPort("[fd00::7]:80"), false, "[fd00::7]:80", true},
		{"off (--gossip-cross-check-peers 0)", false, health.KindTCP, pod, false, "", false},
		{"a probe of 127.0.0.1 inside the container: no peer can reach it", true, health.KindTCP, netip.MustParseAddrPort("127.0.0.1:8080"), false, "", false},
		{"an unspecified address", true, health.KindHTTP, netip.MustParseAddrPort("0.0.0.0:8080"), false, "", false},
		{"an exec probe", true, health.KindExec, netip.AddrPort{}, false, "", false},
		{"a gRPC probe", true, health.KindGRPC, pod, false, "", false},
		{"a container on the host's network", true, health.KindTCP, pod, true, "", false},
	} {
		addr, ask := crossCheckTarget(r.on, r.kind, r.addr, r.hostNet)
		if addr != r.want || ask != r.ask {
			t.Errorf("%s: %q ask %v, want %q ask %v", r.name, addr, ask, r.want, r.ask)
		}
	}
	for _, r := range []struct {
		name    string
		asked   bool
		verdict string
		want    crossVerdict
	}{
		{"a peer reached the pod: this node's network, not counted", true, "node", crossNode},
		{"peers answered, none reached it: the pod is broken, counted", true, "pod", crossCounts},
		{"no peer answered: the probe decides, counted", true, "unknown", crossCounts},
		{"no one asked (gossip down, no peer alive): counted", false, "node", crossCounts},
	} {
		if got := decideCrossCheck(r.asked, r.verdict); got != r.want {
			t.Errorf("%s: %v, want %v", r.name, got, r.want)
		}
	}
}

// The blame a "node" verdict puts on the health sent upstream
// (vigilv1.Health.blame), and what clears it (TestCrossCheckBlamesTheNode
// checks the events the uplink sends).
func TestDecideHealthBlame(t *testing.T) {
	at := t0.Add(time.Minute)
	for _, r := range []struct {
		name     string
		probe    health.Status
		netDown  bool
		blamedAt time.Time
		want     bool
	}{
		{"peers reached the pod of a failing probe: the node's network", health.StatusUnhealthy, false, at, true},
		{"no node verdict (pod, unknown, or not asked): the container's own", health.StatusUnhealthy, false, time.Time{}, false},
		{"a recheck no longer blames the node (cleared): the container's own", health.StatusUnhealthy, false, time.Time{}, false},
		{"the probe passes again: healthy, nothing to blame", health.StatusHealthy, false, at, false},
		{"a new task (restarted): starting, nothing to blame", health.StatusStarting, false, at, false},
		{"its own namespace's link is down: the pod's network, not the node's", health.StatusUnhealthy, true, at, false},
	} {
		if got := decideHealthBlame(r.probe, r.netDown, r.blamedAt); got != r.want {
			t.Errorf("%s: %v, want %v", r.name, got, r.want)
		}
	}
}
