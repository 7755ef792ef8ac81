package gossip

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// What the delegates post. memberlist calls them with its own locks held:
// they copy what they need, post without blocking, and return.

type eventKind uint8

const (
	evJoin    eventKind = iota + 1 // NotifyJoin: alive (again)
	evUpdate                       // NotifyUpdate: alive, new metadata
	evLeave                        // NotifyLeave: dead or left
	evSuspect                      // this member's probe failed (memberlist's log)
	evAck                          // this member's probe was answered
)

type event struct {
	kind    eventKind
	name    string
	addr    netip.AddrPort
	meta    []byte
	hasNode bool // addr and meta are set
	at      time.Time
}

// post queues ev, or drops it and asks for a resync when the queue is full.
func (m *Member) post(ev event) {
	ev.at = time.Now()
	select {
	case m.events <- ev:
	default:
		m.stats.eventsDropped.Add(1)
		m.overflow.Store(true)
	}
}

func nodeEvent(kind eventKind, n *memberlist.Node) event {
	return event{kind: kind, name: n.Name, addr: nodeAddr(n), meta: bytes.Clone(n.Meta), hasNode: true}
}

type eventDelegate struct{ m *Member }

func (d eventDelegate) NotifyJoin(n *memberlist.Node)   { d.m.post(nodeEvent(evJoin, n)) }
func (d eventDelegate) NotifyLeave(n *memberlist.Node)  { d.m.post(nodeEvent(evLeave, n)) }
func (d eventDelegate) NotifyUpdate(n *memberlist.Node) { d.m.post(nodeEvent(evUpdate, n)) }

type pingDelegate struct{ m *Member }

func (pingDelegate) AckPayload() []byte { return nil }
func (d pingDelegate) NotifyPingComplete(n *memberlist.Node, _ time.Duration, _ []byte) {
	d.m.post(event{kind: evAck, name: n.Name})
}

type conflictDelegate struct{ m *Member }

// NotifyConflict: another address claims a name whose member is not dead
// (yet): a node back with a new address before its old one was declared
// dead, or two nodes misconfigured with one name. memberlist ignores the
// newcomer until the old entry is dead; then DeadNodeReclaimTime lets the
// new address take the name.
func (d conflictDelegate) NotifyConflict(existing, _ *memberlist.Node) {
	d.m.stats.conflicts.Add(1)
	if existing.Name == d.m.cfg.Name {
		d.m.selfConflict.Store(true) // joinLoop announces this address again
	}
	// memberlist logs each conflict itself ("Conflicting address for ...").
}

type mergeDelegate struct{ m *Member }

// NotifyMerge sees the full member list of the peer a join talked to. If
// that peer holds this member's name at another address, or not alive
// (this node's previous life, not yet dead, or dead and not yet replaced),
// joinLoop joins again until the peers have this address.
func (d mergeDelegate) NotifyMerge(peers []*memberlist.Node) error {
	for _, n := range peers {
		if n.Name == d.m.cfg.Name && (n.State != memberlist.StateAlive || nodeAddr(n) != d.m.LocalAddr()) {
			d.m.selfConflict.Store(true)
		}
	}
	return nil
}

// delegate serves the local metadata and posts user messages (cross-checks,
// crosscheck.go) to their queue.
type delegate struct{ m *Member }

func (d delegate) NodeMeta(limit int) []byte {
	b := *d.m.meta.Load()
	if len(b) > limit {
		return nil // cannot happen: Meta stays far below memberlist's 512 bytes
	}
	return b
}
func (d delegate) NotifyMsg(b []byte)            { d.m.postUserMsg(b) }
func (delegate) GetBroadcasts(int, int) [][]byte { return nil }
func (delegate) LocalState(bool) []byte          { return nil }
func (delegate) MergeRemoteState([]byte, bool)   {}

// logSink receives memberlist's log lines: it forwards them to the member's
// logger at their level and turns "Suspect X has failed" (this member's
// probe of X failed; memberlist has no delegate for that) into an event.
type logSink struct{ m *Member }

const suspectLogPrefix = "memberlist: Suspect "
const suspectLogSuffix = " has failed, no acks received"

func (s logSink) Write(p []byte) (int, error) {
	if s.m.shutDown.Load() {
		return len(p), nil
	}
	line := strings.TrimRight(string(p), "\n")
	level, msg := levelOf(line)
	if rest, ok := strings.CutPrefix(msg, suspectLogPrefix); ok {
		if name, ok := strings.CutSuffix(rest, suspectLogSuffix); ok {
			s.m.post(event{kind: evSuspect, name: name})
		}
	}
	s.m.log.Log(context.Background(), level, msg)
	return len(p), nil
}

// levelOf maps memberlist's "[LEVEL] text" to a slog level and the text.
// memberlist's errors are a failure detector's daily business (a peer that
// died does not answer a TCP ping, a packet to it fails): they are logged
// as warnings, so that an agent's error log stays about the agent.
func levelOf(line string) (level slog.Level, msg string) {
	for _, l := range []struct {
		tag   string
		level slog.Level
	}{{"[DEBUG] ", slog.LevelDebug}, {"[INFO] ", slog.LevelInfo}, {"[WARN] ", slog.LevelWarn}, {"[ERR] ", slog.LevelWarn}, {"[ERROR] ", slog.LevelWarn}} {
		if msg, ok := strings.CutPrefix(line, l.tag); ok {
			return l.level, msg
		}
	}
	return slog.LevelInfo, line
}

// pump applies the queued events to the view, one goroutine, and once a
// second expires suspicions and forgets long-dead peers.
func (m *Member) pump(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		changed := false
		select {
		case <-ctx.Done():
			return
		case ev := <-m.events:
			changed = m.apply(ev)
		case now := <-tick.C:
			changed = m.expire(now)
		}
		if len(m.events) == 0 && m.overflow.CompareAndSwap(true, false) {
			m.resync()
			changed = true
		}
		if changed {
			select {
			case m.changed <- struct{}{}:
			default:
			}
		}
	}
}

// apply changes the view by one event and reports whether it changed.
func (m *Member) apply(ev event) bool {
	if ev.name == m.cfg.Name {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	v, known := m.views[ev.name]
	if !known {
		if !ev.hasNode {
			return false // a suspicion or ack of a peer not (or no longer) in the view
		}
		v = &View{Name: ev.name}
		m.views[ev.name] = v
	}
	before := *v
	if ev.hasNode {
		v.Addr = ev.addr
		v.Meta, v.MetaErr = DecodeMeta(ev.meta)
	}
	set := func(s State) {
		if v.State != s {
			v.State, v.Since = s, ev.at
		}
	}
	switch ev.kind {
	case evJoin, evUpdate:
		set(StateAlive)
	case evLeave:
		if v.Meta.Leaving {
			set(StateLeft)
		} else {
			set(StateDead)
		}
	case evSuspect:
		if v.State == StateAlive {
			set(StateSuspect)
		}
	case evAck:
		if v.State == StateSuspect {
			set(StateAlive)
		}
	}
	return before.State != v.State || before.Addr != v.Addr || before.Meta != v.Meta || !known
}

// expire turns a suspicion older than memberlist's longest suspicion
// timeout (plus a probe interval) back to alive: had the peer not refuted
// it, memberlist would have declared it dead by then. Dead and left peers
// older than ForgetAfter are forgotten.
func (m *Member) expire(now time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	longest := SuspicionTimeouts(m.tunables(), len(m.views)+1).Max + m.cfg.ProbeInterval
	changed := false
	for name, v := range m.views {
		switch {
		case v.State == StateSuspect && now.Sub(v.Since) > longest:
			v.State, v.Since = StateAlive, now
			changed = true
		case (v.State == StateDead || v.State == StateLeft) && now.Sub(v.Since) > m.cfg.ForgetAfter:
			delete(m.views, name)
			changed = true
		}
	}
	return changed
}

// resync rebuilds the view from memberlist's member list after events
// were dropped. Members lists alive and suspect members alike: a peer
// this view holds suspect stays suspect. Only names are read from it
// (memberlist changes the listed Nodes in place under its own lock, so
// their address and metadata cannot be read safely): a peer new to the
// view gets its address and metadata at its next update.
func (m *Member) resync() {
	m.stats.resyncs.Add(1)
	ml := m.ml.Load()
	now := time.Now()
	live := make(map[string]bool)
	for _, n := range ml.Members() {
		if n.Name != m.cfg.Name {
			live[n.Name] = true
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for name := range live {
		v, ok := m.views[name]
		if !ok {
			v = &View{Name: name}
			m.views[name] = v
		}
		if !v.State.Reachable() {
			v.State, v.Since = StateAlive, now
		}
	}
	for name, v := range m.views {
		if !live[name] && v.State.Reachable() {
			if v.Meta.Leaving {
				v.State = StateLeft
			} else {
				v.State = StateDead
			}
			v.Since = now
		}
	}
	m.log.Warn("gossip: event queue overflowed; view rebuilt from the member list", "members", len(live)+1)
}
