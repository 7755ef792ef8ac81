package network

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/netns"
	"golang.org/x/sys/unix"
)

// Config configures a Monitor. Start from DefaultConfig.
type Config struct {
	// Logger receives warnings (a namespace that cannot be read, lost
	// notifications). Nil means slog.Default().
	Logger *slog.Logger
	// HostNetNSPath is the namespace treated as the host's: "" means the
	// agent's own, that of the thread calling New (/proc/thread-self/ns/net;
	// /proc/self names the main thread, which stays in whatever namespace a
	// goroutine that exited locked to it had entered). Tests point it at a
	// namespace they created so that they never touch the machine's
	// interfaces.
	HostNetNSPath string
	// Limits are the error and drop rates that raise conditions.
	Limits Limits
	// EventBuffer is the capacity of the Events channel (0: 64; links with
	// events waiting beyond it are coalesced, see MaxPendingEvents).
	EventBuffer int
	// MaxPendingEvents bounds the link events waiting while the Events
	// channel is full, one per link (0: 4096). Beyond it new links' events
	// are dropped and counted; events of links already waiting are merged.
	MaxPendingEvents int
}

// DefaultConfig returns the defaults: 1 error/s and 10 drops/s per link.
func DefaultConfig() Config {
	return Config{
		Limits:           Limits{ErrorsPerSecond: 1, DropsPerSecond: 10},
		EventBuffer:      64,
		MaxPendingEvents: 4096,
	}
}

// Source says where a container's network namespace is.
type Source struct {
	// PID is a process of the container's task; its /proc/PID/ns/net is
	// used. Ignored when Path is set.
	PID uint32
	// Path is a namespace file (a bind mount such as /var/run/netns/NAME,
	// or a /proc/PID/ns/net).
	Path string
	// HostNetwork: the container shares the host's namespace. PID and Path
	// are then not needed; when given and they turn out to be the host's
	// namespace the container is recognised as host-network anyway.
	HostNetwork bool
	// Primary marks the container that names the namespace: a pod's
	// sandbox. Host veths whose peer is in the namespace are attributed to
	// it (else to the earliest attached container).
	Primary bool
}

// Monitor reads network health for the host and every attached container's
// namespace through netlink sockets it keeps open per namespace: one for
// requests (dumps, bringing links up) and one subscribed to link, address
// and route notifications. A namespace is entered once, when its first
// container is attached, and its sockets are closed when its last container
// is detached or its namespace file disappears. One goroutine reads the
// notifications of every namespace (an epoll instance over the
// subscription sockets, see notify_linux.go).
//
// All methods are safe for concurrent use. Read calls are serialised.
type Monitor struct {
	cfg    Config
	log    *slog.Logger
	host   *namespace
	events chan Event
	done   chan struct{} // closed by Close
	wake   chan struct{} // an event is pending (capacity 1)

	attachMu sync.Mutex // serialises Attach, Detach and pruning

	mu         sync.Mutex // guards the fields below and every namespace's containers
	closed     bool
	namespaces map[uint64]*namespace // container namespaces by inode; the host is not in it
	attached   map[ContainerRef]*attachment
	attachSeq  uint64

	evMu    sync.Mutex // guards pending and queue
	pending map[eventKey]*Event
	queue   []eventKey

	readMu sync.Mutex // serialises Read; guards buf and the namespaces' read state
	buf    []byte

	// dumpMu guards dumpBuf, the receive buffer of the requests made
	// outside Read (learning a namespace's links, LinkUp). Taken under a
	// namespace's mu.
	dumpMu  sync.Mutex
	dumpBuf []byte

	notify  *notifier
	running atomic.Bool
	wg      sync.WaitGroup // the notification reader

	stats monitorStats
}

type eventKey struct {
	inode uint64
	index int32 // -1 for Resync
}

// attachment is one container attached to a namespace.
type attachment struct {
	ref     ContainerRef
	ns      *namespace
	path    string // namespace file that must keep naming ns; "" for host network
	primary bool
	seq     uint64
}

// namespace is one network namespace with its sockets and read state.
type namespace struct {
	id   nsIdentity
	host bool
	path string

	mu       sync.Mutex // guards conn, sub, closed; held for the length of a request
	conn     *rtnlConn
	sub      *subscription
	closed   bool
	stopping atomic.Bool // set before the sockets close, read by the notification reader

	// subMu is held by the notification reader while it receives from sub
	// and handles what it got, and by close (under mu) while it unregisters
	// and closes sub. It guards reg.
	subMu  sync.Mutex
	reg    uint64 // registration id with the notifier; 0 when not registered
	notify *notifier

	containers []*attachment // guarded by Monitor.mu, in attach order

	linksDirty  atomic.Bool // a link notification came: dump links in full
	addrsDirty  atomic.Bool
	routesDirty atomic.Bool

	knownMu sync.Mutex
	known   map[int32]linkSig // last notified state by index, for event types

	// Read state, guarded by Monitor.readMu.
	haveLinks   bool
	links       []Link        // as last dumped in full, without addresses and peers
	linkPos     map[int32]int // index in links by link index
	haveAddrs   bool
	haveRoutes  bool
	addrs       map[int32][]string
	hasDefault  bool
	interned    map[int32]internedLink
	samples     map[int32]counterSample
	nextSamples map[int32]counterSample
	since       map[conditionKey]time.Time
}

// linkSig is the part of a link whose change is worth an event.
type linkSig struct {
	flags uint32
	oper  uint8
	mtu   uint32
	name  string
	mac   string
}

// internedLink keeps a link's strings between cycles so that an unchanged
// name, MAC or kind costs no allocation.
type internedLink struct {
	name, mac, kind string
}

// New opens the host namespace's sockets. Call Run to deliver events and
// Close (or cancel Run) to release everything.
func New(cfg Config) (*Monitor, error) {
	def := DefaultConfig()
	if cfg.EventBuffer == 0 {
		cfg.EventBuffer = def.EventBuffer
	}
	if cfg.MaxPendingEvents == 0 {
		cfg.MaxPendingEvents = def.MaxPendingEvents
	}
	if cfg.EventBuffer < 0 || cfg.MaxPendingEvents < 0 {
		return nil, fmt.Errorf("network monitor: EventBuffer %d and MaxPendingEvents %d must not be negative: %w",
			cfg.EventBuffer, cfg.MaxPendingEvents, errdefs.ErrInvalid)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	m := &Monitor{
		cfg:        cfg,
		log:        log.With("component", "network"),
		events:     make(chan Event, cfg.EventBuffer),
		done:       make(chan struct{}),
		wake:       make(chan struct{}, 1),
		namespaces: make(map[uint64]*namespace),
		attached:   make(map[ContainerRef]*attachment),
		pending:    make(map[eventKey]*Event),
		buf:        make([]byte, dumpBufferSize),
		dumpBuf:    make([]byte, dumpBufferSize),
	}
	m.stats.cycle = newCycleHistogram()
	var err error
	if m.notify, err = newNotifier(); err != nil {
		return nil, fmt.Errorf("network monitor: %w", err)
	}
	if cfg.HostNetNSPath == "" {
		m.host, err = m.openNamespace(netns.Self, true)
	} else {
		m.host, err = m.openNamespace(cfg.HostNetNSPath, true)
	}
	if err != nil {
		m.notify.close()
		return nil, fmt.Errorf("network monitor: host namespace: %w", err)
	}
	m.wg.Add(1)
	go m.readNotifications()
	return m, nil
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

func sigOf(rl *rawLink) linkSig {
	return linkSig{flags: rl.flags, oper: rl.oper, mtu: rl.mtu, name: string(rl.name), mac: string(rl.mac)}
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
func (m *Monitor) Attach(ref ContainerRef, src Source) error {
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
func (m *Monitor) Detach(ref ContainerRef) {
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

// Close releases every namespace's sockets and stops the notification
// reader, waiting for it. It is idempotent. Run calls it when its context
// ends.
func (m *Monitor) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	all := []*namespace{m.host}
	for _, ns := range m.namespaces {
		all = append(all, ns)
	}
	clear(m.namespaces)
	clear(m.attached)
	m.mu.Unlock()
	close(m.done)
	for _, ns := range all {
		ns.close()
		m.stats.closed.Add(1)
	}
	m.notify.wake()
	m.wg.Wait()
	m.notify.close()
	return nil
}

// OpenNamespaces returns how many namespaces have sockets open, the host's
// included (0 after Close).
func (m *Monitor) OpenNamespaces() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0
	}
	return 1 + len(m.namespaces)
}

// OpenDescriptors returns how many file descriptors the monitor holds: two
// sockets per open namespace, and the epoll instance and eventfd of the
// notification reader (0 after Close). Namespace files are closed once the
// sockets exist (a socket keeps its namespace alive).
func (m *Monitor) OpenDescriptors() int {
	n := m.openSockets()
	if n == 0 {
		return 0
	}
	return n + 2
}

// openSockets returns how many netlink sockets the monitor holds: two per
// open namespace.
func (m *Monitor) openSockets() int { return 2 * m.OpenNamespaces() }

// HostInode returns the inode of the namespace treated as the host's.
func (m *Monitor) HostInode() uint64 { return m.host.id.Ino }

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

func (m *Monitor) containersOf(ns *namespace) []ContainerRef {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(ns.containers) == 0 {
		return nil
	}
	out := make([]ContainerRef, len(ns.containers))
	for i, a := range ns.containers {
		out[i] = a.ref
	}
	return out
}

// owner returns the container that names ns. m.mu must be held.
func (ns *namespace) ownerLocked() ContainerRef {
	for _, a := range ns.containers {
		if a.primary {
			return a.ref
		}
	}
	if len(ns.containers) > 0 {
		return ns.containers[0].ref
	}
	return ContainerRef{}
}

// rawToLink converts a parsed link message, reusing the interned strings
// when they still match.
func rawToLink(rl *rawLink, in internedLink) Link {
	l := Link{
		Index:          rl.index,
		MTU:            rl.mtu,
		OperState:      OperState(rl.oper),
		AdminUp:        rl.flags&unix.IFF_UP != 0,
		Carrier:        rl.flags&unix.IFF_LOWER_UP != 0,
		CarrierChanges: uint64(rl.carrierChanges),
		Counters:       rl.counters,
		PeerIndex:      rl.link,
		PeerNetNSID:    rl.netnsid,
	}
	if string(rl.name) == in.name {
		l.Name = in.name
	} else {
		l.Name = string(rl.name)
	}
	kind := "device"
	switch {
	case len(rl.kind) > 0:
		if string(rl.kind) == in.kind {
			kind = in.kind
		} else {
			kind = string(rl.kind)
		}
	case rl.ifiType == unix.ARPHRD_LOOPBACK:
		kind = "loopback"
	}
	l.Kind = kind
	if len(rl.mac) > 0 {
		if in.mac != "" && macEqual(in.mac, rl.mac) {
			l.MAC = in.mac
		} else {
			l.MAC = net.HardwareAddr(rl.mac).String()
		}
	}
	return l
}

// macEqual compares a formatted MAC with raw bytes without allocating.
func macEqual(s string, b []byte) bool {
	const hexdigits = "0123456789abcdef"
	if len(s) != 3*len(b)-1 {
		return false
	}
	for i, c := range b {
		if s[3*i] != hexdigits[c>>4] || s[3*i+1] != hexdigits[c&0xf] {
			return false
		}
	}
	return true
}

// Read reads every open namespace once: links with counters, addresses
// (re-read only after an address notification), the default route
// (re-read only after a route or link notification), veth peers across
// namespaces and the conditions that hold. A namespace that cannot be read
// is left out and its error added to Snapshot.Errors; Read itself fails
// only when ctx is done or the monitor is closed (errdefs.ErrUnavailable).
// Containers whose namespace file has disappeared are detached first.
//
// Calls are serialised. The returned snapshot belongs to the caller, but its
// Addresses slices are shared with later snapshots and must not be modified.
func (m *Monitor) Read(ctx context.Context) (*Snapshot, error) {
	m.readMu.Lock()
	defer m.readMu.Unlock()
	start := time.Now()
	m.pruneStale()

	type item struct {
		ns         *namespace
		containers []ContainerRef
		owner      ContainerRef
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, fmt.Errorf("network monitor: closed: %w", errdefs.ErrUnavailable)
	}
	items := make([]item, 0, 1+len(m.namespaces))
	items = append(items, item{ns: m.host})
	for _, ns := range m.namespaces {
		items = append(items, item{ns: ns})
	}
	slices.SortFunc(items[1:], func(a, b item) int { return cmp.Compare(a.ns.id.Ino, b.ns.id.Ino) })
	for i := range items {
		ns := items[i].ns
		if len(ns.containers) > 0 {
			items[i].containers = make([]ContainerRef, len(ns.containers))
			for j, a := range ns.containers {
				items[i].containers[j] = a.ref
			}
		}
		items[i].owner = ns.ownerLocked()
	}
	m.mu.Unlock()

	snap := &Snapshot{Time: start, Namespaces: make([]NamespaceState, 0, len(items))}
	owners := make(map[uint64]ContainerRef, len(items))
	read := make([]*namespace, 0, len(items))
	for _, it := range items {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		st := NamespaceState{Inode: it.ns.id.Ino, Host: it.ns.host, Containers: it.containers}
		if err := m.readNamespace(it.ns, &st); err != nil {
			m.stats.readErrors.Add(1)
			snap.Errors = append(snap.Errors, fmt.Errorf("network namespace %d (%s): %w", it.ns.id.Ino, it.ns.path, err))
			continue
		}
		snap.Namespaces = append(snap.Namespaces, st)
		owners[st.Inode] = it.owner
		read = append(read, it.ns)
	}
	linkPeers(snap, owners)
	for i := range snap.Namespaces {
		st, ns := &snap.Namespaces[i], read[i]
		st.Conditions = deriveConditions(st, ns.samples, m.cfg.Limits)
		stampSince(st.Conditions, ns.since, st.Time)
		clear(ns.nextSamples)
		for j := range st.Links {
			ns.nextSamples[st.Links[j].Index] = sampleOf(st.Links[j].Counters, st.Time)
		}
		ns.samples, ns.nextSamples = ns.nextSamples, ns.samples
	}
	m.stats.cycle.Observe(time.Since(start).Seconds())
	return snap, nil
}

// readNamespace fills st from ns. m.readMu must be held.
func (m *Monitor) readNamespace(ns *namespace, st *NamespaceState) error {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.closed {
		return fmt.Errorf("closed: %w", errdefs.ErrUnavailable)
	}
	links, err := m.readLinks(ns)
	if err != nil {
		return err
	}
	st.Time = time.Now()

	if dirty := ns.addrsDirty.Swap(false); dirty || !ns.haveAddrs {
		addrs := make(map[int32][]string)
		err := ns.conn.dump(m.buf, unix.RTM_GETADDR, addrDumpBody, func(typ uint16, p []byte) {
			if typ != unix.RTM_NEWADDR {
				return
			}
			if a, ok := parseAddr(p); ok {
				addrs[a.index] = append(addrs[a.index], a.prefix.String())
			}
		})
		if err != nil {
			ns.addrsDirty.Store(true)
			if !errors.Is(err, errDumpInterrupted) {
				return fmt.Errorf("list addresses: %w", err)
			}
		}
		ns.addrs, ns.haveAddrs = addrs, true
	}
	if dirty := ns.routesDirty.Swap(false); dirty || !ns.haveRoutes {
		found := false
		err := ns.conn.dump(m.buf, unix.RTM_GETROUTE, routeDumpBody, func(typ uint16, p []byte) {
			if typ == unix.RTM_NEWROUTE && !found && isDefaultRoute(p) {
				found = true
			}
		})
		if err != nil {
			ns.routesDirty.Store(true)
			if !errors.Is(err, errDumpInterrupted) {
				return fmt.Errorf("list routes: %w", err)
			}
		}
		ns.hasDefault, ns.haveRoutes = found, true
	}
	for i := range links {
		links[i].Addresses = ns.addrs[links[i].Index]
	}
	st.Links = links
	st.HasDefaultRoute = ns.hasDefault
	return nil
}

// readLinks returns ns's links with fresh counters. After a link
// notification (or on the first read) it dumps the links in full; otherwise
// link state is as last dumped and only counters are read, with an
// RTM_GETSTATS dump of IFLA_STATS_LINK_64 that costs the kernel a fraction
// of a full link dump. A stats dump that does not match the cached links
// (a notification was missed) falls back to a full dump. m.readMu and ns.mu
// must be held.
func (m *Monitor) readLinks(ns *namespace) ([]Link, error) {
	// Notifications already queued but not yet taken by the reader would
	// make the cached state stale: treat them as read. Under subMu, which
	// the reader holds from taking datagrams until it has marked what they
	// changed: so every notification sent before this point is either
	// still queued or marked.
	ns.subMu.Lock()
	pending := ns.sub.pending()
	ns.subMu.Unlock()
	if pending {
		ns.linksDirty.Store(true)
		ns.addrsDirty.Store(true)
		ns.routesDirty.Store(true)
	}
	if !ns.linksDirty.Swap(false) && ns.haveLinks {
		links := slices.Clone(ns.links)
		matched := 0
		err := ns.conn.dump(m.buf, unix.RTM_GETSTATS, statsDumpBody, func(typ uint16, p []byte) {
			if typ != unix.RTM_NEWSTATS {
				return
			}
			idx, c, ok := parseStats(p)
			if i, known := ns.linkPos[idx]; ok && known {
				links[i].Counters = c
				matched++
			} else {
				matched = -len(links) - 1 // an unknown link: dump in full
			}
		})
		if err == nil && matched == len(links) {
			m.stats.statsDumps.Add(1)
			return links, nil
		}
		if err != nil && !errors.Is(err, errDumpInterrupted) && !errors.Is(err, unix.EOPNOTSUPP) {
			return nil, fmt.Errorf("link stats: %w", err)
		}
	}
	links := make([]Link, 0, len(ns.links))
	var rl rawLink
	err := ns.conn.dump(m.buf, unix.RTM_GETLINK, linkDumpBody, func(typ uint16, p []byte) {
		if typ != unix.RTM_NEWLINK || parseLink(p, &rl) != nil {
			return
		}
		in := ns.interned[rl.index]
		l := rawToLink(&rl, in)
		if l.Name != in.name || l.MAC != in.mac || l.Kind != in.kind {
			ns.interned[rl.index] = internedLink{name: l.Name, mac: l.MAC, kind: l.Kind}
		}
		links = append(links, l)
	})
	if err != nil {
		ns.linksDirty.Store(true)
		if !errors.Is(err, errDumpInterrupted) {
			return nil, fmt.Errorf("list links: %w", err)
		}
	}
	m.stats.linkDumps.Add(1)
	clear(ns.linkPos)
	for i := range links {
		ns.linkPos[links[i].Index] = i
	}
	for idx := range ns.interned { // forget links that are gone
		if _, ok := ns.linkPos[idx]; !ok {
			delete(ns.interned, idx)
		}
	}
	ns.links, ns.haveLinks = links, true
	return slices.Clone(links), nil
}

// LinkUp sets the link named ifname administratively up in the namespace
// with inode netnsInode (0 or HostInode() for the host). The namespace must
// be attached. Errors wrap errdefs.ErrInvalid (bad name), ErrNotFound (no
// such namespace or link), ErrPermission, or ErrUnavailable (closed).
func (m *Monitor) LinkUp(ctx context.Context, netnsInode uint64, ifname string) error {
	if ifname == "" || len(ifname) >= unix.IFNAMSIZ || ifname == "." || ifname == ".." {
		return fmt.Errorf("link up %q: invalid interface name: %w", ifname, errdefs.ErrInvalid)
	}
	for _, c := range ifname {
		if c == '/' || c == ':' || c <= ' ' || c == 0x7f {
			return fmt.Errorf("link up %q: invalid interface name: %w", ifname, errdefs.ErrInvalid)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return fmt.Errorf("link up %s: monitor closed: %w", ifname, errdefs.ErrUnavailable)
	}
	ns := m.host
	if netnsInode != 0 && netnsInode != m.host.id.Ino {
		ns = m.namespaces[netnsInode]
	}
	m.mu.Unlock()
	if ns == nil {
		return fmt.Errorf("link up %s: network namespace %d is not attached: %w", ifname, netnsInode, errdefs.ErrNotFound)
	}
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.closed {
		return fmt.Errorf("link up %s: network namespace %d closed: %w", ifname, netnsInode, errdefs.ErrUnavailable)
	}
	m.dumpMu.Lock()
	err := ns.conn.setLinkUp(m.dumpBuf, ifname)
	m.dumpMu.Unlock()
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENODEV):
		return fmt.Errorf("link up %s in network namespace %d: %w: %w", ifname, ns.id.Ino, errdefs.ErrNotFound, err)
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("link up %s in network namespace %d: %w: %w", ifname, ns.id.Ino, errdefs.ErrPermission, err)
	}
	return fmt.Errorf("link up %s in network namespace %d: %w", ifname, ns.id.Ino, err)
}
