package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/restart"
	"github.com/vigilhq/vigil/internal/runtime"
	"github.com/vigilhq/vigil/internal/statedir"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// onRuntimeEvent applies one containerd lifecycle event.
func (a *Agent) onRuntimeEvent(ctx context.Context, ev runtime.Event) {
	switch ev.Type {
	case runtime.EventUnavailable, runtime.EventAvailable:
		if ev.Type == runtime.EventAvailable {
			a.inventoryLoaded = true // the inventory's events came before this one
			a.recordBoot()           // kicks the flusher: one write for every container found
			held := a.heldCommands
			a.heldCommands = nil
			defer func() {
				for _, cmd := range held {
					a.onCommand(ctx, cmd)
				}
			}()
		}
		a.log.Info("containerd "+ev.Type.String(), "version", a.rt.Version())
		a.sendNodeStatus()
		return
	}
	if ev.Container == nil {
		return
	}
	c := *ev.Container
	key := c.Key()

	if ev.Type == runtime.EventRemoved {
		a.removeContainer(key, ev)
		return
	}
	t, isNew := a.upsert(c)
	now := ev.Time
	if now.IsZero() {
		now = a.now()
	}

	switch ev.Type {
	case runtime.EventAdded:
		if isNew && !t.announced {
			// Once per container, not once per agent run: the state dir
			// remembers that it was announced.
			a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_ADDED, "container added", nil, nil)
			a.markAnnounced(t)
		}
		if c.State == runtime.StateRunning || c.State == runtime.StatePaused {
			if isNew {
				a.checkUnseenRestart(t)
			}
			a.onStarted(ctx, t, now, false)
		} else if c.State == runtime.StateStopped && c.LastExit != nil {
			// Exited while we were not watching (agent down or containerd
			// resync): count it once and decide as for a live exit.
			a.countRestartMadeAway(t, c.LastExit.At)
			a.onExited(ctx, t, *c.LastExit, false)
		} else if c.State == runtime.StateCreated {
			a.onFoundWithoutTask(ctx, t)
		}
	case runtime.EventStarted:
		a.onStarted(ctx, t, now, true)
	case runtime.EventExited:
		exit := ev.Exit
		if exit == nil {
			exit = c.LastExit
		}
		if exit != nil {
			a.onExited(ctx, t, *exit, ev.Leftover)
		}
	case runtime.EventOOM:
		a.onOOM(t)
	case runtime.EventPaused, runtime.EventResumed:
		// A frozen task cannot answer probes: that is an operator's pause,
		// not a failure. Probing waits, and starts again from "starting".
		if decidePause(ev.Type == runtime.EventPaused) {
			a.startProbing(t)
		} else {
			a.stopProbing(t)
		}
		a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_STATE_CHANGED, "task "+ev.Type.String(), nil, nil)
	case runtime.EventTaskDeleted:
		a.onTaskDeleted(t, ev.Leftover)
	}
}

// upsert records the runtime's view of a container, creating its tracked
// state (policy, health config, restart tracker restored from the state dir)
// on first sight, and reparsing them when its labels changed.
func (a *Agent) upsert(c runtime.Container) (*tracked, bool) {
	a.mu.Lock()
	t, ok := a.containers[c.Key()]
	if ok {
		labelsChanged := !sameLabels(t.c.Labels, c.Labels)
		t.c = c
		t.showLastExit()
		if labelsChanged {
			a.configure(t)
		}
		a.mu.Unlock()
		return t, false
	}
	a.mu.Unlock()

	// A new one: its restart state comes back from the state dir (or starts
	// fresh) before anyone else can see it.
	t = &tracked{c: c, identity: identity(&c)}
	a.configure(t)
	var saved json.RawMessage
	a.store.View(func(tx statedir.Tx) {
		if r, ok := tx.LookupContainer(c.Key().String()); ok {
			saved = r.Restart
			t.announced = r.Announced
			if r.LastExit != nil {
				e := exitFromRecord(r.LastExit)
				t.lastExit = &e
			}
		}
	})
	if len(saved) > 0 {
		if err := json.Unmarshal(saved, &t.tracker.State); err != nil {
			a.log.Warn("restart state unreadable, starting fresh", "container", c.ID, "namespace", c.Namespace, "err", err)
		}
	}
	t.showLastExit()
	a.mu.Lock()
	a.containers[c.Key()] = t
	a.mu.Unlock()
	a.touchCounters(t)
	return t, true
}

// showLastExit completes the runtime's view of a container whose exited
// task containerd no longer has (deleted, and listed anew by this agent run
// as created without an exit): it is reported stopped, with the last exit
// the agent saw, as it was before the agent restarted. Called with a.mu
// held, or before t is published.
func (t *tracked) showLastExit() {
	if t.c.State != runtime.StateCreated || t.c.Pid != 0 || t.c.LastExit != nil || t.lastExit == nil || t.tracker.State.Running {
		return
	}
	e := *t.lastExit
	t.c.State, t.c.LastExit = runtime.StateStopped, &e
}

// configure parses the container's labels (and image healthcheck) into its
// restart policy and health config. Called with a.mu held, or before t is
// published.
func (a *Agent) configure(t *tracked) {
	var err error
	t.labelErrors = nil
	rejected := func(what string, err error) {
		a.log.Warn(what, "container", t.c.ID, "namespace", t.c.Namespace, "err", err)
		t.labelErrors = append(t.labelErrors, what+": "+err.Error())
	}
	if t.healthCfg, err = a.healthConfig(&t.c); err != nil {
		rejected("health check labels rejected; container is not probed", err)
	}
	if t.policy, err = restart.Parse(t.c.Labels, a.backoffDefaults(), t.healthCfg != nil); err != nil {
		rejected("restart labels rejected; container runs with policy no", err)
	}
	if _, errs := parseStopSpec(&t.c, a.cfg.StopGrace); len(errs) > 0 {
		rejected("stop signal or timeout rejected; the container is stopped with SIGTERM and the agent's stop grace", errors.Join(errs...))
	}
	managedBy := ""
	if t.c.Manager != runtime.ManagerVigil {
		managedBy = t.c.Manager.String()
	}
	if t.tracker == nil {
		t.tracker = restart.NewTracker(t.policy, managedBy)
	} else {
		t.tracker.Policy = t.policy
		t.tracker.ManagedBy = managedBy
	}
}

func (a *Agent) backoffDefaults() restart.Backoff {
	b := restart.DefaultBackoff()
	b.Initial = a.cfg.BackoffInitial
	b.Max = a.cfg.BackoffMax
	b.ResetAfter = a.cfg.BackoffReset
	return b
}

func sameLabels(x, y map[string]string) bool {
	if len(x) != len(y) {
		return false
	}
	for k, v := range x {
		if y[k] != v {
			return false
		}
	}
	return true
}

// onStarted handles a task start: the restart tracker learns it (a start
// the policy scheduled, or a RESTART command made, counts as a restart:
// decideStart), probing and network watching begin.
func (a *Agent) onStarted(ctx context.Context, t *tracked, at time.Time, live bool) {
	startedAt := t.c.StartedAt
	if startedAt.IsZero() {
		startedAt = at
	}
	dec := decideStart(a.view(t), startedAt, live)
	restarted := dec.Restarted
	a.mu.Lock()
	t.tracker.State = dec.Tracker.State
	commandID := ""
	if dec.ByCommand {
		commandID, t.commandRestart = t.commandRestart, ""
	}
	t.expectDelete = false
	t.resume = false
	t.createRetries = 0
	t.unavailableRetries = 0
	t.shimLostRetries = 0
	if t.timer != nil && !t.tracker.State.Pending {
		t.timer.Stop()
		t.timer = nil
	}
	a.mu.Unlock()
	a.save(t, func(tx statedir.Tx, _ *statedir.ContainerRecord) {
		if restarted {
			tx.Counters(t.identity).Restarts++
		}
	})
	if restarted && !dec.ByCommand {
		if e := t.c.LastExit; e != nil && !e.At.IsZero() && startedAt.After(e.At) {
			a.self.restartLag.Observe(startedAt.Sub(e.At).Seconds())
		}
	}

	if t.c.State != runtime.StatePaused {
		a.startProbing(t)
	}
	a.attachNetwork(t)

	if !live {
		return
	}
	switch {
	case dec.ByCommand:
		a.log.Info("container restarted", "container", t.c.ID, "namespace", t.c.Namespace, "restart_count", dec.Tracker.State.RestartCount,
			"by", "command", "command_id", commandID)
		a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_RESTARTED,
			fmt.Sprintf("restarted by vigil on command %s (restart %d)", commandID, dec.Tracker.State.RestartCount), nil, nil)
	case restarted:
		a.log.Info("container restarted", "container", t.c.ID, "namespace", t.c.Namespace, "restart_count", dec.Tracker.State.RestartCount,
			"by", "policy")
		a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_RESTARTED,
			fmt.Sprintf("restarted by vigil (restart %d)", dec.Tracker.State.RestartCount), nil, nil)
	case dec.Superseded:
		a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_STATE_CHANGED, "task started (a pending restart was superseded)", nil, nil)
	default:
		a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_STATE_CHANGED, "task started", nil, nil)
	}
}

// onExited counts an exit exactly once and asks the restart policy what to
// do (decideExit).
func (a *Agent) onExited(ctx context.Context, t *tracked, exit runtime.Exit, leftover bool) {
	v := a.view(t)
	dec := decideExit(v, exit, leftover)
	if dec.Leftover {
		a.log.Info("a leftover task that our restart cleared exited (not the workload's exit); not counted",
			"container", t.c.ID, "namespace", t.c.Namespace, "code", exit.Code)
		return
	}
	a.stopProbing(t)
	if dec.NotARun {
		a.log.Info("the task an interrupted restart of ours created exited without having started; the pending restart replaces it",
			"container", t.c.ID, "namespace", t.c.Namespace, "code", exit.Code, "begun", v.Begun.Format(time.RFC3339Nano))
		return
	}
	// Decide first, then record the exit count and the restart state as
	// one change (the flusher commits it): the restart waits for nothing
	// else.
	a.mu.Lock()
	t.tracker.State = dec.Tracker.State
	e := exit
	t.lastExit = &e
	a.mu.Unlock()
	a.save(t, func(tx statedir.Tx, rec *statedir.ContainerRecord) {
		if !dec.Count {
			return // already counted (replayed after a reconnect or our restart)
		}
		rec.LastExitSeen = exit.At
		rec.LastExit = exitRecord(exit)
		tx.Counters(t.identity).Exits[statedir.ExitKey{Reason: exit.Reason.String(), Code: exit.Code}]++
	})
	d := dec.Decision
	if d.Restarts() {
		a.armRestart(t, d)
	}
	if dec.Count {
		msg := fmt.Sprintf("exited: %s (code %d)", exit.Reason, exit.Code)
		attrs := []any{"container", t.c.ID, "namespace", t.c.Namespace, "code", exit.Code, "reason", exit.Reason.String(), "signal", exit.Signal}
		if dec.ByCommand {
			// Not the workload's failure: no decision to report.
			msg += ", stopped for a RESTART command"
			attrs = append(attrs, "by", "command")
		}
		a.log.Info("container exited", attrs...)
		a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED, msg, exitProto(&exit), nil)
		a.reportDecision(t, d)
		if dec.SignalHint {
			// Most often an operator's `ctr task kill`, which alone is a
			// crash to the policy (Docker's restart manager takes it so too).
			a.log.Info("a container killed by a signal is restarted by its policy; to stop it for good, delete its task (ctr task rm -f ID, nerdctl stop ID: one act, nothing to race) or send a STOP command through Vigil",
				"container", t.c.ID, "namespace", t.c.Namespace, "signal", exit.Signal)
		}
		return
	}
	if d.Restarts() {
		// An exit counted before (this agent's previous run): its restart
		// is still pending, due when it was; nothing new was decided.
		a.log.Info("a restart decided before the agent restarted is still pending", "container", t.c.ID, "namespace", t.c.Namespace,
			"due_in", max(0, d.At.Sub(a.now())).Round(time.Millisecond), "reason", d.Reason)
	}
}

func (a *Agent) onOOM(t *tracked) {
	a.bumpCounters(t, func(c *statedir.Counters) { c.OOMEvents++ })
	a.log.Warn("container OOM-killed a process", "container", t.c.ID, "namespace", t.c.Namespace)
	a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_OOM, "the kernel OOM killer killed a process in the container", nil, nil)
}

// onTaskDeleted applies decideTaskDeleted.
func (a *Agent) onTaskDeleted(t *tracked, leftover bool) {
	v := a.view(t)
	switch decideTaskDeleted(v, leftover) {
	case deleteLeftover:
		a.log.Info("a leftover task that our restart cleared was deleted (not an operator's stop)", "container", t.c.ID, "namespace", t.c.Namespace)
	case deleteOurs:
		// Ours, or an operator's racing our restart: the restart's result
		// says which (restarted, or an explicit stop when the operator's
		// delete came first), so no event is sent for the delete itself.
		a.mu.Lock()
		t.expectDelete = false
		a.mu.Unlock()
		a.log.Debug("task deleted while a restart or stop of ours is in flight", "container", t.c.ID, "namespace", t.c.Namespace)
	case deleteOurRestart:
		a.mu.Lock()
		t.resume = true
		a.mu.Unlock()
		a.log.Info("a task of a restart of ours that has begun was deleted outside its call (the previous run's late delete, or the cleanup of an interrupted create); finishing that restart",
			"container", t.c.ID, "namespace", t.c.Namespace, "begun", v.Begun.Format(time.RFC3339Nano))
		a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_STATE_CHANGED, "task deleted by vigil for a restart", nil, nil)
		if !v.Timer {
			a.armRestart(t, v.Tracker.State.Last)
		}
	case deleteOperatorStop:
		a.explicitStop(t, "the task was deleted by an operator")
	}
}

// explicitStop records an operator's stop: restart policies leave the
// container down until it is started again.
func (a *Agent) explicitStop(t *tracked, why string) {
	a.mu.Lock()
	managed := t.c.Manager == runtime.ManagerVigil && t.policy.Kind != restart.KindNo && t.policy.Kind != 0
	if managed {
		t.tracker.OnExplicitStop(a.now())
		if t.timer != nil {
			t.timer.Stop()
			t.timer = nil
		}
		t.dueWhileBusy = false
		t.resume = false
	}
	a.mu.Unlock()
	if !managed {
		a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_STATE_CHANGED, "task deleted", nil, nil)
		return
	}
	a.persist(t)
	a.log.Info("explicit stop; restart policy suspended until the container is started again", "container", t.c.ID, "namespace", t.c.Namespace, "why", why)
	a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_RESTART_DECISION, "explicit stop: "+why,
		nil, &vigilv1.RestartDecision{Kind: vigilv1.RestartDecisionKind_RESTART_DECISION_KIND_SKIP_EXPLICIT_STOP, Reason: why})
}

func (a *Agent) removeContainer(key container.Key, ev runtime.Event) {
	a.mu.Lock()
	t, ok := a.containers[key]
	if ok {
		if t.timer != nil {
			t.timer.Stop()
			t.timer = nil
		}
		delete(a.containers, key)
		delete(a.lastStats, key)
		if ev.Container != nil {
			t.c = *ev.Container
		}
	}
	a.mu.Unlock()
	if !ok {
		return
	}
	a.stopProbing(t)
	a.detachNetwork(t)
	_ = a.store.UpdateIf(func(tx statedir.Tx) bool {
		tx.DeleteContainer(key.String())
		tx.Counters(t.identity).LastSeen = a.now()
		return false
	})
	a.kickFlush()
	a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_REMOVED, "container removed", nil, nil)
}

// applyDecision carries out a restart decision: arm (or re-arm) the
// container's one timer, record and report.
func (a *Agent) applyDecision(t *tracked, d restart.Decision) {
	if d.Restarts() {
		a.armRestart(t, d)
	}
	a.persist(t)
	a.reportDecision(t, d)
}

// armRestart (re)arms the container's one restart timer for a decision.
func (a *Agent) armRestart(t *tracked, d restart.Decision) {
	delay := time.Until(d.At)
	if delay < a.cfg.StopWindow {
		delay = a.cfg.StopWindow
	}
	key := t.c.Key()
	a.mu.Lock()
	if t.timer != nil {
		t.timer.Stop()
	}
	t.timer = time.AfterFunc(delay, func() {
		select {
		case a.due <- key:
		case <-a.done:
		}
	})
	a.mu.Unlock()
}

// reportDecision logs a decision and sends it upstream.
func (a *Agent) reportDecision(t *tracked, d restart.Decision) {
	if d.Kind == 0 {
		return
	}
	// The delay left of a pending restart is to the nanosecond
	// (restart.Tracker.pending); the log reads milliseconds. The event
	// keeps it whole.
	a.log.Info("restart decision", "container", t.c.ID, "namespace", t.c.Namespace, "decision", d.Kind.String(),
		"delay", d.Delay.Round(time.Millisecond), "reason", d.Reason)
	a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_RESTART_DECISION, d.Reason, nil, &vigilv1.RestartDecision{
		Kind:   restartDecisionKindProto(d.Kind),
		Delay:  dur(d.Delay),
		Reason: d.Reason,
	})
}

// onRestartDue starts the restart of a container whose backoff elapsed
// (decideRestartDue), through task control on an action's goroutine.
func (a *Agent) onRestartDue(ctx context.Context, key container.Key) {
	a.mu.RLock()
	t, ok := a.containers[key]
	a.mu.RUnlock()
	if !ok {
		return
	}
	v := a.view(t)
	a.mu.Lock()
	verdict, plan := decideRestartDue(v, t.c.LastExit, a.cfg.StopWindow)
	switch verdict {
	case dueSkip:
		a.mu.Unlock()
		return
	case dueLater:
		// Our stop (before an unhealthy restart), or a command, is still
		// running: restart when it is done.
		t.timer = nil
		t.dueWhileBusy = true
		a.mu.Unlock()
		return
	}
	t.timer = nil
	t.dueWhileBusy = false
	t.inFlight = true
	t.restartFrom = t.tracker.State.RestartCount
	t.expectDelete = true
	stop := a.stopSpecLocked(t)
	output := t.c.Output
	a.mu.Unlock()
	a.runAction(actionResult{kind: actionRestart, key: key, grace: stop.grace}, func(ctx context.Context) error {
		return a.applyRestart(ctx, key, plan, stop, output)
	})
}
