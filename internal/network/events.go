package network

import (
	"context"
	"fmt"
	"time"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
)

type eventKey struct {
	inode uint64
	index int32 // -1 for Resync
}

// linkSig is the part of a link whose change is worth an event.
type linkSig struct {
	flags uint32
	oper  uint8
	mtu   uint32
	name  string
	mac   string
}

func sigOf(rl *rawLink) linkSig {
	return linkSig{flags: rl.flags, oper: rl.oper, mtu: rl.mtu, name: string(rl.name), mac: string(rl.mac)}
}

// Events returns the channel link events are delivered on while Run runs.
// It is closed when Run returns. Consumers that fall behind lose nothing
// but detail: while the channel is full, the events of one link are merged
// (the latest state wins; an addition followed by changes stays an
// addition) and counted as coalesced; beyond MaxPendingEvents links, new
// links' events are dropped and counted. The netlink readers never block
// on the consumer.
func (m *Monitor) Events() <-chan Event { return m.events }

// Run delivers events until ctx is done, then closes the monitor and the
// Events channel. It returns nil on cancellation, and an error wrapping
// errdefs.ErrConflict if Run is already running or has run.
func (m *Monitor) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return fmt.Errorf("network monitor: Run called twice: %w", errdefs.ErrConflict)
	}
	defer close(m.events)
	defer m.Close()
	for {
		ev, ok := m.pop()
		if !ok {
			select {
			case <-ctx.Done():
				return nil
			case <-m.done:
				return nil
			case <-m.wake:
				continue
			}
		}
		select {
		case m.events <- ev:
			m.stats.delivered.Add(1)
		case <-ctx.Done():
			return nil
		case <-m.done:
			return nil
		}
	}
}

func (m *Monitor) pop() (Event, bool) {
	m.evMu.Lock()
	defer m.evMu.Unlock()
	for len(m.queue) > 0 {
		k := m.queue[0]
		m.queue = m.queue[1:]
		if ev, ok := m.pending[k]; ok {
			delete(m.pending, k)
			return *ev, true
		}
	}
	m.queue = m.queue[:0:0] // let the backing array go once drained
	return Event{}, false
}

// push queues ev without blocking, merging it with a pending event of the
// same link.
func (m *Monitor) push(ev Event) {
	k := eventKey{ev.NetNSInode, ev.Link.Index}
	if ev.Type == Resync {
		k.index = -1
	}
	m.evMu.Lock()
	if p, ok := m.pending[k]; ok {
		if !(p.Type == LinkAdded && ev.Type == LinkChanged) {
			p.Type = ev.Type
		}
		p.Time, p.Link, p.Containers = ev.Time, ev.Link, ev.Containers
		m.stats.coalesced.Add(1)
	} else if len(m.pending) >= m.cfg.MaxPendingEvents {
		m.stats.dropped.Add(1)
	} else {
		m.pending[k] = &ev
		m.queue = append(m.queue, k)
	}
	m.evMu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// linkNotification turns one link message into an event, unless nothing
// worth reporting changed.
func (m *Monitor) linkNotification(ns *namespace, removed bool, rl *rawLink, now time.Time) {
	// The kernel flushes a link's IPv4 routes when it goes down without a
	// route notification; re-read routes after any link change.
	ns.linksDirty.Store(true)
	ns.routesDirty.Store(true)
	sig := sigOf(rl)
	typ := LinkChanged
	ns.knownMu.Lock()
	old, existed := ns.known[rl.index]
	switch {
	case removed:
		delete(ns.known, rl.index)
		typ = LinkRemoved
	case !existed:
		ns.known[rl.index] = sig
		typ = LinkAdded
	case old == sig:
		ns.knownMu.Unlock()
		return
	default:
		ns.known[rl.index] = sig
	}
	ns.knownMu.Unlock()
	m.push(Event{
		Type: typ, Time: now, NetNSInode: ns.id.Ino, Host: ns.host,
		Containers: m.containersOf(ns),
		Link:       rawToLink(rl, internedLink{}),
	})
}

// resync handles lost notifications: everything is re-read at the next
// cycle, the known links are re-learnt, and consumers get a Resync event.
func (m *Monitor) resync(ns *namespace, now time.Time) {
	m.stats.resyncs.Add(1)
	ns.linksDirty.Store(true)
	ns.addrsDirty.Store(true)
	ns.routesDirty.Store(true)
	if err := m.seedKnown(ns); err != nil {
		m.log.Warn("re-learning links after lost notifications", "netns_inode", ns.id.Ino, "err", err)
	}
	m.push(Event{Type: Resync, Time: now, NetNSInode: ns.id.Ino, Host: ns.host, Containers: m.containersOf(ns)})
}

func (m *Monitor) containersOf(ns *namespace) []container.Key {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(ns.containers) == 0 {
		return nil
	}
	out := make([]container.Key, len(ns.containers))
	for i, a := range ns.containers {
		out[i] = a.ref
	}
	return out
}
