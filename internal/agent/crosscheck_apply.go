package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/vigilhq/vigil/internal/gossip"
	"github.com/vigilhq/vigil/internal/health"
	"github.com/vigilhq/vigil/internal/runtime"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// defaultCrossRecheck is how long a failed probe blamed on this node's
// network waits before its peers are asked again (while the probe still
// fails): a node whose network came back, with a pod still broken, must not
// keep it unrestarted for ever (nor blamed on the node upstream).
const defaultCrossRecheck = time.Minute

// crossOutcome is a cross-check's result (written by its action, read by
// the loop after the action's result arrives).
type crossOutcome struct {
	addr      string
	startedAt time.Time // the task whose probe failed
	res       gossip.CrossResult
	asked     bool
}

// startCrossCheck asks peers, off the loop (an action's goroutine, bounded
// by gossip.CrossProbeTimeout and a second or two), whether they reach the
// address of t's failed probe, when that can be asked (crossCheckTarget).
// It reports whether the decision on t waits for their answer. Loop
// goroutine.
func (a *Agent) startCrossCheck(t *tracked) bool {
	a.mu.Lock()
	cfg := t.healthCfg
	if cfg == nil {
		a.mu.Unlock()
		return false
	}
	addr, ask := crossCheckTarget(a.gm != nil && a.cfg.Gossip.CrossCheckPeers > 0, cfg.Kind, cfg.Addr, t.c.HostNetwork)
	if !ask || t.crossChecking {
		a.mu.Unlock()
		return ask
	}
	t.crossChecking = true
	out := &crossOutcome{addr: addr, startedAt: t.c.StartedAt}
	key := t.c.Key()
	a.mu.Unlock()
	a.runAction(actionResult{kind: actionCrossCheck, key: key, cross: out}, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, gossip.CrossProbeTimeout+2*time.Second)
		defer cancel()
		out.res, out.asked = a.GossipCrossCheck(ctx, out.addr)
		return nil
	})
	return true
}

// finishCrossCheck applies the peers' answer (decideCrossCheck) on the
// loop: "node" leaves the container alone and reports the node's network
// (the event's health carries the blame: decideHealthBlame); otherwise the
// failed probe counts as it does without the cross-check, and a blame that
// an earlier answer set is cleared upstream.
func (a *Agent) finishCrossCheck(ctx context.Context, res actionResult) {
	out := res.cross
	a.mu.Lock()
	t, ok := a.containers[res.key]
	if ok {
		t.crossChecking = false
	}
	same := ok && t.c.State == runtime.StateRunning && t.c.StartedAt.Equal(out.startedAt)
	netDown := ok && t.netCause != ""
	a.mu.Unlock()
	if !same {
		return // stopped or restarted meanwhile
	}
	if h, ok := a.prober.Health(res.key); !ok || h.Status != health.StatusUnhealthy {
		return // healthy again meanwhile
	}
	verdict := "unknown"
	if out.asked {
		verdict = out.res.Verdict()
	}
	a.self.crossChecks.With(verdict).Inc()
	if decideCrossCheck(out.asked, verdict) == crossNode {
		a.mu.Lock()
		t.crossNodeAt = a.now()
		a.mu.Unlock()
		a.log.Warn("health probe failed here, but peers reach the pod: this node's network is broken, not the container; not counted against it",
			"container", t.c.ID, "namespace", t.c.Namespace, "addr", out.addr, "asked", out.res.Asked, "answered", out.res.Answered, "reached", out.res.Reachable)
		a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_HEALTH_CHANGED,
			fmt.Sprintf("health: probe of %s failed on this node, but %d of %d peers reach it: this node's network is broken, not the container (not restarted for it)",
				out.addr, out.res.Reachable, out.res.Answered), nil, nil)
		return
	}
	a.mu.Lock()
	wasBlamed := !t.crossNodeAt.IsZero()
	t.crossNodeAt = time.Time{}
	a.mu.Unlock()
	if wasBlamed {
		// A recheck no longer blames the node: what went upstream as the
		// node's (Health.blame) is the container's again, whatever the
		// policy decides below (it may report nothing).
		a.log.Info("health probe still fails, and peers no longer reach the pod: no longer blamed on this node's network",
			"container", t.c.ID, "namespace", t.c.Namespace, "addr", out.addr, "verdict", verdict)
		a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_HEALTH_CHANGED,
			fmt.Sprintf("health: probe of %s still fails, and peers no longer reach it (verdict %s): no longer blamed on this node's network", out.addr, verdict), nil, nil)
	}
	if netDown {
		return // already unhealthy through its network: decided then
	}
	a.decideUnhealthy(ctx, t, a.now())
}

// recheckCrossNode asks peers again about the containers whose failed
// probe was blamed on this node's network a.crossRecheck ago and still
// fails. Loop goroutine (onSample).
func (a *Agent) recheckCrossNode(ts []*tracked) {
	now := a.now()
	for _, t := range ts {
		a.mu.RLock()
		at := t.crossNodeAt
		a.mu.RUnlock()
		if at.IsZero() || now.Sub(at) < a.crossRecheck {
			continue
		}
		if h, ok := a.prober.Health(t.c.Key()); !ok || h.Status != health.StatusUnhealthy {
			a.mu.Lock()
			t.crossNodeAt = time.Time{}
			a.mu.Unlock()
			continue
		}
		a.startCrossCheck(t)
	}
}
