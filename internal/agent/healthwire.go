package agent

import (
	"context"
	"errors"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/health"
	"github.com/vigilhq/vigil/internal/runtime"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// healthConfig returns the container's health check: from its labels, else
// its image's HEALTHCHECK; nil when it has none or is not ours to probe.
func (a *Agent) healthConfig(c *runtime.Container) (*health.Config, string, error) {
	cfg, ok, err := health.ParseConfig(c.Labels, c.Healthcheck, c.Manager)
	if err != nil {
		return nil, "", err
	}
	if !ok {
		return nil, "", nil
	}
	return &cfg, cfg.Source, nil
}

// startProbing (re)registers a running container with the prober, against
// its current task (a restart makes a new task, pid and namespace).
func (a *Agent) startProbing(t *tracked) {
	a.mu.Lock()
	cfg := t.healthCfg
	tgt := health.Target{Key: t.c.Key(), StartedAt: t.c.StartedAt}
	if !t.c.HostNetwork && t.c.Pid != 0 {
		tgt.NetNS = health.NetNSOfPid(t.c.Pid)
	}
	t.failuresCounted = 0 // the prober counts anew for a new task
	if cfg != nil {
		t.health = &vigilv1.Health{
			Status: vigilv1.HealthStatus_HEALTH_STATUS_STARTING,
			Probe:  cfg.Kind.String(),
			Source: cfg.Source,
		}
	}
	a.mu.Unlock()
	if cfg == nil {
		return
	}
	err := a.probe.Add(tgt.Key, *cfg, tgt)
	if errors.Is(err, errdefs.ErrConflict) {
		err = a.probe.Update(tgt.Key, *cfg, tgt)
	}
	if err != nil {
		a.log.Warn("cannot schedule health probe", "container", t.c.ID, "namespace", t.c.Namespace, "err", err)
	}
}

// stopProbing stops probing a container whose task is gone. Its last health
// stays visible until the next start.
func (a *Agent) stopProbing(t *tracked) {
	a.countProbeFailures(t)
	a.probe.Remove(t.c.Key())
}

// countProbeFailures adds the probe failures not yet counted to the
// container's lifetime counter.
func (a *Agent) countProbeFailures(ts ...*tracked) {
	type add struct {
		identity string
		n        uint64
	}
	var adds []add
	for _, t := range ts {
		h, ok := a.probe.Health(t.c.Key())
		if !ok {
			continue
		}
		a.mu.Lock()
		if h.Failures > t.failuresCounted {
			adds = append(adds, add{t.identity, h.Failures - t.failuresCounted})
			t.failuresCounted = h.Failures
		}
		a.mu.Unlock()
	}
	if len(adds) == 0 {
		return
	}
	if err := a.store.Update(func(tx Tx) error {
		for _, x := range adds {
			tx.Counters(x.identity).ProbeFailures += x.n
		}
		return nil
	}); err != nil {
		a.log.Error("cannot write probe failure counts to the state dir", "err", err)
	}
}

// onHealthChange applies a health transition: report it, and let the
// restart policy decide on an unhealthy container.
func (a *Agent) onHealthChange(ctx context.Context, ch health.Change) {
	a.mu.Lock()
	t, ok := a.containers[ch.Key]
	if !ok || t.c.State != runtime.StateRunning {
		a.mu.Unlock()
		return // a late transition of a container that is gone or stopped
	}
	t.health = healthProto(ch.Health)
	var decide bool
	switch ch.To {
	case health.StatusHealthy:
		t.tracker.OnHealthy(ch.Time)
	case health.StatusUnhealthy:
		decide = true
	}
	a.mu.Unlock()

	a.countProbeFailures(t)
	a.log.Info("health changed", "container", t.c.ID, "namespace", t.c.Namespace, "from", ch.From.String(), "to", ch.To.String())
	a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_HEALTH_CHANGED, "health: "+ch.From.String()+" -> "+ch.To.String(), nil, nil)
	if !decide {
		a.persist(t)
		return
	}
	a.mu.Lock()
	d := t.tracker.OnUnhealthy(ch.Time)
	stop := d.Restarts() && !t.inFlight
	if stop {
		t.inFlight = true
		t.expectDelete = true
	}
	a.mu.Unlock()
	a.applyDecision(t, d)
	if !stop {
		return
	}
	// Kill the unhealthy task now; the restart follows when the decision is
	// due (the exit it causes repeats the pending decision).
	key := t.c.Key()
	grace := a.cfg.StopGrace
	a.runAction(ctx, actionResult{kind: actionUnhealthyStop, key: key}, func(ctx context.Context) error {
		return a.rt.Stop(ctx, key, grace)
	})
}

// healthProto converts a health snapshot. The message is never modified
// after it is built, so it may be shared by the events that carry it.
func healthProto(h health.Health) *vigilv1.Health {
	out := &vigilv1.Health{
		Status:        vigilv1.HealthStatus(h.Status),
		FailingStreak: uint32(h.FailingStreak),
		Source:        h.Source,
	}
	if h.Kind != 0 {
		out.Probe = h.Kind.String()
	}
	for _, r := range h.Last {
		out.LastResults = append(out.LastResults, &vigilv1.ProbeResult{
			Start:    ts(r.Start),
			Duration: durationpb.New(r.Duration),
			Ok:       r.OK,
			Code:     int32(r.Code),
			Output:   r.Output,
		})
	}
	return out
}
