package aggregator

import (
	"log/slog"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/gossip"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// peerState maps the protocol's peer state onto gossip's.
func peerState(s vigilv1.PeerState) gossip.State {
	switch s {
	case vigilv1.PeerState_PEER_STATE_ALIVE:
		return gossip.StateAlive
	case vigilv1.PeerState_PEER_STATE_SUSPECT:
		return gossip.StateSuspect
	case vigilv1.PeerState_PEER_STATE_DEAD:
		return gossip.StateDead
	case vigilv1.PeerState_PEER_STATE_LEFT:
		return gossip.StateLeft
	default:
		return gossip.StateUnknown
	}
}

// peerReports gathers what every observer last reported about every other
// node: target → observer → report, with whether the observer's own stream
// is up (gossip.Assess counts only observers the aggregator still hears).
func (f *Fleet) peerReports() map[string]map[string]gossip.PeerReport {
	out := map[string]map[string]gossip.PeerReport{}
	for _, n := range f.list() {
		n.mu.Lock()
		view, at := n.peers, n.peersAt
		// A stale observer is silent, its view no newer than a down one's.
		observerDown, lastSeen := n.state != vigilv1.NodeState_NODE_STATE_UP, n.lastSeen
		n.mu.Unlock()
		for _, p := range view.GetPeers() {
			if p.GetName() == "" || p.GetName() == n.name {
				continue
			}
			r := gossip.PeerReport{State: peerState(p.GetState()), ReportedAt: at,
				ObserverDown: observerDown, ObserverLastSeen: lastSeen}
			if p.GetSince() != nil {
				r.Since = p.GetSince().AsTime()
			}
			m := out[p.GetName()]
			if m == nil {
				m = map[string]gossip.PeerReport{}
				out[p.GetName()] = m
			}
			m[n.name] = r
		}
	}
	return out
}

// conditionAssessor turns each node's stream and its peers' views into the
// node's condition (gossip.Assess), and watches the fleet as a whole: when
// more than half the nodes turn worse at once, it is the aggregator's or
// the network's failure, not the nodes' (gossip.Fleet), and it says so.
// It is called from the sweep loop only.
type conditionAssessor struct {
	cfg      gossip.ConditionConfig
	fleetCfg gossip.FleetConfig
	log      *slog.Logger
	// suspectSelf is set while the last change was the fleet's as a whole.
	suspectSelf func(bool)
	prev        map[string]gossip.Condition
	// gen and at are the fleet's condGen and the time of the last full
	// assessment: without a change, one every assessEvery is enough (peer
	// reports age out in tens of seconds).
	gen uint64
	at  time.Time
}

// assessEvery bounds how long an assessment is skipped when nothing it
// reads changed.
const assessEvery = 5 * time.Second

// assess recomputes every node's condition at now, and records changes on
// the nodes (bumping their version, so their series are rendered again).
func (c *conditionAssessor) assess(f *Fleet, now time.Time) {
	gen := f.condGen.Load()
	if c.prev != nil && gen == c.gen && now.Sub(c.at) < assessEvery {
		return
	}
	c.gen, c.at = gen, now
	reports := f.peerReports()
	next := make(map[string]gossip.Condition, len(c.prev))
	type change struct {
		n            *node
		cond, reason string
	}
	var changes []change
	for _, n := range f.list() {
		n.mu.Lock()
		streamUp := n.state != vigilv1.NodeState_NODE_STATE_DOWN
		lastSeen := n.lastSeen
		cur := n.condition
		n.mu.Unlock()
		cond, reason := gossip.Assess(streamUp, lastSeen, reports[n.name], now, c.cfg)
		next[n.name] = cond
		if cond.String() != cur {
			changes = append(changes, change{n, cond.String(), reason})
		} else {
			n.mu.Lock()
			n.conditionReason = reason
			n.mu.Unlock()
		}
	}
	if c.prev != nil && len(changes) > 0 {
		v := gossip.Fleet(c.prev, next, c.fleetCfg)
		if c.suspectSelf != nil {
			c.suspectSelf(v.SuspectSelf)
		}
		if v.SuspectSelf {
			// Most of the fleet turning worse at once is the aggregator's
			// or the network's failure: the nodes keep their conditions
			// (and no remediation is held as node_down for it) until the
			// change is no longer the fleet's as a whole.
			c.log.Warn("most of the fleet changed condition at once: taken as the aggregator's or the network's failure, not the nodes'; conditions held", "detail", v.Message)
			return
		}
	}
	for _, ch := range changes {
		ch.n.mu.Lock()
		from := ch.n.condition
		ch.n.condition, ch.n.conditionReason, ch.n.conditionSince = ch.cond, ch.reason, now
		ch.n.version++
		ch.n.mu.Unlock()
		if from != "" {
			c.log.Info("node condition changed", "node", ch.n.name, "from", from, "to", ch.cond, "reason", ch.reason)
		}
		f.events.publishMsg(&vigilv1.WatchEventsResponse{Node: ch.n.name, NodeEvent: &vigilv1.NodeEvent{
			Time: timestamppb.New(now), Condition: ch.cond, Previous: from, Reason: ch.reason,
		}})
	}
	c.prev = next
}
