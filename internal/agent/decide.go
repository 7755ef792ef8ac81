package agent

import (
	"errors"
	"net/netip"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/health"
	"github.com/vigilhq/vigil/internal/restart"
	"github.com/vigilhq/vigil/internal/runtime"
)

// Decide, then apply. Every rule about a container's lifecycle is a pure
// function here: from the agent's domain state of one container (ctrView, a
// copy taken under a.mu with the durable marks the state dir holds) and an
// event, to a decision value that says what to record and what to do. The
// handlers in lifecycle.go and recovery.go take the view, call the function
// and apply its decision: change the tracked state, record it (persistence),
// report it, and hand task control to an action (taskControl, in apply.go).
// It is containerd's restart monitor's change.apply without its sleep loop:
// the loop reacts to events and timers, and never waits.
//
// The decision functions read no clock, no disk and no containerd: they are
// tested row by row in decide_test.go. Each rule that an integration test
// proves against a real containerd has a row there naming that test.

// ctrView is what a decision reads of one container.
type ctrView struct {
	// State, Pid, StartedAt and Manager are the runtime's view of the
	// container as the handler found it (before the event, for an exit).
	State     runtime.State
	Pid       uint32
	StartedAt time.Time
	Manager   runtime.Manager
	// Tracker is a copy of the container's restart tracker: a decision that
	// changes it returns the new one.
	Tracker restart.Tracker
	// Timer: a restart timer is armed. InFlight: a restart, stop or command
	// of ours is running; ExpectDelete: that action deletes the task.
	Timer, InFlight, ExpectDelete bool
	// CommandRestart: a RESTART command of ours is carrying out an
	// operator's restart: the exit its stop causes and the start it makes
	// are the command's (until that start is seen, or the command fails).
	CommandRestart bool
	// Resume: the pending restart finishes an interrupted one.
	Resume bool
	// Begun is the durable mark of the pending restart being carried out
	// (zero when none); LastExitSeen the exit time last counted.
	Begun, LastExitSeen time.Time
	// CreateRetries counts the tries an interrupted create blocked;
	// UnavailableRetries the tries containerd did not answer;
	// ShimLostRetries the tries in a row whose shim was lost, since the
	// container's task last started (never reset by a counted failure).
	CreateRetries, UnavailableRetries, ShimLostRetries int
}

func (v ctrView) vigils() bool { return v.Manager == runtime.ManagerVigil }

// runFacts are what a decision reads of this agent run.
type runFacts struct {
	// Started is when Run began: a mark older than it is a previous run's.
	Started time.Time
	// Rebooted: the node restarted since the agent last ran.
	Rebooted bool
	// Now is the time of the decision.
	Now time.Time
}

// exitDecision is what an exit means.
type exitDecision struct {
	// NotARun: the task that exited never started under Vigil: the task an
	// interrupted restart of ours created (a restart is pending and marked
	// begun, and the tracker saw no start since). Nothing is counted and
	// nothing decided: the pending restart replaces it.
	NotARun bool
	// Leftover: the exit of a task that Restart itself killed as a
	// leftover (runtime.Event.Leftover: the created, never-started task of
	// an interrupted restart, replaced under ResumeInterrupted). Not a
	// workload's exit: nothing is counted or decided.
	Leftover bool
	// Count: a new exit, counted once (the exit time becomes LastExitSeen).
	Count bool
	// ByCommand: the exit of the task a RESTART command stopped: not the
	// workload's failure. The policy decides nothing (Decision is zero) and
	// its backoff, crash-loop state and on-failure count do not advance;
	// the command's own restart follows.
	ByCommand bool
	// Tracker is the restart tracker after the exit; Decision the policy's.
	Tracker  restart.Tracker
	Decision restart.Decision
	// SignalHint: a kill by a signal that the policy restarts (most often
	// an operator's ctr task kill): the log says how to stop for good.
	SignalHint bool
}

// decideExit: an exit is counted once (a replay after a reconnect or an
// agent restart is not: LastExitSeen), and the policy decides on it,
// unless a RESTART command caused it: the policy then decides nothing,
// whatever it is, so that one command makes one restart, and an
// operator's restart is never taken for a crash.
func decideExit(v ctrView, exit runtime.Exit, leftover bool) exitDecision {
	if leftover {
		return exitDecision{Leftover: true, Tracker: v.Tracker}
	}
	count := exit.At.IsZero() || exit.At.After(v.LastExitSeen)
	if v.CommandRestart {
		tr := v.Tracker
		tr.OnCommandStop(exit.At)
		return exitDecision{Count: count, ByCommand: true, Tracker: tr}
	}
	st := v.Tracker.State
	if !st.Running && st.Pending && !v.Begun.IsZero() && exit.At.After(v.Begun) && !st.StartedAt.After(v.Begun) {
		return exitDecision{NotARun: true, Tracker: v.Tracker}
	}
	tr := v.Tracker
	d := tr.OnExit(exit.Code, exit.Reason.String(), exit.At)
	return exitDecision{
		Count:      count,
		Tracker:    tr,
		Decision:   d,
		SignalHint: count && d.Restarts() && exit.Reason == runtime.ExitSignal,
	}
}

// startDecision is what a task start means.
type startDecision struct {
	// Tracker is the restart tracker after the start.
	Tracker restart.Tracker
	// Restarted: the start is a restart by Vigil, counted once (the
	// restart count, restarts_total, a RESTARTED event).
	Restarted bool
	// ByCommand: a RESTART command made it (Restarted too); otherwise
	// a restart is the policy's.
	ByCommand bool
	// Superseded: a restart of the policy was pending and someone else's
	// start came first (an operator's, or a START command): not a restart.
	Superseded bool
}

// decideStart: a task start is a restart when Vigil made it: the start a
// RESTART command makes, whatever the policy, or the start of a restart
// the policy decided (pending). Any other start is an operator's (ctr task
// start, a START command), as `docker start` is: not a restart, and it
// clears an explicit stop and the backoff (restart.Tracker.OnStart). live:
// the start event itself; otherwise a task found running (at start-up or
// after a reconnect), which is the same run when the tracker already has
// it running, whatever clock its start time came from.
func decideStart(v ctrView, startedAt time.Time, live bool) startDecision {
	tr := v.Tracker
	st := tr.State
	switch {
	case v.CommandRestart, st.CommandStopped && !st.Running:
		// The command's old task still found running (a resync before its
		// stop) is the same start, and changes nothing. A task found
		// running after a RESTART command's stop that the previous run of
		// the agent did not see start (it died in between) is that
		// command's restart, counted once.
		tr.OnCommandRestart(startedAt)
	case live || !st.Running || st.Pending:
		tr.OnStart(startedAt)
	}
	restarted := tr.State.RestartCount > st.RestartCount
	return startDecision{
		Tracker:    tr,
		Restarted:  restarted,
		ByCommand:  restarted && v.CommandRestart,
		Superseded: !restarted && st.Pending,
	}
}

// commandRestartEnd is what the end of a RESTART command of ours means.
type commandRestartEnd struct {
	// RunDue: run the restart that came due while the command was in
	// flight (onRestartDue decides on it).
	RunDue bool
	// PolicyDecides: the command failed and left the container down with
	// nothing pending: its failure is a failed restart, and the policy
	// decides (restart.Tracker.OnRestartFailed): policy no leaves it down,
	// always tries again with its backoff.
	PolicyDecides bool
	// Resume: the restart that follows (RunDue or PolicyDecides) requires
	// no old task: the command's failed restart deleted it.
	Resume bool
	// Release: the next exit and start are no longer the command's (it
	// failed). One that worked keeps them until its start is seen: its
	// result may reach the loop before its events (their channels are
	// not ordered with each other), and its stop's exit and its start
	// must still be the command's.
	Release bool
}

// decideCommandRestartEnd: a RESTART command of ours ended with err;
// restartFrom is the restart count when it was accepted, dueWhileBusy
// whether a restart came due while it ran.
//
// It succeeded: a restart that came due meanwhile is a new one only when
// the command's task has started since (its exit decided it); otherwise it
// is the restart the command replaced, and running it would make two
// restarts of one command. The command's start, if not seen yet, is still
// the command's when it comes.
//
// It failed: a restart of the policy that was pending when the command
// came (cancelled by it) goes on; a container the command left down with
// nothing pending (its stop was seen, its restart failed) is the policy's
// to decide on, as a failed restart; a task still running (the stop failed;
// or its exit, still on its way, is then the policy's) needs nothing.
func decideCommandRestartEnd(v ctrView, err error, restartFrom uint64, dueWhileBusy bool) commandRestartEnd {
	st := v.Tracker.State
	if err == nil {
		return commandRestartEnd{RunDue: dueWhileBusy && st.RestartCount > restartFrom}
	}
	resume := pastOldTaskDelete(err)
	switch {
	case st.Pending:
		return commandRestartEnd{RunDue: true, Resume: resume, Release: true}
	case !st.Running:
		return commandRestartEnd{PolicyDecides: true, Resume: resume, Release: true}
	}
	return commandRestartEnd{RunDue: dueWhileBusy, Release: true}
}

// deleteVerdict is what a task's delete means.
type deleteVerdict int

const (
	// deleteOurs: our restart or stop in flight deleted it (or an
	// operator's racing it: the action's result says). Nothing is done.
	deleteOurs deleteVerdict = iota + 1
	// deleteOurRestart: the delete of a restart of ours carried out outside
	// an action (the previous run's late delete, or the cleanup of a create
	// it interrupted): the restart is finished (armed when it is not).
	deleteOurRestart
	// deleteOperatorStop: someone else deleted the task: an explicit stop.
	deleteOperatorStop
	// deleteLeftover: Restart itself deleted a leftover in its way
	// (runtime.Event.Leftover): not anyone's stop. Nothing is done.
	deleteLeftover
)

// decideTaskDeleted: a task deleted by someone other than us, after it
// ran, is an operator's stop (docker stop, ctr task rm): policies leave it
// down. A restart of ours that has begun (its durable mark) and has not
// started its task since owns any delete of the container's task: the
// previous run's delete that landed late, or containerd's cleanup of a
// create that run interrupted; taking those for an operator's stop left
// containers down.
func decideTaskDeleted(v ctrView, leftover bool) deleteVerdict {
	if leftover {
		return deleteLeftover
	}
	if v.ExpectDelete || v.InFlight {
		return deleteOurs
	}
	st := v.Tracker.State
	if st.Pending && !v.Begun.IsZero() && !st.ExplicitlyStopped && !st.StartedAt.After(v.Begun) {
		return deleteOurRestart
	}
	return deleteOperatorStop
}

// foundVerdict is what a container found at start-up without a started
// task means.
type foundVerdict int

const (
	foundNothing foundVerdict = iota
	// foundResume: the previous run began the pending restart (its mark)
	// and died in the middle: the restart is finished.
	foundResume
	// foundRebootPending: the node restarted with a restart pending: it is
	// carried out.
	foundRebootPending
	// foundRebootLost: the node restarted and took the running task with
	// it: an exit with code 255 at boot time, for the policy to decide on.
	foundRebootLost
	// foundDeletedBeforeRestart: an operator deleted the exited task while
	// the agent was down, before its restart: an explicit stop.
	foundDeletedBeforeRestart
	// foundExitedAndDeleted: it ran, and its task exited and was deleted
	// while the agent was down: the exit is counted (unknown, 255) and the
	// delete is an operator's stop.
	foundExitedAndDeleted
	// foundCommandCut: the previous run died in the middle of an
	// operator's restart (a RESTART command), after its stop and before
	// its start (the old task deleted, the new one perhaps created): the
	// command is not carried out again, and the policy decides, as on a
	// failed restart.
	foundCommandCut
)

// decideFound: a container found without a started task (none, or one
// created and never started) whose saved restart state says it ran or had
// a restart pending, when the agent is not already at work on it.
func decideFound(v ctrView, r runFacts) foundVerdict {
	st := v.Tracker.State
	if !v.vigils() || v.InFlight || v.Timer || st.ExplicitlyStopped || (!st.Pending && !st.Running && !st.CommandStopped) {
		return foundNothing
	}
	lost := r.Rebooted && v.Pid == 0
	switch {
	case st.CommandStopped:
		// Before the pending cases: a restart of the policy pending when
		// the command came is the command's to replace, not a sign that
		// an operator deleted the task.
		return foundCommandCut
	case st.Pending && !v.Begun.IsZero():
		return foundResume
	case st.Pending && lost:
		return foundRebootPending
	case st.Running && lost:
		return foundRebootLost
	case st.Pending && v.Pid == 0:
		return foundDeletedBeforeRestart
	case st.Running && v.Pid == 0:
		return foundExitedAndDeleted
	}
	return foundNothing
}

// decideUnseenRestart: a container found running at start-up with another
// task than the one the saved state says ran (started more than
// unseenRestartSlack later): the old task exited while the agent was down,
// and that exit is counted once.
func decideUnseenRestart(v ctrView) bool {
	st := v.Tracker.State
	return st.Running && !st.Pending && !st.StartedAt.IsZero() && !v.StartedAt.IsZero() && v.StartedAt.Sub(st.StartedAt) > unseenRestartSlack
}

// decideRestartMadeAway: a container found stopped at start-up, with a
// restart pending and marked begun before its task's exit, was restarted by
// the previous run just before it died, and that task has exited since:
// the restart is counted (as started at the mark), and the exit gets its
// own decision.
func decideRestartMadeAway(v ctrView, exitAt time.Time) bool {
	return v.Tracker.State.Pending && !exitAt.IsZero() && !v.Begun.IsZero() && exitAt.After(v.Begun)
}

// dueVerdict is what a restart timer's firing means.
type dueVerdict int

const (
	dueSkip  dueVerdict = iota + 1 // no restart pending any more, stopped, or a RESTART command replaces it
	dueLater                       // an action of ours runs: when it ends
	dueRun                         // carry it out now
)

// restartPlan is how a due restart is carried out.
type restartPlan struct {
	// StopFirst: the task still runs (an unhealthy restart whose kill was
	// not seen yet).
	StopFirst bool
	// Resume: finish an interrupted restart (no old task to require).
	Resume bool
	// MeasureFrom is the exit the restart's overhead is measured from
	// (zero: not measured), Chosen the delay that was chosen.
	MeasureFrom time.Time
	Chosen      time.Duration
}

// decideRestartDue: a restart timer fired.
func decideRestartDue(v ctrView, lastExit *runtime.Exit, stopWindow time.Duration) (dueVerdict, restartPlan) {
	st := v.Tracker.State
	if !st.Pending || st.ExplicitlyStopped || v.CommandRestart {
		// A RESTART command replaces the pending restart (its timer fired
		// before the command cancelled it): its end says whether the
		// pending one goes on (decideCommandRestartEnd).
		return dueSkip, restartPlan{}
	}
	if v.InFlight {
		return dueLater, restartPlan{}
	}
	p := restartPlan{StopFirst: v.State == runtime.StateRunning || v.State == runtime.StatePaused, Resume: v.Resume}
	if lastExit != nil && !lastExit.At.IsZero() && !p.StopFirst && !p.Resume {
		p.MeasureFrom, p.Chosen = lastExit.At, max(st.Last.Delay, stopWindow)
	}
	return dueRun, p
}

// resultVerdict is what a failed restart means.
type resultVerdict int

const (
	resultDone             resultVerdict = iota + 1 // it worked: the start event reports it
	resultRetryCreate                               // an interrupted create blocks it: again, as a resumed restart, off the policy
	resultOperatorStop                              // the exited task was deleted by someone else first
	resultRetryUnavailable                          // containerd did not answer: again, with a capped backoff, off the policy
	resultRetryShimLost                             // the task's shim was lost: again, with a capped backoff, off the policy (shimLostRetryMax times in a row)
	resultFailedShimLost                            // the shim lost more than shimLostRetryMax times in a row: a failure, the policy decides
	resultFailed                                    // a failure like any other: the policy decides
)

// decideRestartResult: the result of a restart action. A create that an
// earlier, interrupted one blocks is tried again (createRetry) without
// counting against the policy, for as long as it takes. A restart that
// failed after deleting the old task (a create that timed out on a loaded
// node, say) is tried next (resume) as a resumed one, which requires no old
// task and replaces a task that the failed create may still have made. (It required the old task, failed
// with ErrTaskGone and took its own delete for an operator's stop: the
// container stayed down.)
//
// A restart that containerd did not answer (errdefs.ErrUnavailable) is no
// run of the container: tried again with a capped backoff, off the policy,
// for as long as it takes (containerd coming back ends it). A restart whose
// shim containerd lost (runtime.ErrShimLost, an ErrUnavailable: "ttrpc:
// closed" in the create or start) is tried the same way, but at most
// shimLostRetryMax times in a row before a task starts: past that it is
// counted against the policy (resultFailedShimLost), so that a container
// that always kills its shim is not retried forever unseen.
func decideRestartResult(v ctrView, err error) (verdict resultVerdict, retryIn time.Duration, resume bool) {
	switch {
	case err == nil:
		return resultDone, 0, false
	case createRetry(err, v.CreateRetries) > 0:
		return resultRetryCreate, createRetry(err, v.CreateRetries), true
	case errors.Is(err, runtime.ErrTaskGone):
		return resultOperatorStop, 0, false
	case errors.Is(err, runtime.ErrShimLost):
		// containerd lost the task's shim in the create or start ("ttrpc:
		// closed": the shim died under load in test/crash, and on-failure
		// gave up on a container that never ran). Not a run either: tried
		// again as containerd's silence is, resumed (a task the failed
		// create left is replaced). But a container whose every create
		// kills its shim (a hook, a runtime that crashes on its spec) would
		// be retried forever without counting: after shimLostRetryMax
		// tries in a row without a start, each further one is a failed run
		// of the container and the policy decides (on-failure:N gives up,
		// always backs off to its maximum as for a crash loop).
		resume := v.Resume || (!v.Begun.IsZero() && pastOldTaskDelete(err))
		if v.ShimLostRetries >= shimLostRetryMax {
			return resultFailedShimLost, 0, resume
		}
		return resultRetryShimLost, unavailableRetry(v.ShimLostRetries), resume
	case errors.Is(err, errdefs.ErrUnavailable):
		// containerd did not answer (a call that timed out on a loaded
		// node, a lost connection): not a run of the container, so, like
		// the kubelet (whose restart count counts runs, not failed
		// creates), it does not use up the policy (on-failure:5 gave up
		// after 5 of them under load in test/crash and left containers
		// down). A restart already resumed stays resumed; one that got
		// past the old task's delete becomes one.
		return resultRetryUnavailable, unavailableRetry(v.UnavailableRetries), v.Resume || (!v.Begun.IsZero() && pastOldTaskDelete(err))
	}
	return resultFailed, 0, !v.Begun.IsZero() && pastOldTaskDelete(err)
}

// Retries of a restart containerd did not answer: 1 s, doubling, capped
// at 30 s, for as long as it takes.
const (
	unavailableRetryFirst = time.Second
	unavailableRetryMax   = 30 * time.Second
)

// shimLostRetryMax is how many restarts of a container in a row (with no
// task start between them) whose shim containerd lost are tried again off
// the policy: 1 s, 2 s, 4 s, 8 s and 16 s after each, half a minute in
// all, which rides out a node under load. The count is the agent's (not
// in the state dir): an agent restart starts it again.
const shimLostRetryMax = 5

// unavailableRetry is the wait before the next try of a restart that
// containerd did not answer (or whose shim it lost) tries times in a row.
func unavailableRetry(tries int) time.Duration {
	d := unavailableRetryFirst
	for i := 0; i < tries && d < unavailableRetryMax; i++ {
		d *= 2
	}
	return min(d, unavailableRetryMax)
}

// pastOldTaskDelete says whether a failed Restart got past deleting the old
// task (its rootfs, create or start failed: runtime.ErrAfterDelete). A
// failure before it (or in it: a delete that timed out may not have
// happened) leaves the old task, and an operator's delete racing the
// restart must still read as a stop (TestAgentRestartKeepsCountsAndStops).
func pastOldTaskDelete(err error) bool { return errors.Is(err, runtime.ErrAfterDelete) }

// pauseVerdict: a frozen task cannot answer probes: that is an operator's
// pause, not a failure. Probing waits, and starts again from "starting".
func decidePause(paused bool) (probe bool) { return !paused }

// healthDecision is what a health transition means.
type healthDecision struct {
	// Tracker after the transition; Decision the policy's on unhealthy
	// (zero otherwise).
	Tracker  restart.Tracker
	Decision restart.Decision
	// Stop: kill the task now for the decided restart (not when an action
	// of ours already runs).
	Stop bool
}

// decideUnhealthy: a container that turned unhealthy (by its probes or its
// network) gets the policy's decision; a restart kills the task at once,
// and the restart follows when due.
func decideUnhealthy(v ctrView, at time.Time) healthDecision {
	tr := v.Tracker
	d := tr.OnUnhealthy(at)
	return healthDecision{Tracker: tr, Decision: d, Stop: d.Restarts() && !v.InFlight}
}

// decideHealthy: healthy again (and its network fine): the run counts
// toward resetting the backoff.
func decideHealthy(v ctrView, at time.Time) healthDecision {
	tr := v.Tracker
	tr.OnHealthy(at)
	return healthDecision{Tracker: tr}
}

// crossCheckTarget: the address peers are asked to reach before a failed
// probe makes a container unhealthy (GossipConfig.CrossCheckPeers, issue
// 25), and whether to ask. Only a TCP or HTTP probe of a pod address (the
// probe's address is an IP other than loopback or unspecified) can be
// checked from another node: a probe of 127.0.0.1 inside the container,
// an exec or a gRPC probe, and a container on the host's network are
// judged by the probe alone.
func crossCheckTarget(on bool, kind health.Kind, addr netip.AddrPort, hostNetwork bool) (string, bool) {
	if !on || hostNetwork || (kind != health.KindTCP && kind != health.KindHTTP) {
		return "", false
	}
	ip := addr.Addr()
	if !addr.IsValid() || addr.Port() == 0 || ip.IsLoopback() || ip.IsUnspecified() {
		return "", false
	}
	return addr.String(), true
}

// crossVerdict is what the peers' cross-check of a failed probe means.
type crossVerdict int

const (
	// crossCounts: the failure counts against the container as any failed
	// probe ("pod": peers answered and none reached it; "unknown": no peer
	// answered, or none was asked).
	crossCounts crossVerdict = iota + 1
	// crossNode: a peer reached the pod: this node's network is what is
	// broken. The container is not restarted for it; the failure is
	// reported as the node's.
	crossNode
)

// decideCrossCheck reads the peers' verdict (gossip.CrossResult.Verdict)
// on a failed probe; asked: the cross-check ran (gossip on, a peer alive).
func decideCrossCheck(asked bool, verdict string) crossVerdict {
	if asked && verdict == "node" {
		return crossNode
	}
	return crossCounts
}

// decideHealthBlame: whether the health reported upstream blames the
// container's failing probe on this node's network
// (vigilv1.HealthBlame NODE_NETWORK), so that the aggregator's series and
// remediation do not take it for the container's. Only while the probe's
// own status is unhealthy and its last cross-check blamed the node
// (blamedAt: set on a "node" verdict, zero once the probe passes, the task
// restarts or a recheck no longer blames the node), and not while the
// container's own network makes it unhealthy (netDown: a link down or no
// default route in its namespace is the pod's, not the node's).
func decideHealthBlame(probe health.Status, netDown bool, blamedAt time.Time) bool {
	return probe == health.StatusUnhealthy && !netDown && !blamedAt.IsZero()
}
