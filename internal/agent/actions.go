package agent

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/runtime"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// actionTimeout bounds one restart, stop or command.
const actionTimeout = 2 * time.Minute

type actionKind int

const (
	actionRestart       actionKind = iota + 1 // a policy restart
	actionUnhealthyStop                       // the kill before an unhealthy restart
	actionCommand                             // a command from the aggregator
)

// actionResult is how slow work reports back to the loop.
type actionResult struct {
	kind    actionKind
	key     runtime.Key
	err     error
	command *vigilv1.Command
	outcome vigilv1.CommandOutcome
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
		actx, cancel := context.WithTimeout(a.work, actionTimeout)
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
		a.finishCommand(res)
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
		if res.err == nil {
			return // the task-start event reports the restart
		}
		if errors.Is(res.err, runtime.ErrTaskGone) {
			// An operator deleted the exited task before we could replace
			// it: that is an explicit stop.
			a.explicitStop(t, "the exited task was deleted by an operator before its restart")
			return
		}
		a.log.Warn("restart failed", "container", res.key.ID, "namespace", res.key.Namespace, "err", res.err)
		a.mu.Lock()
		t.expectDelete = false
		d := t.tracker.OnRestartFailed(res.err.Error(), a.now())
		a.mu.Unlock()
		a.applyDecision(t, d)
	case actionUnhealthyStop:
		if res.err != nil && !errors.Is(res.err, errdefs.ErrNotFound) {
			a.log.Warn("stopping unhealthy container failed", "container", res.key.ID, "namespace", res.key.Namespace, "err", res.err)
		}
	}
}

// onCommand checks a command from the aggregator (duplicate, deadline,
// target, fence) and carries it out.
func (a *Agent) onCommand(ctx context.Context, cmd *vigilv1.Command) {
	if cmd == nil {
		return
	}
	reply := func(o vigilv1.CommandOutcome, msg string) {
		a.finishCommand(actionResult{kind: actionCommand, command: cmd, outcome: o, err: errorIf(o != vigilv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED, msg)})
	}
	done := false
	a.store.View(func(tx Tx) { done = tx.CommandDone(cmd.GetId()) })
	if done {
		reply(vigilv1.CommandOutcome_COMMAND_OUTCOME_DUPLICATE, "command already carried out")
		return
	}
	if dl := cmd.GetDeadline(); dl != nil && a.now().After(dl.AsTime()) {
		reply(vigilv1.CommandOutcome_COMMAND_OUTCOME_EXPIRED, "deadline passed before the agent could start it")
		return
	}
	target := cmd.GetTarget()
	if cmd.GetAction() == vigilv1.RemediationAction_REMEDIATION_ACTION_LINK_UP {
		if a.net == nil {
			reply(vigilv1.CommandOutcome_COMMAND_OUTCOME_FAILED, "network monitoring is disabled on this agent")
			return
		}
		a.runAction(actionResult{kind: actionCommand, command: cmd}, func(ctx context.Context) error {
			return a.net.LinkUp(ctx, target.GetNetnsInode(), target.GetInterface())
		})
		return
	}
	key := runtime.Key{Namespace: target.GetNamespace(), ID: target.GetContainerId()}
	a.mu.Lock()
	t, ok := a.containers[key]
	if !ok {
		a.mu.Unlock()
		reply(vigilv1.CommandOutcome_COMMAND_OUTCOME_NOT_FOUND, fmt.Sprintf("no container %s/%s on this node", key.Namespace, key.ID))
		return
	}
	if f := cmd.GetFence(); f != nil {
		if f.GetContainerId() != "" && f.GetContainerId() != key.ID {
			a.mu.Unlock()
			reply(vigilv1.CommandOutcome_COMMAND_OUTCOME_FENCED, "container id changed since the alert")
			return
		}
		if f.GetHasRestartCount() && f.GetRestartCount() != a.restartCountLocked(t) {
			n := a.restartCountLocked(t)
			a.mu.Unlock()
			reply(vigilv1.CommandOutcome_COMMAND_OUTCOME_FENCED, fmt.Sprintf("restart count is %d, the alert saw %d: it restarted since", n, f.GetRestartCount()))
			return
		}
	}
	vigilOwned := t.c.Manager == runtime.ManagerVigil
	switch cmd.GetAction() {
	case vigilv1.RemediationAction_REMEDIATION_ACTION_STOP:
		// A stop through Vigil is explicit: policies leave it stopped.
		t.tracker.OnExplicitStop(a.now())
		if t.timer != nil {
			t.timer.Stop()
			t.timer = nil
		}
		t.inFlight = true
	case vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART:
		if vigilOwned {
			t.inFlight = true
			t.expectDelete = true
		}
	}
	a.mu.Unlock()
	a.persist(t)

	grace := a.cfg.StopGrace
	a.runAction(actionResult{kind: actionCommand, command: cmd, key: key}, func(ctx context.Context) error {
		switch cmd.GetAction() {
		case vigilv1.RemediationAction_REMEDIATION_ACTION_KILL:
			return a.rt.Kill(ctx, key, syscall.SIGKILL)
		case vigilv1.RemediationAction_REMEDIATION_ACTION_STOP:
			return a.rt.Stop(ctx, key, grace)
		case vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART:
			if !vigilOwned {
				// Never fight the owner: kill the task and let it restart it.
				return a.rt.Kill(ctx, key, syscall.SIGKILL)
			}
			if err := a.rt.Stop(ctx, key, grace); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
				return err
			}
			return a.rt.Restart(ctx, key)
		}
		return fmt.Errorf("action %v is not supported by this agent: %w", cmd.GetAction(), errdefs.ErrInvalid)
	})
}

// finishCommand records a command's outcome (so a redelivery is answered
// as a duplicate) and reports it upstream.
func (a *Agent) finishCommand(res actionResult) {
	cmd := res.command
	outcome := res.outcome
	if outcome == vigilv1.CommandOutcome_COMMAND_OUTCOME_UNSPECIFIED {
		outcome = vigilv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED
		if res.err != nil {
			outcome = vigilv1.CommandOutcome_COMMAND_OUTCOME_FAILED
			if errors.Is(res.err, errdefs.ErrNotFound) {
				outcome = vigilv1.CommandOutcome_COMMAND_OUTCOME_NOT_FOUND
			}
		}
	}
	if res.key.ID != "" {
		a.mu.Lock()
		if t, ok := a.containers[res.key]; ok {
			t.inFlight = false
		}
		a.mu.Unlock()
	}
	msg := ""
	if res.err != nil {
		msg = res.err.Error()
	}
	if outcome != vigilv1.CommandOutcome_COMMAND_OUTCOME_DUPLICATE {
		_ = a.store.Update(func(tx Tx) error {
			tx.MarkCommand(cmd.GetId(), a.now())
			return nil
		})
	}
	a.log.Info("command finished", "id", cmd.GetId(), "action", cmd.GetAction().String(), "outcome", outcome.String(), "detail", msg)
	if a.up != nil {
		a.up.SendCommandResult(&vigilv1.CommandResult{
			CommandId:  cmd.GetId(),
			Outcome:    outcome,
			Message:    msg,
			FinishedAt: timestamppb.New(a.now()),
		})
	}
}

func errorIf(cond bool, msg string) error {
	if !cond {
		return nil
	}
	return errors.New(msg)
}

// restartCountLocked is the restart count reported for a container: ours
// for containers we restart, the kubelet's for its own. Called with a.mu held.
func (a *Agent) restartCountLocked(t *tracked) uint32 {
	if t.c.Manager == runtime.ManagerKubelet && t.c.Pod != nil {
		return t.c.Pod.RestartCount
	}
	return uint32(t.tracker.State.RestartCount)
}
