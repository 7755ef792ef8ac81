package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/restart"
	"github.com/vigilhq/vigil/internal/runtime"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// actionTimeout bounds one restart, stop or command.
const actionTimeout = 2 * time.Minute

// createRetry is how long to wait before trying again a restart that an
// earlier, interrupted create blocks (tries made so far: tries), 0 when it
// is a failed restart like any other. Neither counts against the policy:
// what blocks it is containerd's leftover of our own restart, not the
// container's failure. A create that was still going on
// (runtime.ErrCreateRaced) shows its task within seconds: every second, 10
// times; a create that containerd still holds past that ("already exists"
// while its Get says NotFound) is tried every 30 s, as a bundle that
// containerd kept (runtime.ErrBundleLeft), which stays until containerd
// restarts: for as long as it takes, so that the container comes back then
// instead of the policy giving up after 10 tries (it used to).
func createRetry(err error, tries int) time.Duration {
	switch {
	case errors.Is(err, runtime.ErrCreateRaced) && tries < 10:
		return time.Second
	case errors.Is(err, runtime.ErrCreateRaced), errors.Is(err, runtime.ErrBundleLeft):
		return 30 * time.Second
	}
	return 0
}

type actionKind int

const (
	actionRestart       actionKind = iota + 1 // a policy restart
	actionUnhealthyStop                       // the kill before an unhealthy restart
	actionCommand                             // a command from the aggregator
	actionCrossCheck                          // peers asked about a failed probe (startCrossCheck)
)

// actionResult is how slow work reports back to the loop.
type actionResult struct {
	kind    actionKind
	key     container.Key
	err     error
	command *vigilv1.Command
	outcome vigilv1.CommandOutcome
	// grace is the stop timeout of a stop the action makes: its deadline
	// is actionTimeout beyond it.
	grace time.Duration
	// recorded: the command's outcome was written to the state dir by its
	// action (runCommand).
	recorded bool
	// cross is a cross-check's outcome (actionCrossCheck).
	cross *crossOutcome
}

// runAction runs fn on its own goroutine (task control takes containerd
// 100-200 ms) and reports its result to the loop. It never blocks the loop.
// Actions run under the agent's work context, not the loop's: a stopping
// agent lets them finish for up to ShutdownGrace (see Run).
func (a *Agent) runAction(res actionResult, fn func(context.Context) error) {
	a.wg.Add(1)
	a.actionsRunning.Add(1)
	go func() {
		defer a.wg.Done()
		defer a.actionsRunning.Add(-1)
		actx, cancel := context.WithTimeout(a.work, actionTimeout+res.grace)
		res.err = fn(actx)
		cancel()
		select {
		case a.actions <- res:
		case <-a.done:
		}
	}()
}

func (a *Agent) onActionResult(ctx context.Context, res actionResult) {
	if res.kind == actionCommand {
		a.finishCommand(ctx, res)
		return
	}
	if res.kind == actionCrossCheck {
		a.finishCrossCheck(ctx, res)
		return
	}
	a.mu.Lock()
	t, ok := a.containers[res.key]
	due := false
	if ok {
		t.inFlight = false
		// A restart that came due while a restart was in flight is a new
		// one when the restarted task has started since (its exit decided
		// it); otherwise it is the restart that just ran.
		due = t.dueWhileBusy && (res.kind != actionRestart || (res.err == nil && t.tracker.State.RestartCount > t.restartFrom))
		t.dueWhileBusy = false
	}
	a.mu.Unlock()
	if !ok {
		return
	}
	if due {
		defer a.onRestartDue(ctx, res.key)
	}
	switch res.kind {
	case actionRestart:
		verdict, retry, resume := decideRestartResult(a.view(t), res.err)
		switch verdict {
		case resultDone:
			return // the task-start event reports the restart
		case resultRetryCreate:
			// What an interrupted restart left in containerd, not a failed
			// run: the same restart is tried again, as a resumed one (a task
			// it finds then, created and never started, is replaced),
			// without counting against the policy.
			d, n := a.retryOffPolicy(t, &t.createRetries, resume, retry)
			log := a.log.Info
			if errors.Is(res.err, runtime.ErrBundleLeft) || n > 10 {
				log = a.log.Error
			}
			log("restart blocked by an earlier, interrupted create in containerd; trying again", "container", res.key.ID, "namespace", res.key.Namespace,
				"attempt", n, "in", retry, "err", res.err)
			a.armRestart(t, d)
			return
		case resultRetryUnavailable:
			d, n := a.retryOffPolicy(t, &t.unavailableRetries, resume, retry)
			a.self.restartUnavailable.Inc()
			a.log.Warn("restart failed: containerd did not answer; trying again, not counted against the restart policy", "container", res.key.ID, "namespace", res.key.Namespace,
				"attempt", n, "in", retry, "resume", resume, "err", res.err)
			a.armRestart(t, d)
			return
		case resultRetryShimLost:
			d, n := a.retryOffPolicy(t, &t.shimLostRetries, resume, retry)
			a.self.restartShimLost.With("retried").Inc()
			a.log.Warn("restart failed: containerd lost the task's shim; trying again, not counted against the restart policy", "container", res.key.ID, "namespace", res.key.Namespace,
				"attempt", n, "of", shimLostRetryMax, "in", retry, "resume", resume, "err", res.err)
			a.armRestart(t, d)
			return
		case resultFailedShimLost:
			// The shim lost again, past the tries it is given: a failed run
			// of the container, which the policy decides on. Its reason
			// (the decision event, the state) says why.
			a.mu.Lock()
			t.shimLostRetries++
			n := t.shimLostRetries
			a.mu.Unlock()
			a.self.restartShimLost.With("counted").Inc()
			a.log.Error("restart failed: containerd lost the task's shim again; counted against the restart policy", "container", res.key.ID, "namespace", res.key.Namespace,
				"in_a_row", n, "err", res.err)
			a.restartFailed(t, resume, fmt.Sprintf("containerd lost the task's shim %d times in a row (counted against the policy after %d): %v", n, shimLostRetryMax, res.err))
			return
		case resultOperatorStop:
			// An operator deleted the exited task before we could replace
			// it: that is an explicit stop.
			a.explicitStop(t, "the exited task was deleted by an operator before its restart")
			return
		}
		a.log.Warn("restart failed", "container", res.key.ID, "namespace", res.key.Namespace, "err", res.err)
		a.restartFailed(t, resume, res.err.Error())
	case actionUnhealthyStop:
		if res.err != nil && !errors.Is(res.err, errdefs.ErrNotFound) {
			a.log.Warn("stopping unhealthy container failed", "container", res.key.ID, "namespace", res.key.Namespace, "err", res.err)
		}
	}
}

// restartCountLocked is the restart count reported for a container: ours
// for containers we restart, the kubelet's for its own. Called with a.mu held.
func (a *Agent) restartCountLocked(t *tracked) uint32 {
	if t.c.Manager == runtime.ManagerKubelet && t.c.Pod != nil {
		return t.c.Pod.RestartCount
	}
	return uint32(t.tracker.State.RestartCount)
}

// retryOffPolicy plans t's restart again in retry, as a resumed one when
// resume, after a try that does not count against the policy (an
// interrupted create, containerd's silence, a lost shim); tries is t's
// counter of such tries in a row. It returns the decision to arm
// (armRestart, after the caller's log line) and the tries so far.
func (a *Agent) retryOffPolicy(t *tracked, tries *int, resume bool, retry time.Duration) (restart.Decision, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	*tries++
	t.resume, t.expectDelete = resume, false
	d := t.tracker.State.Last
	d.At = a.now().Add(retry)
	return d, *tries
}

// restartFailed counts a failed restart of t against its policy, for
// reason, and applies what the policy decides.
func (a *Agent) restartFailed(t *tracked, resume bool, reason string) {
	a.mu.Lock()
	t.expectDelete = false
	t.resume = resume
	t.unavailableRetries = 0
	d := t.tracker.OnRestartFailed(reason, a.now())
	a.mu.Unlock()
	a.applyDecision(t, d)
}
