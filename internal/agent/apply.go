package agent

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/health"
	"github.com/vigilhq/vigil/internal/runtime"
	"github.com/vigilhq/vigil/internal/statedir"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// The apply side of "decide, then apply" (decide.go): what the agent does to
// the world goes through these interfaces, so that the parts that decide
// never hold containerd, the prober or the uplink.

// taskControl is what the agent does to containers' tasks: the runtime
// (containerd) implements it. Its calls are slow (100-200 ms); they run on
// actions' goroutines (runAction), never on the loop.
type taskControl interface {
	Stop(ctx context.Context, k container.Key, grace time.Duration, opts ...runtime.StopOption) error
	Kill(ctx context.Context, k container.Key, sig syscall.Signal) error
	Restart(ctx context.Context, k container.Key, opts ...runtime.RestartOption) error
}

// prober runs containers' health checks: the health scheduler implements
// it. Its calls return at once.
type prober interface {
	Add(k container.Key, cfg health.Config, tgt health.Target) error
	Update(k container.Key, cfg health.Config, tgt health.Target) error
	Remove(k container.Key)
	Health(k container.Key) (health.Health, bool)
}

// reporter sends what the agent reports upstream: the uplink implements it
// (it buffers; its calls never wait on the network).
type reporter interface {
	SendContainerEvent(*vigilv1.ContainerEvent) error
	SendCommandResult(*vigilv1.CommandResult) error
}

var (
	_ taskControl = (*runtime.Runtime)(nil)
	_ prober      = (*health.Scheduler)(nil)
)

// applyRestart carries out a due restart as decideRestartDue planned it:
// stop a task that still runs, write the durable begun mark, replace the
// task. It runs on the restart's goroutine.
func (a *Agent) applyRestart(ctx context.Context, key container.Key, plan restartPlan, stop stopSpec, output runtime.TaskOutput) error {
	if plan.StopFirst {
		// An unhealthy restart whose kill has not been seen yet: stop
		// first.
		if err := a.tasks.Stop(ctx, key, stop.grace, stop.options()...); err != nil {
			return fmt.Errorf("stop before restart: %w", err)
		}
	}
	saved := a.markRestartBegun(key, output)
	if !plan.MeasureFrom.IsZero() {
		if over := a.now().Sub(plan.MeasureFrom) - plan.Chosen; over >= 0 {
			a.self.restartOverhead.Observe(over.Seconds())
		}
	}
	opts := []runtime.RestartOption{runtime.RequireTask()}
	if plan.Resume {
		// The old task may be gone, and with it where its output went:
		// the mark's record of it says.
		opts = []runtime.RestartOption{runtime.ResumeInterrupted(), runtime.PreviousOutput(saved)}
	}
	replace := func(ctx context.Context) error {
		start := time.Now()
		err := a.tasks.Restart(ctx, key, opts...)
		if err == nil {
			a.self.restartHist.Observe(time.Since(start).Seconds())
		}
		return err
	}
	if a.restartHook != nil {
		return a.restartHook(ctx, key, replace)
	}
	return replace(ctx)
}

// view takes the decision view of t: its tracked state under a.mu, and its
// durable marks from the state dir. Loop goroutine.
func (a *Agent) view(t *tracked) ctrView {
	a.mu.RLock()
	v := ctrView{
		State: t.c.State, Pid: t.c.Pid, StartedAt: t.c.StartedAt, Manager: t.c.Manager,
		Tracker: *t.tracker,
		Timer:   t.timer != nil, InFlight: t.inFlight, ExpectDelete: t.expectDelete, CommandRestart: t.commandRestart != "", Resume: t.resume,
		CreateRetries: t.createRetries, UnavailableRetries: t.unavailableRetries, ShimLostRetries: t.shimLostRetries,
	}
	key := t.c.Key().String()
	a.mu.RUnlock()
	a.store.View(func(tx statedir.Tx) {
		if r, ok := tx.LookupContainer(key); ok {
			v.Begun, v.LastExitSeen = r.RestartBegun, r.LastExitSeen
		}
	})
	return v
}

// runFacts are the facts of this run for a decision. Loop goroutine.
func (a *Agent) runFacts() runFacts {
	return runFacts{Started: a.started, Rebooted: a.rebooted, Now: a.now()}
}
