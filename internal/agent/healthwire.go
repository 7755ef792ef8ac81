package agent

import (
	"context"
	"errors"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/health"
	"github.com/vigilhq/vigil/internal/network"
	"github.com/vigilhq/vigil/internal/runtime"
	"github.com/vigilhq/vigil/internal/statedir"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// healthConfig returns the container's health check: from its labels, else
// its image's HEALTHCHECK; nil when it has none or is not ours to probe.
func (a *Agent) healthConfig(c *runtime.Container) (*health.Config, error) {
	cfg, ok, err := health.ParseConfig(c.Labels, c.Healthcheck, c.Manager)
	if err != nil || !ok {
		return nil, err
	}
	return &cfg, nil
}

// startProbing (re)registers a running container with the prober, against
// its current task (a restart makes a new task, pid and namespace).
func (a *Agent) startProbing(t *tracked) {
	// What the previous task's probes failed, before the prober forgets it.
	a.countProbeFailures(t)
	a.mu.Lock()
	cfg := t.healthCfg
	tgt := health.Target{Key: t.c.Key(), StartedAt: t.c.StartedAt, OwnNetNS: !t.c.HostNetwork}
	if !t.c.HostNetwork && t.c.Pid != 0 {
		tgt.NetNS = health.NetNSOfPid(t.c.Pid)
	}
	t.netCause = "" // a new task: its network is judged at the next read
	t.crossNodeAt = time.Time{}
	t.probeHealth = nil
	t.probesReported = 0
	if cfg != nil {
		t.probeHealth = &health.Health{Status: health.StatusStarting, Kind: cfg.Kind, Source: cfg.Source}
	}
	a.mu.Unlock()
	if cfg == nil {
		return
	}
	// The prober counts failures anew on Add, and on Update for a new task
	// (another start time); otherwise it keeps counting and so must we.
	err := a.prober.Add(tgt.Key, *cfg, tgt)
	fresh := err == nil
	if errors.Is(err, errdefs.ErrConflict) {
		err = a.prober.Update(tgt.Key, *cfg, tgt)
		fresh = err == nil && !tgt.StartedAt.Equal(t.probedSince)
	}
	if err != nil {
		a.log.Warn("cannot schedule health probe", "container", t.c.ID, "namespace", t.c.Namespace, "err", err)
		return
	}
	a.mu.Lock()
	if fresh {
		t.failuresCounted = 0
	}
	t.probedSince = tgt.StartedAt
	a.mu.Unlock()
}

// stopProbing stops probing a container whose task is gone (or frozen).
// Its last health stays visible until the next start, but no longer blamed
// on this node's network: that verdict was about the task's probe.
func (a *Agent) stopProbing(t *tracked) {
	a.countProbeFailures(t)
	a.mu.Lock()
	t.crossNodeAt = time.Time{}
	a.mu.Unlock()
	a.prober.Remove(t.c.Key())
}

// countProbeFailures adds the probe failures not yet counted to the
// container's lifetime counter.
func (a *Agent) countProbeFailures(ts ...*tracked) {
	a.refreshProbes(false, ts...)
}

// refreshProbes adds the probe failures not yet counted to the containers'
// lifetime counters and, with results, takes the prober's latest results
// and failing streak into the reported health (the status stays the one of
// the last transition the loop applied: a transition on its way is applied
// by onHealthChange). It returns the containers whose reported state
// changed, for one coalesced update each.
func (a *Agent) refreshProbes(results bool, ts ...*tracked) []*tracked {
	type add struct {
		identity string
		n        uint64
	}
	var adds []add
	var changed []*tracked
	for _, t := range ts {
		h, ok := a.prober.Health(t.c.Key())
		if !ok {
			continue
		}
		a.mu.Lock()
		dirty := false
		if h.Failures > t.failuresCounted {
			adds = append(adds, add{t.identity, h.Failures - t.failuresCounted})
			t.failuresCounted = h.Failures
			dirty = true
		}
		if results && t.probeHealth != nil && h.Probes != t.probesReported && h.Status == t.probeHealth.Status {
			t.probeHealth = &h
			t.probesReported = h.Probes
			dirty = true
		}
		a.mu.Unlock()
		if dirty {
			changed = append(changed, t)
		}
	}
	if len(adds) == 0 {
		return changed
	}
	_ = a.store.UpdateIf(func(tx statedir.Tx) bool {
		for _, x := range adds {
			tx.Counters(x.identity).ProbeFailures += x.n
		}
		return false
	})
	a.kickFlush()
	return changed
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
	h := ch.Health
	t.probeHealth = &h
	t.probesReported = ch.Health.Probes
	netDown := t.netCause != ""
	a.mu.Unlock()
	if ch.To == health.StatusHealthy {
		a.mu.Lock()
		t.crossNodeAt = time.Time{}
		a.mu.Unlock()
	}
	if ch.To == health.StatusHealthy && !netDown {
		dec := decideHealthy(a.view(t), ch.Time)
		a.mu.Lock()
		t.tracker.State = dec.Tracker.State
		a.mu.Unlock()
	}

	a.countProbeFailures(t)
	a.log.Info("health changed", "container", t.c.ID, "namespace", t.c.Namespace, "from", ch.From.String(), "to", ch.To.String())
	a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_HEALTH_CHANGED, "health: "+ch.From.String()+" -> "+ch.To.String(), nil, nil)
	if ch.To != health.StatusUnhealthy || netDown {
		// Healthy again, or already unhealthy through its network (decided
		// then).
		a.persist(t)
		return
	}
	if a.startCrossCheck(t) {
		// A probe of a pod address, with the cross-check on: the peers'
		// answer decides (finishCrossCheck).
		a.persist(t)
		return
	}
	a.decideUnhealthy(ctx, t, ch.Time)
}

// decideUnhealthy asks the restart policy about a container that turned
// unhealthy and, for a restart, kills the task at once; the restart follows
// when the decision is due (the exit the kill causes repeats the pending
// decision).
func (a *Agent) decideUnhealthy(ctx context.Context, t *tracked, at time.Time) {
	dec := decideUnhealthy(a.view(t), at)
	d, stop := dec.Decision, dec.Stop
	a.mu.Lock()
	t.tracker.State = dec.Tracker.State
	spec := a.stopSpecLocked(t)
	if stop {
		t.inFlight = true
		t.expectDelete = true
	}
	a.mu.Unlock()
	a.applyDecision(t, d)
	if !stop {
		return
	}
	key := t.c.Key()
	a.runAction(actionResult{kind: actionUnhealthyStop, key: key, grace: spec.grace}, func(ctx context.Context) error {
		return a.tasks.Stop(ctx, key, spec.grace, spec.options()...)
	})
}

// healthReportLocked is the health reported for a container, built for
// the protocol here, at the edge: the prober's, unless its network makes it
// unhealthy (NetworkAffectsHealth); noHealth without a health check. A
// failing probe that the cross-check blamed on this node's network says so
// (decideHealthBlame). Called with a.mu held.
func healthReportLocked(t *tracked) *vigilv1.Health {
	if t.netCause == "" {
		if t.probeHealth == nil {
			return noHealth
		}
		h := healthProto(*t.probeHealth)
		if decideHealthBlame(t.probeHealth.Status, t.netCause != "", t.crossNodeAt) {
			h.Blame = vigilv1.HealthBlame_HEALTH_BLAME_NODE_NETWORK
		}
		return h
	}
	h := &vigilv1.Health{
		Status: vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY,
		Probe:  "network",
		Source: "network",
		LastResults: []*vigilv1.ProbeResult{{
			Start:  ts(t.netCauseAt),
			Ok:     false,
			Code:   -1,
			Output: t.netCause,
		}},
	}
	if t.probeHealth != nil {
		p := healthProto(*t.probeHealth)
		h.Probe, h.Source, h.FailingStreak = p.GetProbe()+"+network", p.GetSource(), p.GetFailingStreak()
		h.LastResults = append(p.GetLastResults(), h.LastResults...)
	}
	return h
}

// connectivityLost returns why a container's network makes it unhealthy:
// a link down or no default route in its namespace. MTU mismatches and
// rising errors or drops are reported, not acted on.
func connectivityLost(cs []network.Condition) string {
	var why []string
	for _, c := range cs {
		switch c.Type {
		case network.ConditionLinkDown, network.ConditionNoDefaultRoute:
			w := c.Reason
			if c.Interface != "" {
				w += " " + c.Interface
			}
			why = append(why, w)
		}
	}
	return strings.Join(why, ", ")
}

// applyNetworkHealth turns a change of a container's network conditions into
// a health change, when the agent is configured to (NetworkAffectsHealth)
// and the container is Vigil's.
func (a *Agent) applyNetworkHealth(ctx context.Context, t *tracked) {
	if !a.cfg.NetworkAffectsHealth {
		return
	}
	a.mu.Lock()
	if t.c.Manager != runtime.ManagerVigil || t.c.State != runtime.StateRunning {
		a.mu.Unlock()
		return
	}
	cause := connectivityLost(t.conditions)
	was := t.netCause
	if cause != was {
		t.netCauseAt = a.now()
	}
	if (cause == "") == (was == "") {
		t.netCause = cause
		a.mu.Unlock()
		return
	}
	t.netCause = cause
	probeStatus := health.StatusNone
	if t.probeHealth != nil {
		probeStatus = t.probeHealth.Status
	}
	healthy := cause == "" && (probeStatus == health.StatusHealthy || t.probeHealth == nil)
	a.mu.Unlock()
	if healthy {
		dec := decideHealthy(a.view(t), a.now())
		a.mu.Lock()
		t.tracker.State = dec.Tracker.State
		a.mu.Unlock()
	}

	if cause != "" {
		a.log.Info("network makes container unhealthy", "container", t.c.ID, "namespace", t.c.Namespace, "why", cause)
		a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_HEALTH_CHANGED, "health: unhealthy (network: "+cause+")", nil, nil)
		if probeStatus != health.StatusUnhealthy {
			a.decideUnhealthy(ctx, t, a.now())
		}
		return
	}
	a.log.Info("network recovered", "container", t.c.ID, "namespace", t.c.Namespace)
	a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_HEALTH_CHANGED, "health: network recovered", nil, nil)
	a.persist(t)
}

// healthProto converts a health snapshot. The message is never modified
// after it is built, so it may be shared by the events that carry it.
func healthProto(h health.Health) *vigilv1.Health {
	out := &vigilv1.Health{
		Status:        healthStatusProto(h.Status),
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

// healthStatusProto converts a health status; an unknown one is
// UNSPECIFIED.
func healthStatusProto(s health.Status) vigilv1.HealthStatus {
	switch s {
	case health.StatusNone:
		return vigilv1.HealthStatus_HEALTH_STATUS_NONE
	case health.StatusStarting:
		return vigilv1.HealthStatus_HEALTH_STATUS_STARTING
	case health.StatusHealthy:
		return vigilv1.HealthStatus_HEALTH_STATUS_HEALTHY
	case health.StatusUnhealthy:
		return vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY
	}
	return vigilv1.HealthStatus_HEALTH_STATUS_UNSPECIFIED
}
