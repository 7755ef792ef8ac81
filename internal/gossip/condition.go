package gossip

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Condition is a node's condition, combining the aggregator's stream from
// the node with its gossip peers' views of it.
type Condition uint8

// The conditions. Their String is the name the contract uses (the
// condition label of the aggregator's series).
const (
	// ConditionUnknown: the stream is down and the peers' reports do not
	// settle it (too few agree it is dead, none reaches it).
	ConditionUnknown Condition = iota
	// Healthy: the stream is up.
	Healthy
	// AggregatorPartitioned: the stream is down, and at least one peer
	// reaches the node: it lives, only its path to the aggregator is cut.
	AggregatorPartitioned
	// NodeDown: the stream is down and at least DeadQuorum peers agree the
	// node is dead (or left).
	NodeDown
	// Isolated: the agent reaches neither the aggregator nor any peer. Only
	// the agent can tell (Local, with Member.ProbePeers); seen from outside, an isolated node and a
	// dead one look the same (NodeDown), and the agent reports its
	// isolation when its stream returns.
	Isolated
)

func (c Condition) String() string {
	switch c {
	case Healthy:
		return "Healthy"
	case AggregatorPartitioned:
		return "AggregatorPartitioned"
	case NodeDown:
		return "NodeDown"
	case Isolated:
		return "Isolated"
	}
	return "Unknown"
}

// PeerReport is what one observer last reported about a node.
type PeerReport struct {
	// State is the node's state as the observer sees it, Since when.
	State State
	Since time.Time
	// ReportedAt is when the aggregator received the observer's view. A
	// report older than ConditionConfig.ReportMaxAge is not counted: the
	// observer may be gone itself.
	ReportedAt time.Time
	// ObserverDown: the aggregator's stream from the observer itself is not
	// up (down, or silent: stale) since ObserverLastSeen. Such a report is
	// not counted once the observer is past ConditionConfig.StreamGrace:
	// the view arrived on that stream, so it is frozen at the moment the
	// stream ended, and the observer may be dead itself. The zero value is
	// an observer whose stream is up.
	ObserverDown     bool
	ObserverLastSeen time.Time
}

// counts reports whether the aggregator credits r's observer at now: its
// own stream is up, or went down within the grace.
func (r PeerReport) counts(now time.Time, cfg ConditionConfig) bool {
	return !r.ObserverDown || withinGrace(r.ObserverLastSeen, now, cfg.StreamGrace)
}

// withinGrace reports whether a stream last seen at lastSeen (zero: never)
// still counts as up at now.
func withinGrace(lastSeen, now time.Time, grace time.Duration) bool {
	return !lastSeen.IsZero() && now.Sub(lastSeen).Round(time.Second) < grace
}

// ConditionConfig tunes Assess. Zero fields take their defaults.
type ConditionConfig struct {
	// DeadQuorum is how many peers must agree a node is dead (or left) for
	// NodeDown; default 2, so that one observer with a bad network cannot
	// take a node down alone.
	DeadQuorum int
	// ReportMaxAge is how old a peer's report may be and still count;
	// default 30s (agents report their view when it changes, and at least
	// every 10 s is the expected wiring).
	ReportMaxAge time.Duration
	// StreamGrace keeps a node Healthy for this long after its stream was
	// last seen, so that a reconnect is not a condition change; default
	// 0 (none).
	StreamGrace time.Duration
}

func (c ConditionConfig) withDefaults() ConditionConfig {
	if c.DeadQuorum <= 0 {
		c.DeadQuorum = 2
	}
	if c.ReportMaxAge <= 0 {
		c.ReportMaxAge = 30 * time.Second
	}
	return c
}

// Assess decides a node's condition, for the aggregator, from its stream
// (up, and when last seen) and its peers' reports about it (by observer
// name). It returns the condition and a reason for people. Pure: it reads
// nothing but its arguments.
//
// The stream decides first: up is Healthy, whatever the peers say. Down,
// one peer that reaches the node (alive) makes it AggregatorPartitioned,
// even if others see it dead (a partition among the peers; the aggregator
// must not call a node down that someone still talks to). Otherwise
// DeadQuorum peers seeing it dead or left make it NodeDown. Anything less
// is Unknown, with what the peers said.
//
// A peer's report counts while it is fresh (ReportMaxAge). An observer
// whose own stream to the aggregator is down (PeerReport.ObserverDown,
// past the grace) has stopped reporting: its last view is frozen at the
// moment its stream ended. Its last "alive" or "suspect" then describes
// the past and does not count: it cannot hold a node out of NodeDown
// against the peers the aggregator still hears (without this, a node that
// died a second before another kept the other AggregatorPartitioned for
// ReportMaxAge). Its last "dead" or "left" still counts: a death seen
// does not become less true, and a node NodeDown on two peers' word must
// not turn Unknown because one of them lost its own stream afterwards
// (with three nodes that flap took two of them at once, which the fleet
// rule holds as the aggregator's failure). An observer whose stream is up still counts when
// other peers see it dead: the aggregator hears it now, and in a split of
// the gossip each side sees the other dead, so neither can be preferred.
// Hence NodeDown needs DeadQuorum peers the aggregator hears now.
func Assess(streamUp bool, lastSeen time.Time, peers map[string]PeerReport, now time.Time, cfg ConditionConfig) (Condition, string) {
	cfg = cfg.withDefaults()
	var alive, suspect, dead, left, stale, frozen []string
	for _, name := range sortedKeys(peers) {
		r := peers[name]
		if now.Sub(r.ReportedAt) > cfg.ReportMaxAge {
			stale = append(stale, name)
			continue
		}
		if !r.counts(now, cfg) && (r.State == StateAlive || r.State == StateSuspect) {
			frozen = append(frozen, name)
			continue
		}
		switch r.State {
		case StateAlive:
			alive = append(alive, name)
		case StateSuspect:
			suspect = append(suspect, name)
		case StateDead:
			dead = append(dead, name)
		case StateLeft:
			left = append(left, name)
		}
	}
	gone := len(dead) + len(left)
	if streamUp {
		if gone >= cfg.DeadQuorum {
			return Healthy, fmt.Sprintf("stream up, although %d peers see it dead (%s): gossip between them is broken",
				gone, names(append(dead, left...)))
		}
		return Healthy, "stream up"
	}
	down := "stream down"
	if !lastSeen.IsZero() {
		down = fmt.Sprintf("stream down, last seen %v ago", now.Sub(lastSeen).Round(time.Second))
		if withinGrace(lastSeen, now, cfg.StreamGrace) {
			return Healthy, down + fmt.Sprintf(", within the %v grace", cfg.StreamGrace)
		}
	}
	// What was not counted for want of a live observer, said last.
	var uncounted string
	if len(frozen) > 0 {
		uncounted = fmt.Sprintf("; not counted: %d peers whose own stream is down (%s): their last view still had it alive", len(frozen), names(frozen))
	}
	switch {
	case len(alive) > 0:
		reason := fmt.Sprintf("%s; %d peers reach it (%s)", down, len(alive), names(alive))
		if gone > 0 {
			reason += fmt.Sprintf("; %d see it dead (%s): the peers are partitioned too", gone, names(append(dead, left...)))
		}
		return AggregatorPartitioned, reason + uncounted
	case gone >= cfg.DeadQuorum:
		what := "dead"
		if len(dead) == 0 {
			what = "left (stopped on purpose)"
		}
		return NodeDown, fmt.Sprintf("%s; %d peers see it %s (%s)", down, gone, what, names(append(dead, left...))) + uncounted
	}
	return ConditionUnknown, fmt.Sprintf("%s; peers: %d dead or left, %d suspect, %d with no report for %v: NodeDown needs %d agreeing",
		down, gone, len(suspect), len(stale), cfg.ReportMaxAge, cfg.DeadQuorum) + uncounted
}

// Local is the agent's own condition. With the stream up it is Healthy.
// With the stream down, answered is how many peers answered a direct probe
// just now (Member.ProbePeers), or -1 when the agent did not probe: any
// answer makes it AggregatorPartitioned, none makes it Isolated. Without
// a probe the view decides: a peer alive in it is AggregatorPartitioned,
// none (suspect ones do not answer this member either) Isolated. The
// agent refuses remote actions while Isolated.
func Local(streamUp bool, views []View, answered int) (Condition, string) {
	if streamUp {
		return Healthy, "stream up"
	}
	var alive []string
	for _, v := range views {
		if v.State == StateAlive {
			alive = append(alive, v.Name)
		}
	}
	slices.Sort(alive)
	switch {
	case answered > 0:
		return AggregatorPartitioned, fmt.Sprintf("stream down; %d peers answered a probe just now", answered)
	case answered == 0:
		return Isolated, fmt.Sprintf("stream down and no peer answered a probe (%d alive in the view)", len(alive))
	case len(alive) == 0:
		return Isolated, fmt.Sprintf("stream down and none of %d known peers alive", len(views))
	}
	return AggregatorPartitioned, fmt.Sprintf("stream down; %d peers alive (%s)", len(alive), names(alive))
}

// Isolation is the agent's last isolation episode, for its report
// upstream (PeerView's isolated_since and isolated_until): an isolated
// agent cannot tell the aggregator, so it tells it afterwards. The zero
// value is "never isolated". Not safe for concurrent use: the agent
// observes its condition from one goroutine.
type Isolation struct {
	// Since is when the last episode began; zero if none has.
	Since time.Time
	// Until is when it ended; zero while it lasts.
	Until time.Time
}

// Ongoing reports whether the agent is isolated now.
func (i Isolation) Ongoing() bool { return !i.Since.IsZero() && i.Until.IsZero() }

// Observe records the agent's condition (Local's) at now: Isolated starts
// an episode, or continues the one under way; any other condition ends
// it. It reports whether the episode changed (something to send).
func (i *Isolation) Observe(c Condition, now time.Time) bool {
	switch isolated := c == Isolated; {
	case isolated && !i.Ongoing():
		i.Since, i.Until = now, time.Time{}
		return true
	case !isolated && i.Ongoing():
		i.Until = now
		return true
	}
	return false
}

// FleetConfig tunes Fleet.
type FleetConfig struct {
	// MinNodes is the smallest fleet the guard applies to; default 3 (in
	// a fleet of one or two, one node is already half).
	MinNodes int
}

// FleetVerdict is Fleet's answer.
type FleetVerdict struct {
	// SuspectSelf: more than half the fleet turned worse at once; the
	// aggregator should suspect itself or the network, keep acting as if
	// the nodes' previous conditions held (no remediation suppressed or
	// started on the strength of the change), and say so (Message).
	SuspectSelf bool
	// Worse is how many nodes turned to a condition other than Healthy,
	// out of Total (the nodes in both maps).
	Worse, Total int
	// Message explains the verdict when SuspectSelf.
	Message string
}

// Fleet is the fleet-level guard over one evaluation step: prev and next
// are every node's condition before and after it (the caller chooses the
// step: one assessment round, or a window of some seconds). A node counts
// as changed when it went from one condition to a different one that is
// not Healthy; recoveries do not count (the whole fleet coming back after
// an aggregator restart is good news). When more than half the nodes
// changed so, it is far more likely that the aggregator or its network
// failed than that the nodes did. Nodes in only one of the maps are not
// counted. Pure.
func Fleet(prev, next map[string]Condition, cfg FleetConfig) FleetVerdict {
	if cfg.MinNodes <= 0 {
		cfg.MinNodes = 3
	}
	var v FleetVerdict
	kinds := map[string]int{}
	for node, after := range next {
		before, ok := prev[node]
		if !ok {
			continue
		}
		v.Total++
		if after != before && after != Healthy {
			v.Worse++
			kinds[before.String()+"→"+after.String()]++
		}
	}
	if v.Total < cfg.MinNodes || 2*v.Worse <= v.Total {
		return v
	}
	v.SuspectSelf = true
	var parts []string
	for _, k := range sortedKeys(kinds) {
		parts = append(parts, fmt.Sprintf("%s %d", k, kinds[k]))
	}
	v.Message = fmt.Sprintf("%d of %d nodes turned worse at once (%s): more likely the aggregator's or the network's failure than the nodes'; their previous conditions stand",
		v.Worse, v.Total, strings.Join(parts, ", "))
	return v
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// names lists up to five names, then how many more.
func names(ns []string) string {
	ns = slices.Clone(ns)
	slices.Sort(ns)
	if len(ns) > 5 {
		return strings.Join(ns[:5], ", ") + fmt.Sprintf(" and %d more", len(ns)-5)
	}
	return strings.Join(ns, ", ")
}
