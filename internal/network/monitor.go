package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/netns"
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
	attached   map[container.Key]*attachment
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
		attached:   make(map[container.Key]*attachment),
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

// owner returns the container that names ns. m.mu must be held.
func (ns *namespace) ownerLocked() container.Key {
	for _, a := range ns.containers {
		if a.primary {
			return a.ref
		}
	}
	if len(ns.containers) > 0 {
		return ns.containers[0].ref
	}
	return container.Key{}
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
