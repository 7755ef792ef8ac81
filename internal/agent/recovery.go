package agent

import (
	"context"
	"time"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/procstat"
	"github.com/vigilhq/vigil/internal/restart"
	"github.com/vigilhq/vigil/internal/runtime"
	"github.com/vigilhq/vigil/internal/statedir"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// onFoundWithoutTask handles a container found without a started task
// (none, or one created and never started) whose saved restart state says
// it ran or had a restart pending, when the agent is not already at work on
// it:
//   - the agent's previous run had begun that restart (its durable mark) and
//     was killed in the middle: the restart is finished;
//   - the node restarted since the agent last ran (the kernel's boot id
//     changed), and the task was lost with it: a pending restart is carried
//     out, and a task that was running is taken as an exit with code 255,
//     as Docker takes it, for the policy to decide on;
//   - the previous run died in the middle of a RESTART command, after the
//     task's stop and before the new one started: the command is not
//     carried out again, and the policy decides, as on a failed restart;
//   - otherwise, with a restart pending, someone deleted the exited task
//     while the agent was down: an operator's stop, as when it happens live.
func (a *Agent) onFoundWithoutTask(ctx context.Context, t *tracked) {
	v := a.view(t)
	st := v.Tracker.State
	switch decideFound(v, a.runFacts()) {
	case foundResume:
		a.resumeRestart(t, st.Last, "finishing a restart the agent's previous run began and did not end", "begun", v.Begun.Format(time.RFC3339Nano))
	case foundRebootPending:
		a.resumeRestart(t, st.Last, "the node restarted while a restart was pending: carrying it out")
	case foundRebootLost:
		a.mu.Lock()
		t.resume = true // no old task to replace
		a.mu.Unlock()
		at := procstat.BootTime()
		if at.IsZero() {
			at = a.now()
		}
		a.log.Info("the node restarted since the container last ran and its task was lost: taken as an exit with code 255",
			"container", t.c.ID, "namespace", t.c.Namespace, "last_started", st.StartedAt.Format(time.RFC3339))
		a.onExited(ctx, t, runtime.Exit{Code: 255, Reason: runtime.ExitError, At: at}, false)
	case foundDeletedBeforeRestart:
		a.explicitStop(t, "the exited task was deleted while the agent was down, before its restart")
	case foundCommandCut:
		a.log.Warn("the agent's previous run stopped in the middle of a RESTART command (the task stopped, the new one never started); its restart policy decides",
			"container", t.c.ID, "namespace", t.c.Namespace)
		a.restartFailed(t, true, restart.CommandCut)
	case foundExitedAndDeleted:
		// It ran when the agent last looked, and its task is gone: it
		// exited, unseen, and someone deleted the task. The exit is counted
		// (its status went with the task), and the delete is an operator's
		// stop, as when it happens live.
		a.countUnseenExit(t, a.now(), "the task ended and was deleted while the agent was down")
		a.explicitStop(t, "the task ended and was deleted while the agent was down: taken as an operator's stop")
	}
}

// unseenRestartSlack is how far apart two start times of one task may be
// and still be the same run: a start time read from /proc is only accurate
// to about a second.
const unseenRestartSlack = 2 * time.Second

// checkUnseenRestart handles a container found running, at the agent's
// start, with another task than the one the saved state says was running:
// the old task exited (and was replaced by an operator or containerd's
// restart monitor) while the agent was down. That exit is counted once,
// with an unknown status.
func (a *Agent) checkUnseenRestart(t *tracked) {
	v := a.view(t)
	if !decideUnseenRestart(v) {
		return
	}
	st, startedAt := v.Tracker.State, v.StartedAt
	a.countUnseenExit(t, startedAt, "the task that ran when the agent last looked ended while the agent was down, and another started")
	a.log.Info("a task started while the agent was down replaced the one it knew", "container", t.c.ID, "namespace", t.c.Namespace,
		"previous_start", st.StartedAt.Format(time.RFC3339Nano), "start", startedAt.Format(time.RFC3339Nano))
}

// countUnseenExit counts, once, an exit that happened while the agent was
// down and whose status containerd no longer has: reason unknown, code 255
// (Docker's code for an exit it could not see), at the time given (no
// later than the exit could be known). The tracker stops running; what the
// missing task means is the caller's to decide.
func (a *Agent) countUnseenExit(t *tracked, at time.Time, why string) {
	exit := runtime.Exit{Code: 255, Reason: runtime.ExitUnknown, At: at}
	a.mu.Lock()
	t.tracker.OnUnseenExit(at)
	e := exit
	t.lastExit = &e
	a.mu.Unlock()
	counted := false
	a.save(t, func(tx statedir.Tx, rec *statedir.ContainerRecord) {
		if !at.After(rec.LastExitSeen) {
			return
		}
		rec.LastExitSeen = at
		rec.LastExit = exitRecord(exit)
		tx.Counters(t.identity).Exits[statedir.ExitKey{Reason: exit.Reason.String(), Code: exit.Code}]++
		counted = true
	})
	if !counted {
		return
	}
	a.mu.Lock()
	t.showLastExit()
	a.mu.Unlock()
	a.log.Info("container exited while the agent was down; its exit status is gone: counted as unknown (code 255)",
		"container", t.c.ID, "namespace", t.c.Namespace, "why", why)
	a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED,
		"exited while the agent was down: "+why+"; status unknown (code 255)", exitProto(&exit), nil)
}

// countRestartMadeAway counts a restart that the agent's previous run
// carried out just before it was killed, unseen, and whose task has exited
// since (at exitAt): the restart was pending, and marked begun before that
// exit. The exit then gets its own decision instead of repeating the
// pending one, and the restart count stays true.
func (a *Agent) countRestartMadeAway(t *tracked, exitAt time.Time) {
	v := a.view(t)
	if !decideRestartMadeAway(v, exitAt) {
		return // the exit is the old task's: the restart has not happened
	}
	begun := v.Begun
	a.mu.Lock()
	t.tracker.OnStart(begun) // a pending restart's start: counted
	n := t.tracker.State.RestartCount
	a.mu.Unlock()
	a.save(t, func(tx statedir.Tx, _ *statedir.ContainerRecord) { tx.Counters(t.identity).Restarts++ })
	a.log.Info("counted a restart the agent's previous run made before it stopped; that task has exited since",
		"container", t.c.ID, "namespace", t.c.Namespace, "restart_count", n, "begun", begun.Format(time.RFC3339Nano))
}

// resumeRestart arms the pending restart d of t, to be carried out without
// an old task to replace.
func (a *Agent) resumeRestart(t *tracked, d restart.Decision, msg string, attrs ...any) {
	a.mu.Lock()
	t.resume = true
	a.mu.Unlock()
	a.log.Info(msg, append([]any{"container", t.c.ID, "namespace", t.c.Namespace, "created_task_pid", t.c.Pid}, attrs...)...)
	a.armRestart(t, d)
}

// recordBoot writes this boot's id to the state dir once the first
// inventory has been applied (so an agent killed before that still sees the
// reboot at its next start); later containers are not the reboot's.
func (a *Agent) recordBoot() {
	if a.bootRecorded || a.kernelBoot == "" {
		return
	}
	a.store.SetBootID(a.kernelBoot) // in memory, written with the inventory's changes
	a.kickFlush()
	a.bootRecorded, a.rebooted = true, false
}

// markRestartBegun records, before the old task is touched, that
// the container's pending restart is being carried out, with where the old
// task's output goes (out, when known; an earlier mark's otherwise: a
// resumed restart has no old task to read it from). It returns the output
// recorded. It runs on the restart's goroutine; the record's other fields
// are the loop's.
func (a *Agent) markRestartBegun(key container.Key, out runtime.TaskOutput) runtime.TaskOutput {
	now := a.now()
	// In the file before the old task is touched, without waiting for the
	// disk: the mark is for an agent that dies and restarts on this boot
	// (the page cache survives it); after the node restarts, the boot id
	// tells the next agent that every task was lost, mark or not. The
	// flusher makes it durable shortly after.
	defer a.kickFlush()
	if err := a.store.UpdateUnsynced(func(tx statedir.Tx) bool {
		r, ok := tx.LookupContainer(key.String())
		if ok {
			r.RestartBegun = now
			if out != (runtime.TaskOutput{}) {
				r.Output = statedir.TaskOutput(out)
			}
			out = runtime.TaskOutput(r.Output)
		}
		return ok
	}); err != nil {
		a.log.Error("cannot write to the state dir", "container", key.ID, "err", err)
	}
	return out
}
