package network

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/netns"
)

// attachment is one container attached to a namespace.
type attachment struct {
	ref     container.Key
	ns      *namespace
	path    string // namespace file that must keep naming ns; "" for host network
	primary bool
	seq     uint64
}

// openNamespace opens the sockets of the namespace at path, learns its
// links and registers its subscription with the notification reader. For
// the agent's own namespace the sockets are opened without switching
// namespaces.
func (m *Monitor) openNamespace(path string, host bool) (*namespace, error) {
	h, id, err := openNS(path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var socks nsSockets
	if self, serr := statNS(netns.Self); serr == nil && self == id {
		socks, err = openSockets()
	} else {
		socks, err = openSocketsIn(h)
	}
	if err != nil {
		return nil, err
	}
	ns := &namespace{
		id: id, host: host, path: path,
		conn: socks.conn, sub: socks.sub, notify: m.notify,
		known:       make(map[int32]linkSig),
		interned:    make(map[int32]internedLink),
		linkPos:     make(map[int32]int),
		samples:     make(map[int32]counterSample),
		nextSamples: make(map[int32]counterSample),
		since:       make(map[conditionKey]time.Time),
	}
	// Learn the links after subscribing, so that no change falls between
	// (the socket queues them until the reader watches it).
	if err := m.seedKnown(ns); err != nil {
		socks.close()
		return nil, err
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		socks.close()
		return nil, fmt.Errorf("monitor closed: %w", errdefs.ErrUnavailable)
	}
	if err := m.notify.add(ns); err != nil {
		m.mu.Unlock()
		socks.close()
		return nil, err
	}
	m.stats.opened.Add(1)
	m.mu.Unlock()
	return ns, nil
}

// seedKnown replaces ns.known with the namespace's current links.
func (m *Monitor) seedKnown(ns *namespace) error {
	known := make(map[int32]linkSig)
	var rl rawLink
	ns.mu.Lock()
	if ns.closed {
		ns.mu.Unlock()
		return fmt.Errorf("network namespace %d closed: %w", ns.id.Ino, errdefs.ErrUnavailable)
	}
	m.dumpMu.Lock()
	err := ns.conn.dump(m.dumpBuf, unix.RTM_GETLINK, linkDumpBody, func(typ uint16, p []byte) {
		if typ == unix.RTM_NEWLINK && parseLink(p, &rl) == nil {
			known[rl.index] = sigOf(&rl)
		}
	})
	m.dumpMu.Unlock()
	ns.mu.Unlock()
	if err != nil && !errors.Is(err, errDumpInterrupted) {
		return fmt.Errorf("list links in network namespace %d: %w", ns.id.Ino, err)
	}
	ns.knownMu.Lock()
	ns.known = known
	ns.knownMu.Unlock()
	return nil
}

// close releases the namespace's sockets, unregistering the subscription
// from the notification reader first (under subMu, so that the reader is
// not receiving from it). Safe to call twice.
func (ns *namespace) close() {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.closed {
		return
	}
	ns.closed = true
	ns.stopping.Store(true)
	ns.conn.close()
	ns.subMu.Lock()
	ns.notify.remove(ns)
	ns.sub.close()
	ns.subMu.Unlock()
}

// Attach records that the container ref lives in the namespace src names,
// opening that namespace's sockets if it is the first container there.
// Attaching a container again moves it (a restarted task in a new
// namespace) or updates it. It returns an error wrapping errdefs.ErrInvalid
// for an empty source or ref, errdefs.ErrNotFound when the namespace does
// not exist (the task is gone), and errdefs.ErrUnavailable after Close.
func (m *Monitor) Attach(ref container.Key, src Source) error {
	if ref.ID == "" {
		return fmt.Errorf("attach %q: empty container id: %w", ref, errdefs.ErrInvalid)
	}
	path := src.Path
	if path == "" && src.PID != 0 {
		path = netns.OfPid(src.PID)
	}
	if path == "" && !src.HostNetwork {
		return fmt.Errorf("attach %s: no pid, namespace path or host network: %w", ref, errdefs.ErrInvalid)
	}

	m.attachMu.Lock()
	defer m.attachMu.Unlock()

	var ns *namespace
	if path == "" {
		ns = m.host
	} else {
		id, err := statNS(path)
		if err != nil {
			return fmt.Errorf("attach %s: %w", ref, err)
		}
		m.mu.Lock()
		closed := m.closed
		switch {
		case id == m.host.id:
			ns = m.host
			path = "" // a host-network container: nothing to watch for
		case m.namespaces[id.Ino] != nil && m.namespaces[id.Ino].id == id:
			ns = m.namespaces[id.Ino]
		}
		m.mu.Unlock()
		if closed {
			return fmt.Errorf("attach %s: monitor closed: %w", ref, errdefs.ErrUnavailable)
		}
		if ns == nil {
			if ns, err = m.openNamespace(path, false); err != nil {
				return fmt.Errorf("attach %s: %w", ref, err)
			}
			if ns.id != id { // the namespace file changed between stat and open
				m.closeNamespace(ns)
				return fmt.Errorf("attach %s: namespace %s changed while opening: %w", ref, path, errdefs.ErrConflict)
			}
			m.mu.Lock()
			if m.closed {
				m.mu.Unlock()
				m.closeNamespace(ns)
				return fmt.Errorf("attach %s: monitor closed: %w", ref, errdefs.ErrUnavailable)
			}
			m.namespaces[id.Ino] = ns
			m.mu.Unlock()
		}
	}

	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return fmt.Errorf("attach %s: monitor closed: %w", ref, errdefs.ErrUnavailable)
	}
	var release *namespace
	if old := m.attached[ref]; old != nil {
		if old.ns == ns {
			old.path, old.primary = path, src.Primary
			m.mu.Unlock()
			return nil
		}
		release = m.removeLocked(old)
	}
	m.attachSeq++
	a := &attachment{ref: ref, ns: ns, path: path, primary: src.Primary, seq: m.attachSeq}
	m.attached[ref] = a
	ns.containers = append(ns.containers, a)
	m.mu.Unlock()
	m.closeNamespace(release)
	return nil
}

// Detach forgets the container. When it was the last one in its namespace
// the namespace's sockets are closed. Detaching an unknown container does
// nothing.
func (m *Monitor) Detach(ref container.Key) {
	m.attachMu.Lock()
	defer m.attachMu.Unlock()
	m.mu.Lock()
	a := m.attached[ref]
	var release *namespace
	if a != nil {
		release = m.removeLocked(a)
	}
	m.mu.Unlock()
	m.closeNamespace(release)
}

// removeLocked removes a and returns its namespace when a was its last
// container (the caller closes it outside m.mu). m.mu must be held.
func (m *Monitor) removeLocked(a *attachment) *namespace {
	delete(m.attached, a.ref)
	ns := a.ns
	ns.containers = slices.DeleteFunc(ns.containers, func(x *attachment) bool { return x == a })
	if ns.host || len(ns.containers) > 0 {
		return nil
	}
	if m.namespaces[ns.id.Ino] == ns {
		delete(m.namespaces, ns.id.Ino)
	}
	return ns
}

// closeNamespace closes ns (nil: nothing) and drops its pending events.
func (m *Monitor) closeNamespace(ns *namespace) {
	if ns == nil {
		return
	}
	ns.close()
	m.stats.closed.Add(1)
	m.evMu.Lock()
	for k := range m.pending {
		if k.inode == ns.id.Ino {
			delete(m.pending, k)
		}
	}
	m.queue = slices.DeleteFunc(m.queue, func(k eventKey) bool { return k.inode == ns.id.Ino })
	m.evMu.Unlock()
}

// pruneStale detaches containers whose namespace file no longer names their
// namespace (the task exited, the bind mount was removed), so that a
// namespace nobody detached is still released. It returns how many.
func (m *Monitor) pruneStale() int {
	m.attachMu.Lock()
	defer m.attachMu.Unlock()
	m.mu.Lock()
	var stale []*attachment
	for _, a := range m.attached {
		if a.path == "" {
			continue
		}
		if id, err := statNS(a.path); err != nil || id != a.ns.id {
			stale = append(stale, a)
		}
	}
	var release []*namespace
	for _, a := range stale {
		if ns := m.removeLocked(a); ns != nil {
			release = append(release, ns)
		}
	}
	m.mu.Unlock()
	for _, a := range stale {
		m.log.Debug("container's network namespace is gone; detached", "container", a.ref.String(), "path", a.path)
	}
	for _, ns := range release {
		m.closeNamespace(ns)
	}
	return len(stale)
}
