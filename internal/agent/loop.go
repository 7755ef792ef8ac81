package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/network"
	"github.com/vigilhq/vigil/internal/procstat"
	"github.com/vigilhq/vigil/internal/restart"
	"github.com/vigilhq/vigil/internal/runtime"
	"github.com/vigilhq/vigil/internal/statedir"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// loop is the agent's one decision-making goroutine. It never waits on
// containerd, netlink or the disk: actions, sampling (sampler) and the state
// dir's commits (flusher) run on goroutines of their own and post their
// results here; its reads of the state are of memory. (Accepting a command
// still writes the state dir synchronously, on purpose: nothing is done
// before the mark is durable.) It stores the time of each turn for
// /healthz (heartbeat).
func (a *Agent) loop(ctx context.Context, errc <-chan error) error {
	defer close(a.done)
	tick := time.NewTicker(a.cfg.SampleInterval)
	defer tick.Stop()
	prune := time.NewTicker(time.Hour)
	defer prune.Stop()

	events := a.rt.Events()
	healthCh := a.probe.Changes()
	var netEvents <-chan network.Event
	if a.net != nil {
		netEvents = a.net.Events() // closed when the monitor's Run ends
	}
	var commands <-chan *vigilv1.Command
	if a.up != nil {
		commands = a.up.Commands()
	}
	for {
		a.heartbeat.Store(time.Now().UnixNano())
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return err
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			a.onRuntimeEvent(ctx, ev)
		case ch := <-healthCh:
			a.onHealthChange(ctx, ch)
		case key := <-a.due:
			a.onRestartDue(ctx, key)
		case res := <-a.actions:
			a.onActionResult(ctx, res)
		case cmd := <-commands:
			a.onCommand(ctx, cmd)
		case ne, ok := <-netEvents:
			if !ok {
				netEvents = nil // a closed channel would be ready forever
				continue
			}
			a.onNetworkEvent(ne)
		case res := <-a.samples:
			a.onSample(ctx, res)
			a.releaseStartupMemory()
		case <-tick.C:
			a.flushState()
			a.settle()
		case <-prune.C:
			a.pruneStore()
		}
	}
}

func (a *Agent) now() time.Time { return a.nowFunc() }

// releaseStartupMemory hands the start-up burst back to the kernel once:
// after the first sample that follows containerd's first inventory, the
// network namespaces and the cgroup files of every container have been
// read, and the garbage of doing so is gone. Left alone, the runtime's
// background scavenger returns it over minutes; until then it counts in the
// agent's RSS. It costs one garbage collection.
func (a *Agent) releaseStartupMemory() {
	if a.startupReleased || !a.inventoryLoaded {
		return
	}
	a.startupReleased = true
	debug.FreeOSMemory()
}

// sendEvent hands a container event to the event sink and the uplink (when
// there are). It never blocks for long: the uplink buffers.
func (a *Agent) sendEvent(ev *vigilv1.ContainerEvent) {
	if ev.Time == nil {
		ev.Time = timestamppb.New(a.now())
	}
	if a.cfg.EventSink != nil {
		a.cfg.EventSink(ev)
	}
	if a.up != nil {
		if err := a.up.SendContainerEvent(ev); err != nil {
			a.log.Warn("event not sent upstream", "type", ev.GetType().String(), "err", err)
		}
	}
}

// onRuntimeEvent applies one containerd lifecycle event.
func (a *Agent) onRuntimeEvent(ctx context.Context, ev runtime.Event) {
	switch ev.Type {
	case runtime.EventUnavailable, runtime.EventAvailable:
		if ev.Type == runtime.EventAvailable {
			a.inventoryLoaded = true // the inventory's events came before this one
			a.recordBoot()
			a.flushState()
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
			a.onExited(ctx, t, *c.LastExit)
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
			a.onExited(ctx, t, *exit)
		}
	case runtime.EventOOM:
		a.onOOM(t)
	case runtime.EventPaused, runtime.EventResumed:
		// A frozen task cannot answer probes: that is an operator's pause,
		// not a failure. Probing waits, and starts again from "starting".
		if ev.Type == runtime.EventPaused {
			a.stopProbing(t)
		} else {
			a.startProbing(t)
		}
		a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_STATE_CHANGED, "task "+ev.Type.String(), nil, nil)
	case runtime.EventTaskDeleted:
		a.onTaskDeleted(t)
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
		if r, ok := tx.LookupContainer(containerKey(c.Key())); ok {
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

// markAnnounced records that t's ADDED event was sent. It is kept in
// memory and reaches the disk with the next write (flushState after the
// first inventory: one write for every container found).
func (a *Agent) markAnnounced(t *tracked) {
	t.announced = true
	_ = a.store.UpdateIf(func(tx statedir.Tx) bool {
		tx.Container(containerKey(t.c.Key())).Announced = true
		return false
	})
}

// flushState writes what the state holds in memory only, if anything: a
// change kept unwritten on purpose, or one whose write failed (retried so,
// once per sampling interval).
func (a *Agent) flushState() {
	if err := a.store.Flush(); err != nil {
		a.log.Error("cannot write to the state dir; the state is kept in memory and the write retried", "err", err)
	}
}

// configure parses the container's labels (and image healthcheck) into its
// restart policy and health config. Called with a.mu held, or before t is
// published.
func (a *Agent) configure(t *tracked) {
	var err error
	if t.healthCfg, err = a.healthConfig(&t.c); err != nil {
		a.log.Warn("health check labels rejected; container is not probed", "container", t.c.ID, "namespace", t.c.Namespace, "err", err)
	}
	if t.policy, err = restart.Parse(t.c.Labels, a.backoffDefaults(), t.healthCfg != nil); err != nil {
		a.log.Warn("restart labels rejected; container runs with policy no", "container", t.c.ID, "namespace", t.c.Namespace, "err", err)
	}
	if _, errs := parseStopSpec(&t.c, a.cfg.StopGrace); len(errs) > 0 {
		a.log.Warn("stop signal or timeout rejected; the container is stopped with SIGTERM and --stop-grace", "container", t.c.ID, "namespace", t.c.Namespace, "err", errors.Join(errs...))
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

// onStarted handles a task start: the restart tracker learns it (a start it
// scheduled counts as a restart), probing and network watching begin.
func (a *Agent) onStarted(ctx context.Context, t *tracked, at time.Time, live bool) {
	startedAt := t.c.StartedAt
	if startedAt.IsZero() {
		startedAt = at
	}
	a.mu.Lock()
	wasPending := t.tracker.State.Pending
	before := t.tracker.State.RestartCount
	if live || !t.tracker.State.Running || wasPending {
		// A task found running at start-up while the saved state says it
		// was running is the same run, whatever clock its start time came
		// from; only a start we did not see is counted.
		t.tracker.OnStart(startedAt)
	}
	restarted := t.tracker.State.RestartCount > before
	t.expectDelete = false
	t.resume = false
	t.createRetries = 0
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
	if restarted {
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
	case restarted:
		a.log.Info("container restarted", "container", t.c.ID, "namespace", t.c.Namespace, "restart_count", t.tracker.State.RestartCount)
		a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_RESTARTED,
			fmt.Sprintf("restarted by vigil (restart %d)", t.tracker.State.RestartCount), nil, nil)
	case wasPending:
		a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_STATE_CHANGED, "task started (a pending restart was superseded)", nil, nil)
	default:
		a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_STATE_CHANGED, "task started", nil, nil)
	}
}

// onExited counts an exit exactly once and asks the restart policy what to
// do.
func (a *Agent) onExited(ctx context.Context, t *tracked, exit runtime.Exit) {
	a.stopProbing(t)
	// Decide first, then write the exit count and the restart state in one
	// durable write: the restart waits for nothing else.
	a.mu.Lock()
	d := t.tracker.OnExit(exit.Code, exit.Reason.String(), exit.At)
	a.mu.Unlock()
	counted := false
	a.save(t, func(tx statedir.Tx, rec *statedir.ContainerRecord) {
		if !exit.At.IsZero() && !exit.At.After(rec.LastExitSeen) {
			return // already counted (replayed after a reconnect or our restart)
		}
		rec.LastExitSeen = exit.At
		rec.LastExit = exitRecord(exit)
		tx.Counters(t.identity).Exits[statedir.ExitKey{Reason: exit.Reason.String(), Code: exit.Code}]++
		counted = true
	})
	a.mu.Lock()
	e := exit
	t.lastExit = &e
	a.mu.Unlock()
	if d.Restarts() {
		a.armRestart(t, d)
	}
	if counted {
		a.log.Info("container exited", "container", t.c.ID, "namespace", t.c.Namespace,
			"code", exit.Code, "reason", exit.Reason.String(), "signal", exit.Signal)
		a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED,
			fmt.Sprintf("exited: %s (code %d)", exit.Reason, exit.Code), exitProto(&exit), nil)
		a.reportDecision(t, d)
		if d.Restarts() && exit.Reason == runtime.ExitSignal {
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
			"due_in", max(0, time.Until(d.At)).Round(time.Millisecond), "reason", d.Reason)
	}
}

func (a *Agent) onOOM(t *tracked) {
	a.bumpCounters(t, func(c *statedir.Counters) { c.OOMEvents++ })
	a.log.Warn("container OOM-killed a process", "container", t.c.ID, "namespace", t.c.Namespace)
	a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_OOM, "the kernel OOM killer killed a process in the container", nil, nil)
}

// onTaskDeleted: a task deleted by someone other than us, after it ran, is
// an operator's stop (docker stop / ctr task rm): policies leave it down.
func (a *Agent) onTaskDeleted(t *tracked) {
	a.mu.Lock()
	if t.expectDelete || t.inFlight {
		// Ours, or an operator's racing our restart: the restart's result
		// says which (restarted, or an explicit stop when the operator's
		// delete came first), so no event is sent for the delete itself.
		t.expectDelete = false
		a.mu.Unlock()
		a.log.Debug("task deleted while a restart or stop of ours is in flight", "container", t.c.ID, "namespace", t.c.Namespace)
		return
	}
	pending := t.tracker.State.Pending
	a.mu.Unlock()
	if pending {
		// The delete of a restart that the agent's previous run began
		// (marked before this run started) and did not see through: its
		// call reached containerd and completed after this run listed the
		// task. Ours, not an operator's: the restart is finished.
		if begun := a.restartBegun(t); !begun.IsZero() && begun.Before(a.started) {
			a.mu.Lock()
			t.resume = true
			armed := t.timer != nil
			d := t.tracker.State.Last
			a.mu.Unlock()
			a.log.Info("the previous run's restart deleted the task late; finishing that restart", "container", t.c.ID, "namespace", t.c.Namespace,
				"begun", begun.Format(time.RFC3339Nano))
			a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_STATE_CHANGED, "task deleted by vigil for a restart", nil, nil)
			if !armed {
				a.armRestart(t, d)
			}
			return
		}
	}
	a.explicitStop(t, "the task was deleted by an operator")
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

func (a *Agent) removeContainer(key runtime.Key, ev runtime.Event) {
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
		tx.DeleteContainer(containerKey(key))
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
	a.log.Info("restart decision", "container", t.c.ID, "namespace", t.c.Namespace, "decision", d.Kind.String(), "delay", d.Delay, "reason", d.Reason)
	a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_RESTART_DECISION, d.Reason, nil, &vigilv1.RestartDecision{
		Kind:   vigilv1.RestartDecisionKind(d.Kind),
		Delay:  dur(d.Delay),
		Reason: d.Reason,
	})
}

// onRestartDue starts the restart of a container whose backoff elapsed.
func (a *Agent) onRestartDue(ctx context.Context, key runtime.Key) {
	a.mu.Lock()
	t, ok := a.containers[key]
	if !ok || !t.tracker.State.Pending || t.tracker.State.ExplicitlyStopped {
		a.mu.Unlock()
		return
	}
	t.timer = nil
	if t.inFlight {
		// Our stop (before an unhealthy restart) is still running: restart
		// when it is done.
		t.dueWhileBusy = true
		a.mu.Unlock()
		return
	}
	t.dueWhileBusy = false
	t.inFlight = true
	t.restartFrom = t.tracker.State.RestartCount
	running := t.c.State == runtime.StateRunning || t.c.State == runtime.StatePaused
	stop := a.stopSpecLocked(t)
	t.expectDelete = true
	resume := t.resume
	output := t.c.Output
	// The overhead runs from the exit to the call that replaces the task,
	// less the delay chosen; only for a live exit, not a resumed restart.
	var exitAt time.Time
	var chosen time.Duration
	if e := t.c.LastExit; e != nil && !e.At.IsZero() && !running && !resume {
		exitAt, chosen = e.At, max(t.tracker.State.Last.Delay, a.cfg.StopWindow)
	}
	a.mu.Unlock()
	a.runAction(actionResult{kind: actionRestart, key: key, grace: stop.grace}, func(ctx context.Context) error {
		if running {
			// An unhealthy restart whose kill has not been seen yet: stop
			// first.
			if err := a.rt.Stop(ctx, key, stop.grace, stop.options()...); err != nil {
				return fmt.Errorf("stop before restart: %w", err)
			}
		}
		saved := a.markRestartBegun(key, output)
		if !exitAt.IsZero() {
			if over := a.now().Sub(exitAt) - chosen; over >= 0 {
				a.self.restartOverhead.Observe(over.Seconds())
			}
		}
		opts := []runtime.RestartOption{runtime.RequireTask()}
		if resume {
			// The old task may be gone, and with it where its output went:
			// the mark's record of it says.
			opts = []runtime.RestartOption{runtime.ResumeInterrupted(), runtime.PreviousOutput(saved)}
		}
		replace := func(ctx context.Context) error {
			start := time.Now()
			err := a.rt.Restart(ctx, key, opts...)
			if err == nil {
				a.self.restartHist.Observe(time.Since(start).Seconds())
			}
			return err
		}
		if a.restartHook != nil {
			return a.restartHook(ctx, key, replace)
		}
		return replace(ctx)
	})
}

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
//   - otherwise, with a restart pending, someone deleted the exited task
//     while the agent was down: an operator's stop, as when it happens live.
func (a *Agent) onFoundWithoutTask(ctx context.Context, t *tracked) {
	a.mu.RLock()
	ours := t.c.Manager == runtime.ManagerVigil && !t.inFlight && t.timer == nil
	st := t.tracker.State
	a.mu.RUnlock()
	if !ours || st.ExplicitlyStopped || (!st.Pending && !st.Running) {
		return
	}
	begun := a.restartBegun(t)
	lost := a.rebooted && t.c.Pid == 0
	switch {
	case st.Pending && !begun.IsZero():
		a.resumeRestart(t, st.Last, "finishing a restart the agent's previous run began and did not end", "begun", begun.Format(time.RFC3339Nano))
	case st.Pending && lost:
		a.resumeRestart(t, st.Last, "the node restarted while a restart was pending: carrying it out")
	case st.Running && lost:
		a.mu.Lock()
		t.resume = true // no old task to replace
		a.mu.Unlock()
		at := procstat.BootTime()
		if at.IsZero() {
			at = a.now()
		}
		a.log.Info("the node restarted since the container last ran and its task was lost: taken as an exit with code 255",
			"container", t.c.ID, "namespace", t.c.Namespace, "last_started", st.StartedAt.Format(time.RFC3339))
		a.onExited(ctx, t, runtime.Exit{Code: 255, Reason: runtime.ExitError, At: at})
	case st.Pending && t.c.Pid == 0:
		a.explicitStop(t, "the exited task was deleted while the agent was down, before its restart")
	case st.Running && t.c.Pid == 0:
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
	a.mu.RLock()
	st := t.tracker.State
	startedAt := t.c.StartedAt
	a.mu.RUnlock()
	if !st.Running || st.Pending || st.StartedAt.IsZero() || startedAt.IsZero() || startedAt.Sub(st.StartedAt) <= unseenRestartSlack {
		return
	}
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
	a.mu.RLock()
	pending := t.tracker.State.Pending
	a.mu.RUnlock()
	if !pending || exitAt.IsZero() {
		return
	}
	begun := a.restartBegun(t)
	if begun.IsZero() || !exitAt.After(begun) {
		return // the exit is the old task's: the restart has not happened
	}
	a.mu.Lock()
	t.tracker.OnStart(begun) // a pending restart's start: counted
	n := t.tracker.State.RestartCount
	a.mu.Unlock()
	a.save(t, func(tx statedir.Tx, _ *statedir.ContainerRecord) { tx.Counters(t.identity).Restarts++ })
	a.log.Info("counted a restart the agent's previous run made before it stopped; that task has exited since",
		"container", t.c.ID, "namespace", t.c.Namespace, "restart_count", n, "begun", begun.Format(time.RFC3339Nano))
}

// restartBegun is the durable mark of t's restart in progress, zero when
// there is none.
func (a *Agent) restartBegun(t *tracked) time.Time {
	var begun time.Time
	a.store.View(func(tx statedir.Tx) {
		if r, ok := tx.LookupContainer(containerKey(t.c.Key())); ok {
			begun = r.RestartBegun
		}
	})
	return begun
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
	if err := a.store.SetBootID(a.kernelBoot); err != nil {
		a.log.Error("cannot write to the state dir", "err", err)
		return
	}
	a.bootRecorded, a.rebooted = true, false
}

// markRestartBegun records, before the old task is touched, that
// the container's pending restart is being carried out, with where the old
// task's output goes (out, when known; an earlier mark's otherwise: a
// resumed restart has no old task to read it from). It returns the output
// recorded. It runs on the restart's goroutine; the record's other fields
// are the loop's.
func (a *Agent) markRestartBegun(key runtime.Key, out runtime.TaskOutput) runtime.TaskOutput {
	now := a.now()
	// In the file before the old task is touched, without waiting for the
	// disk: the mark is for an agent that dies and restarts on this boot
	// (the page cache survives it); after the node restarts, the boot id
	// tells the next agent that every task was lost, mark or not. The
	// flusher makes it durable shortly after.
	defer a.kickFlush()
	if err := a.store.UpdateUnsynced(func(tx statedir.Tx) bool {
		r, ok := tx.LookupContainer(containerKey(key))
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

// persist writes the container's restart state to the state dir.
func (a *Agent) persist(t *tracked) { a.save(t, nil) }

// save records the container's restart state, and whatever fn changes along
// with it (counters, the exit bookkeeping), as one change, and has the
// flusher commit it (a group commit: see flusher). It does not wait for the
// disk. It runs on the loop goroutine, which alone writes t.c.
//
// Counting an exit exactly once does not need the count on disk before the
// loop goes on: until it is, containerd still has the exited task, and an
// agent that died in between counts the exit again from it, to the same
// total. What removes that evidence waits for the disk: a restart writes
// its begun mark (with every change before it) before it deletes the task.
func (a *Agent) save(t *tracked, fn func(tx statedir.Tx, rec *statedir.ContainerRecord)) {
	a.mu.RLock()
	state, err := json.Marshal(&t.tracker.State)
	pending := t.tracker.State.Pending
	a.mu.RUnlock()
	if err != nil {
		a.log.Error("encode restart state", "container", t.c.ID, "err", err)
		return
	}
	_ = a.store.UpdateIf(func(tx statedir.Tx) bool {
		rec := tx.Container(containerKey(t.c.Key()))
		rec.Restart = state
		if !pending {
			rec.RestartBegun, rec.Output = time.Time{}, statedir.TaskOutput{}
		}
		if fn != nil {
			fn(tx, rec)
		}
		tx.Counters(t.identity).LastSeen = a.now()
		return false
	})
	a.kickFlush()
}

// commitDelay is how long the flusher waits after the first change before
// it writes: the changes of a burst (exits of many containers at once) made
// meanwhile share its fsyncs, and a restart's begun mark, written at once by
// the restart, usually carries the exit's change before the flusher does.
const commitDelay = 10 * time.Millisecond

// kickFlush tells the flusher that the state holds changes to commit. It
// never blocks.
func (a *Agent) kickFlush() {
	select {
	case a.flushKick <- struct{}{}:
	default: // a commit is already due; it carries these changes too
	}
}

// flusher commits the state's changes (Store.Flush) commitDelay after they
// are made, off the loop, so that the loop never waits for the disk. A
// failed write is retried at the next change and every sampling interval
// (flushState); what is left when the agent stops is written by the
// store's Close.
func (a *Agent) flusher(ctx context.Context) error {
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.flushKick:
		}
		t.Reset(commitDelay)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		a.flushState()
	}
}

// touchCounters marks the identity as live and, for kubelet containers,
// folds the kubelet's restart count into the lifetime restarts. Only the
// latter is written through at once: a start-up that finds hundreds of
// containers must not rewrite the state file once per container for a
// LastSeen that the next write (or the hourly prune) carries anyway.
func (a *Agent) touchCounters(t *tracked) {
	if err := a.store.UpdateIf(func(tx statedir.Tx) bool {
		c := tx.Counters(t.identity)
		c.LastSeen = a.now()
		if t.c.Pod == nil || t.c.Pod.Sandbox || t.c.Manager != runtime.ManagerKubelet {
			return false
		}
		n := t.c.Pod.RestartCount
		if n == c.KubeletRestartsSeen {
			return false
		}
		if n > c.KubeletRestartsSeen {
			c.Restarts += uint64(n - c.KubeletRestartsSeen)
		} else {
			c.Restarts += uint64(n) // a new pod with the same name
		}
		c.KubeletRestartsSeen = n
		return true
	}); err != nil {
		a.log.Error("cannot write to the state dir", "container", t.c.ID, "err", err)
	}
}

func (a *Agent) bumpCounters(t *tracked, fn func(*statedir.Counters)) {
	_ = a.store.UpdateIf(func(tx statedir.Tx) bool {
		c := tx.Counters(t.identity)
		fn(c)
		c.LastSeen = a.now()
		return false
	})
	a.kickFlush()
}

// settle lets every running container's tracker reset its backoff when the
// container has been up (and healthy) long enough.
func (a *Agent) settle() {
	now := a.now()
	var changed []*tracked
	a.mu.Lock()
	for _, t := range a.containers {
		if t.tracker.Settle(now) {
			changed = append(changed, t)
		}
	}
	a.mu.Unlock()
	for _, t := range changed {
		a.persist(t)
		a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_STATE_CHANGED, "restart backoff reset after a stable run", nil, nil)
	}
}

func (a *Agent) pruneStore() {
	live := map[string]bool{}
	liveContainers := map[string]bool{}
	a.mu.RLock()
	for k, t := range a.containers {
		live[t.identity] = true
		liveContainers[containerKey(k)] = true
	}
	a.mu.RUnlock()
	if err := a.store.Prune(live, liveContainers, a.now().Add(-24*time.Hour)); err != nil {
		a.log.Warn("prune state dir", "err", err)
	}
}

// sendContainerEvent builds the container's full state and sends an event.
func (a *Agent) sendContainerEvent(t *tracked, typ vigilv1.ContainerEventType, msg string, exit *vigilv1.ExitStatus, d *vigilv1.RestartDecision) {
	a.sendEvent(&vigilv1.ContainerEvent{
		Type:      typ,
		Time:      timestamppb.New(a.now()),
		Container: a.containerProto(t),
		Exit:      exit,
		Decision:  d,
		Message:   msg,
	})
}
