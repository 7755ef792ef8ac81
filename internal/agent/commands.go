package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/runtime"
	"github.com/vigilhq/vigil/internal/statedir"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// Commands from the aggregator run at most once: the agent checks what it
// may do (commandPolicy), durably marks the command accepted in its state
// dir before it does anything, and records the outcome. A command id seen
// again (a redelivery, or a replay after a crash of either side) is never
// carried out again: its recorded result is reported again; one that an
// earlier run accepted and did not finish (the agent died in the middle)
// is reported as failed, and not retried, since what it did is unknown.

// resultsResentAfter bounds the results the agent reports again at its
// start: those of commands finished within this long (their first report
// may have died in the uplink's memory with the previous run).
const resultsResentAfter = time.Hour

// commandPolicy is what the agent obeys, from its configuration.
type commandPolicy struct {
	// authenticated: the aggregator proved who it is (TLS), or the operator
	// accepted commands without it (AcceptCommands).
	authenticated bool
	// namespaces are the containerd namespaces commands may act in; nil
	// means all.
	namespaces []string
	// hostLinks allows LINK_UP on links that are not a container's.
	hostLinks bool
}

func (a *Agent) commandPolicy() commandPolicy {
	return commandPolicy{
		authenticated: !a.cfg.Insecure || a.cfg.AcceptCommands,
		namespaces:    a.cfg.CommandNamespaces,
		hostLinks:     a.cfg.AllowHostLinkCommands,
	}
}

// commandTarget is what the agent knows of a command's target when it
// decides whether to obey.
type commandTarget struct {
	// namespace is the target container's containerd namespace; for a link
	// command, that of the container whose network namespace holds the
	// link ("" for a host link or a namespace of no known container).
	namespace string
	// found: the container (or, for a link, a container owning the network
	// namespace) is known.
	found bool
	// manager owns the target container.
	manager runtime.Manager
}

// refusal says why the agent refuses action on target, "" when it may go
// on. It decides on who asks, where, and on what: not on the container's
// state (that is the fence's job, and the action's).
func (p commandPolicy) refusal(action vigilv1.RemediationAction, t commandTarget) string {
	if !p.authenticated {
		return "commands are not accepted from an aggregator the agent cannot authenticate (an insecure connection) unless the agent is set to accept commands anyway"
	}
	if action == vigilv1.RemediationAction_REMEDIATION_ACTION_LINK_UP {
		if !t.found {
			if p.hostLinks {
				return ""
			}
			return "the link is not in a container's network namespace, and the agent is not set to allow commands on host links"
		}
		if !p.allows(t.namespace) {
			return fmt.Sprintf("namespace %q is not among the namespaces the agent allows commands in", t.namespace)
		}
		return ""
	}
	if !p.allows(t.namespace) {
		return fmt.Sprintf("namespace %q is not among the namespaces the agent allows commands in", t.namespace)
	}
	if !t.found || t.manager == runtime.ManagerVigil {
		return ""
	}
	switch action {
	case vigilv1.RemediationAction_REMEDIATION_ACTION_KILL, vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART:
		return "" // a RESTART of another manager's container is a kill: its owner restarts it
	}
	return fmt.Sprintf("the container is managed by %s: the agent does no more than kill it (KILL or RESTART), and its owner restarts it", t.manager)
}

func (p commandPolicy) allows(namespace string) bool {
	return p.namespaces == nil || slices.Contains(p.namespaces, namespace)
}

// recoverCommands runs once at start-up, before the loop: commands an
// earlier run accepted and did not finish are finished as failed (never
// carried out again), and the results of recent commands are reported
// again, once the state holds them durably (replyWhenDurable: it does not
// write itself).
func (a *Agent) recoverCommands() {
	now := a.now()
	var interrupted []string
	_ = a.store.UpdateIf(func(tx statedir.Tx) bool {
		tx.Commands(func(id string, r *statedir.CommandRecord) {
			if r.Finished.IsZero() {
				r.Finished = now
				r.Outcome = vigilv1.CommandOutcome_COMMAND_OUTCOME_FAILED.String()
				r.Message = "the agent stopped while carrying out this command; it is not carried out again (check the container's state)"
				interrupted = append(interrupted, id)
			}
		})
		return false
	})
	for _, id := range interrupted {
		a.log.Warn("a command was interrupted by the agent's stop; it is reported failed, not carried out again", "command_id", id)
	}
	var results []*vigilv1.CommandResult
	a.store.View(func(tx statedir.Tx) {
		tx.Commands(func(id string, r *statedir.CommandRecord) {
			if !r.Finished.IsZero() && now.Sub(r.Finished) <= resultsResentAfter {
				results = append(results, commandResult(id, r))
			}
		})
	})
	slices.SortFunc(results, func(x, y *vigilv1.CommandResult) int {
		return x.GetFinishedAt().AsTime().Compare(y.GetFinishedAt().AsTime())
	})
	for _, r := range results {
		a.replyWhenDurable(r)
	}
}

func commandResult(id string, r *statedir.CommandRecord) *vigilv1.CommandResult {
	return &vigilv1.CommandResult{
		CommandId:  id,
		Outcome:    vigilv1.CommandOutcome(vigilv1.CommandOutcome_value[r.Outcome]),
		Message:    r.Message,
		FinishedAt: timestamppb.New(r.Finished),
	}
}

// onCommand checks a command from the aggregator (seen before, deadline,
// who may ask for what, target, fence), marks it accepted durably and
// carries it out.
func (a *Agent) onCommand(ctx context.Context, cmd *vigilv1.Command) {
	if cmd == nil || cmd.GetId() == "" {
		return
	}
	if !a.inventoryLoaded {
		// containerd's first inventory is not applied yet: a container
		// that exists would be answered NOT_FOUND, and that answer, kept
		// in the state dir, given to every redelivery. Held until it is
		// (once per id, at most 1,000: the aggregator delivers again).
		for _, h := range a.heldCommands {
			if h.GetId() == cmd.GetId() {
				return
			}
		}
		if len(a.heldCommands) < 1000 {
			a.heldCommands = append(a.heldCommands, cmd)
		}
		return
	}
	id := cmd.GetId()
	var seen *statedir.CommandRecord
	a.store.View(func(tx statedir.Tx) {
		if r := tx.Command(id); r != nil {
			c := *r
			seen = &c
		}
	})
	if seen != nil {
		if seen.Finished.IsZero() {
			a.log.Info("command delivered again while it is carried out; its result follows", "command_id", id)
			return
		}
		a.log.Info("command delivered again; not carried out again, its result is sent again", "command_id", id, "outcome", seen.Outcome)
		a.replyWhenDurable(commandResult(id, seen))
		return
	}
	reply := func(o vigilv1.CommandOutcome, msg string) {
		a.finishCommand(ctx, actionResult{kind: actionCommand, command: cmd, outcome: o, err: errorIf(o != vigilv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED, msg)})
	}
	target := cmd.GetTarget()
	action := cmd.GetAction()
	in := commandFacts{now: a.now(), isolation: a.isolation(), policy: a.commandPolicy(), networkOn: a.net != nil}
	var t *tracked
	key := container.Key{Namespace: target.GetNamespace(), ID: target.GetContainerId()}
	if action == vigilv1.RemediationAction_REMEDIATION_ACTION_LINK_UP {
		in.target = a.linkTarget(target.GetNetnsInode())
	} else {
		a.mu.RLock()
		var ok bool
		t, ok = a.containers[key]
		in.target = commandTarget{namespace: key.Namespace, found: ok}
		if ok {
			in.target.manager = t.c.Manager
			in.restartCount = a.restartCountLocked(t)
		}
		a.mu.RUnlock()
	}
	d := decideCommand(cmd, key, in)
	if d.isolated {
		a.log.Warn("command refused: this node is isolated", "command_id", id, "reason", in.isolation)
	}
	if !d.accept {
		reply(d.outcome, d.message)
		return
	}
	if action == vigilv1.RemediationAction_REMEDIATION_ACTION_LINK_UP {
		a.acceptCommand(cmd)
		a.runCommand(actionResult{kind: actionCommand, command: cmd}, func(ctx context.Context) error {
			return a.net.LinkUp(ctx, target.GetNetnsInode(), target.GetInterface())
		})
		return
	}
	a.acceptCommand(cmd)

	a.mu.Lock()
	vigilOwned := t.c.Manager == runtime.ManagerVigil
	running := t.c.State == runtime.StateRunning || t.c.State == runtime.StatePaused
	stop := a.stopSpecLocked(t)
	switch action {
	case vigilv1.RemediationAction_REMEDIATION_ACTION_STOP:
		// A stop through Vigil is explicit: policies leave it stopped.
		t.tracker.OnExplicitStop(a.now())
		a.cancelRestartLocked(t)
		t.inFlight = true
	case vigilv1.RemediationAction_REMEDIATION_ACTION_START:
		// An explicit start clears an explicit stop, as docker start does.
		t.tracker.OnExplicitStart(a.now())
		a.cancelRestartLocked(t)
		if !running {
			t.inFlight = true
			t.expectDelete = true
		}
	case vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART:
		if vigilOwned {
			// An operator's restart, as docker restart: its stop is no
			// crash and its start is one restart, whatever the policy
			// (decideExit, decideStart). It replaces a pending restart of
			// the policy, which goes on only if the command fails
			// (decideCommandRestartEnd).
			a.cancelRestartLocked(t)
			t.inFlight = true
			t.expectDelete = true
			t.commandRestart = id
			t.restartFrom = t.tracker.State.RestartCount
		}
	}
	a.mu.Unlock()
	a.persist(t)

	a.runCommand(actionResult{kind: actionCommand, command: cmd, key: key, grace: stop.grace}, func(ctx context.Context) error {
		switch action {
		case vigilv1.RemediationAction_REMEDIATION_ACTION_KILL:
			return a.tasks.Kill(ctx, key, killSignal(cmd))
		case vigilv1.RemediationAction_REMEDIATION_ACTION_STOP:
			return a.tasks.Stop(ctx, key, stop.grace, stop.options()...)
		case vigilv1.RemediationAction_REMEDIATION_ACTION_START:
			if running {
				return nil
			}
			return a.tasks.Restart(ctx, key)
		case vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART:
			if !vigilOwned {
				// Never fight the owner: kill the task and let it restart it.
				return a.tasks.Kill(ctx, key, syscall.SIGKILL)
			}
			if err := a.tasks.Stop(ctx, key, stop.grace, stop.options()...); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
				return err
			}
			return a.tasks.Restart(ctx, key)
		}
		return fmt.Errorf("action %v is not supported by this agent: %w", action, errdefs.ErrInvalid)
	})
}

// commandFacts are what decideCommand reads besides the command: the time,
// the agent's isolation ("" when it is not isolated), its policy, the
// target as the agent knows it (for LINK_UP, the container owning the
// network namespace), its restart count and whether network monitoring
// runs.
type commandFacts struct {
	now          time.Time
	isolation    string
	policy       commandPolicy
	target       commandTarget
	restartCount uint32
	networkOn    bool
}

// commandDecision: accept (mark it accepted and act), or reply at once
// with outcome and message without acting.
type commandDecision struct {
	accept   bool
	outcome  vigilv1.CommandOutcome
	message  string
	isolated bool // refused because the node is isolated (logged)
}

// decideCommand decides on a command not seen before: its deadline, the
// node's isolation, who may ask for what (before whether the container
// exists: a refused namespace learns nothing of its containers), the
// target, the action (and a KILL's signal), the fence. Pure: the caller
// applies it.
func decideCommand(cmd *vigilv1.Command, key container.Key, in commandFacts) commandDecision {
	reply := func(o vigilv1.CommandOutcome, msg string) commandDecision {
		return commandDecision{outcome: o, message: msg}
	}
	if dl := cmd.GetDeadline(); dl != nil && in.now.After(dl.AsTime()) {
		return reply(vigilv1.CommandOutcome_COMMAND_OUTCOME_EXPIRED, "deadline passed before the agent could start it")
	}
	// An isolated agent (its stream down, no gossip peer answering) acts
	// on no remote command: the aggregator that sent it cannot see what
	// follows, and may have given the node up (NodeDown) and acted
	// elsewhere. Commands only arrive over a stream, so what meets this
	// is a command the stream delivered just before it dropped, still
	// queued for the loop. It is refused and its result (REFUSED, kept in
	// the state dir like any outcome) is sent when the stream returns; a
	// redelivery gets that result, and the aggregator decides anew.
	if in.isolation != "" {
		d := reply(vigilv1.CommandOutcome_COMMAND_OUTCOME_REFUSED, "isolated: "+in.isolation)
		d.isolated = true
		return d
	}
	action := cmd.GetAction()
	if why := in.policy.refusal(action, in.target); why != "" {
		return reply(vigilv1.CommandOutcome_COMMAND_OUTCOME_REFUSED, why)
	}
	if action == vigilv1.RemediationAction_REMEDIATION_ACTION_LINK_UP {
		if !in.networkOn {
			return reply(vigilv1.CommandOutcome_COMMAND_OUTCOME_FAILED, "network monitoring is disabled on this agent")
		}
		return commandDecision{accept: true}
	}
	if !in.target.found {
		return reply(vigilv1.CommandOutcome_COMMAND_OUTCOME_NOT_FOUND, fmt.Sprintf("no container %s on this node", key))
	}
	switch action {
	case vigilv1.RemediationAction_REMEDIATION_ACTION_KILL, vigilv1.RemediationAction_REMEDIATION_ACTION_STOP,
		vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART, vigilv1.RemediationAction_REMEDIATION_ACTION_START:
	default:
		return reply(vigilv1.CommandOutcome_COMMAND_OUTCOME_FAILED, fmt.Sprintf("action %v is not supported by this agent", action))
	}
	if action == vigilv1.RemediationAction_REMEDIATION_ACTION_KILL && cmd.GetSignal() > maxSignal {
		return reply(vigilv1.CommandOutcome_COMMAND_OUTCOME_REFUSED,
			fmt.Sprintf("signal %d is not a signal: a KILL takes 1 to %d (0 means SIGKILL)", cmd.GetSignal(), maxSignal))
	}
	if fenced := fenceBroken(cmd.GetFence(), key, in.restartCount); fenced != "" {
		return reply(vigilv1.CommandOutcome_COMMAND_OUTCOME_FENCED, fenced)
	}
	return commandDecision{accept: true}
}

// maxSignal is the highest signal number Linux has (SIGRTMAX).
const maxSignal = 64

// killSignal is the signal a KILL command sends: its Signal, or SIGKILL
// when that is 0 (the protocol's default, as before the field existed).
// decideCommand refuses one above maxSignal. Other actions carry no signal:
// a RESTART of a container another manager owns kills it with SIGKILL.
func killSignal(cmd *vigilv1.Command) syscall.Signal {
	if s := cmd.GetSignal(); s != 0 {
		return syscall.Signal(s)
	}
	return syscall.SIGKILL
}

// commandLogAttrs are the attributes that the command's log lines add to
// its id and action: the signal of a KILL ("SIGTERM"; its number when it
// has no name).
func commandLogAttrs(cmd *vigilv1.Command) []any {
	if cmd.GetAction() != vigilv1.RemediationAction_REMEDIATION_ACTION_KILL {
		return nil
	}
	sig := killSignal(cmd)
	name := unix.SignalName(sig)
	if name == "" {
		name = strconv.Itoa(int(sig))
	}
	return []any{"signal", name}
}

// fenceBroken says why a command's fence no longer holds, "" when it
// holds (or there is none).
func fenceBroken(f *vigilv1.Fence, key container.Key, restartCount uint32) string {
	if f == nil {
		return ""
	}
	if f.GetContainerId() != "" && f.GetContainerId() != key.ID {
		return "container id changed since the alert"
	}
	if f.GetHasRestartCount() && f.GetRestartCount() != restartCount {
		return fmt.Sprintf("restart count is %d, the alert saw %d: it restarted since", restartCount, f.GetRestartCount())
	}
	return ""
}

// linkTarget is the container whose network namespace has inode (0: the
// host's).
func (a *Agent) linkTarget(inode uint64) commandTarget {
	if inode == 0 {
		return commandTarget{}
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	for _, t := range a.containers {
		if t.c.NetNSInode == inode && !t.c.HostNetwork {
			return commandTarget{namespace: t.c.Namespace, found: true, manager: t.c.Manager}
		}
	}
	return commandTarget{}
}

// cancelRestartLocked cancels t's pending restart timer. Called with a.mu
// held.
func (a *Agent) cancelRestartLocked(t *tracked) {
	if t.timer != nil {
		t.timer.Stop()
		t.timer = nil
	}
	t.dueWhileBusy = false
	t.resume = false
}

// acceptCommand marks cmd accepted in the state, at once in memory (a
// redelivery on the loop sees it). It reaches the disk before the command
// acts: runCommand's goroutine flushes the state first, and carries
// nothing out when that fails. So the loop never waits for the disk.
func (a *Agent) acceptCommand(cmd *vigilv1.Command) {
	_ = a.store.UpdateIf(func(tx statedir.Tx) bool {
		tx.AcceptCommand(cmd.GetId(), a.now(), commandDeadline(cmd))
		return false
	})
	a.log.Info("command accepted", append([]any{"command_id", cmd.GetId(), "action", cmd.GetAction().String(),
		"namespace", cmd.GetTarget().GetNamespace(), "container", cmd.GetTarget().GetContainerId(), "reason", cmd.GetReason()},
		commandLogAttrs(cmd)...)...)
}

// commandDeadline is cmd's deadline, zero when it has none.
func commandDeadline(cmd *vigilv1.Command) time.Time {
	if dl := cmd.GetDeadline(); dl != nil {
		return dl.AsTime()
	}
	return time.Time{}
}

// runCommand carries out an accepted command on its own goroutine: it
// makes the acceptance durable first (and does nothing when it cannot),
// then acts (through commandHook when a test set one), then records the
// outcome durably, before the loop reports it: a result reported is never
// replaced by "interrupted" after a crash.
func (a *Agent) runCommand(res actionResult, fn func(context.Context) error) {
	cmd := res.command
	res.recorded = true
	a.runAction(res, func(ctx context.Context) (err error) {
		defer func() {
			o, msg := commandOutcome(vigilv1.CommandOutcome_COMMAND_OUTCOME_UNSPECIFIED, err)
			if werr := a.recordOutcome(cmd, o, msg, true); werr != nil {
				// In memory, and written by a later flush: the result
				// waits for it (finishCommand).
				err = &unrecordedError{err: err}
			}
		}()
		if err := a.store.Flush(); err != nil {
			a.log.Error("cannot record a command's acceptance in the state dir; not carried out", "command_id", cmd.GetId(), "err", err)
			return fmt.Errorf("not carried out: the agent cannot record it in its state dir: %w", err)
		}
		if hook := a.commandHook; hook != nil {
			return hook(ctx, cmd, fn)
		}
		return fn(ctx)
	})
}

// commandOutcome is the outcome of a command that ended with err, unless
// one was decided (not UNSPECIFIED), and its message.
func commandOutcome(decided vigilv1.CommandOutcome, err error) (vigilv1.CommandOutcome, string) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	if decided != vigilv1.CommandOutcome_COMMAND_OUTCOME_UNSPECIFIED {
		return decided, msg
	}
	switch {
	case err == nil:
		return vigilv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED, msg
	case errors.Is(err, errdefs.ErrNotFound):
		return vigilv1.CommandOutcome_COMMAND_OUTCOME_NOT_FOUND, msg
	}
	return vigilv1.CommandOutcome_COMMAND_OUTCOME_FAILED, msg
}

// recordOutcome records a command's outcome in the state: durably (the
// action's goroutine: it returns the write's error, the outcome staying in
// memory for a later write), or in memory (answers the loop gave without
// acting: their reply waits for the flusher, replyWhenDurable).
func (a *Agent) recordOutcome(cmd *vigilv1.Command, o vigilv1.CommandOutcome, msg string, durable bool) error {
	id, now := cmd.GetId(), a.now()
	record := func(tx statedir.Tx) bool {
		r := tx.Command(id)
		if r == nil {
			r = tx.AcceptCommand(id, now, commandDeadline(cmd)) // answered without being carried out
		}
		r.Finished, r.Outcome, r.Message = now, o.String(), msg
		return durable
	}
	err := a.store.UpdateIf(record)
	if err != nil {
		a.log.Error("cannot record a command's outcome in the state dir; its result waits until a write succeeds", "command_id", id, "err", err)
	}
	return err
}

// unrecordedError marks a command's error (nil: it succeeded) whose
// outcome could not be written durably: its result waits for a write that
// succeeds (replyWhenDurable).
type unrecordedError struct{ err error }

func (e *unrecordedError) Error() string {
	if e.err == nil {
		return "succeeded (outcome not yet written)"
	}
	return e.err.Error()
}

func (e *unrecordedError) Unwrap() error { return e.err }

// finishCommand reports a command's outcome upstream (recording it first
// when its action did not). A restart of the container that came due while
// the command was in flight runs now; after a RESTART command of ours,
// decideCommandRestartEnd says whether it does, and whether the policy
// decides on the command's failure.
func (a *Agent) finishCommand(ctx context.Context, res actionResult) {
	cmd := res.command
	durable := res.recorded
	var unrec *unrecordedError
	if errors.As(res.err, &unrec) {
		durable, res.err = false, unrec.err
	}
	outcome, msg := commandOutcome(res.outcome, res.err)
	due := false
	var failed *tracked // a RESTART command's failure, for the policy
	resume := false
	if res.key.ID != "" {
		a.mu.RLock()
		t, ok := a.containers[res.key]
		// A RESTART command of ours (of a container Vigil owns: another
		// manager's was only killed).
		ours := ok && cmd.GetAction() == vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART && t.c.Manager == runtime.ManagerVigil
		var restartFrom uint64
		var dueWhileBusy bool
		if ours {
			restartFrom, dueWhileBusy = t.restartFrom, t.dueWhileBusy
		}
		a.mu.RUnlock()
		var end commandRestartEnd
		if ours {
			end = decideCommandRestartEnd(a.view(t), res.err, restartFrom, dueWhileBusy)
		}
		a.mu.Lock()
		if ok {
			t.inFlight = false
			due = t.dueWhileBusy && !t.tracker.State.ExplicitlyStopped
			if ours {
				if end.Release {
					t.commandRestart = ""
				}
				due = end.RunDue
				if end.RunDue || end.PolicyDecides {
					t.resume = end.Resume
				}
				if end.PolicyDecides {
					failed, resume = t, end.Resume
				}
			}
			t.dueWhileBusy = false
		}
		a.mu.Unlock()
	}
	if !res.recorded {
		_ = a.recordOutcome(cmd, outcome, msg, false)
	}
	a.log.Info("command finished", append([]any{"command_id", cmd.GetId(), "action", cmd.GetAction().String(), "outcome", outcome.String(), "detail", msg},
		commandLogAttrs(cmd)...)...)
	r := &vigilv1.CommandResult{
		CommandId:  cmd.GetId(),
		Outcome:    outcome,
		Message:    msg,
		FinishedAt: timestamppb.New(a.now()),
	}
	if durable {
		a.sendCommandResult(r) // its action wrote the outcome durably
	} else {
		a.replyWhenDurable(r)
	}
	if failed != nil {
		a.log.Warn("a RESTART command failed and left the container down; its restart policy decides", "command_id", cmd.GetId(),
			"container", res.key.ID, "namespace", res.key.Namespace, "err", res.err)
		a.restartFailed(failed, resume, "restart command failed: "+msg)
	}
	if due {
		a.onRestartDue(ctx, res.key)
	}
}

func (a *Agent) sendCommandResult(r *vigilv1.CommandResult) {
	if a.cfg.CommandResultSink != nil {
		a.cfg.CommandResultSink(r)
	}
	if a.reporter != nil {
		if err := a.reporter.SendCommandResult(r); err != nil {
			a.log.Warn("command result not sent upstream", "command_id", r.GetCommandId(), "err", err)
		}
	}
}

func errorIf(cond bool, msg string) error {
	if !cond {
		return nil
	}
	return errors.New(msg)
}
