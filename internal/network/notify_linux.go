package network

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
	"golang.org/x/sys/unix"
)

// Notifications of every namespace are read by one goroutine (readNotifications)
// that waits on all subscription sockets at once with one epoll instance and
// receives into one buffer, so that a namespace costs two sockets and its
// read state, not a goroutine and a buffer.
//
// Locking. A socket is registered with a registration id, never reused, as
// its epoll data; the notifier maps ids to namespaces. The reader looks the
// id up, then receives and handles the namespace's datagrams under the
// namespace's subMu, checking first that the registration is still the one
// epoll reported. Closing a namespace takes subMu, removes the socket from
// the epoll set (EPOLL_CTL_DEL) and from the map, then closes it: so the
// reader never receives on a closed descriptor, nor on a reused one, and a
// stale epoll event for a closed namespace finds nothing. Read checks for
// queued notifications under subMu too, so a datagram the reader has taken
// has had its dirty flags set by then. The namespace's socket is registered
// after its links were first learnt; it queues changes meanwhile. Lock order:
// namespace.mu, namespace.subMu, then Monitor.mu, evMu or knownMu (taken by
// the handling of a datagram); notifier.mu is taken last and nothing is
// taken under it.
//
// Shutdown. Close closes the namespaces, writes the eventfd (registered
// with id wakeID), waits for the reader to return and only then closes the
// epoll instance and the eventfd; notifier.closed (under notifier.mu) keeps
// a namespace closed after that from touching the epoll descriptor.
//
// Fairness. Level-triggered: a socket still readable after maxPerWake
// datagrams is reported again by the next epoll_wait, after the sockets
// that were ready meanwhile, so a namespace with a storm of notifications
// does not starve the others. The exception is an overrun (ENOBUFS): the
// socket's queue is then read to the end before its links are re-learnt
// (see drain). A resync dumps the namespace's links from the reader
// goroutine, so the other namespaces wait for that dump (their sockets
// queue meanwhile).

const (
	// wakeID is the eventfd's epoll data; sockets are numbered from 1.
	wakeID = 0
	// notifyBufferSize is the receive buffer of the reader. Link
	// notifications are one message per datagram, about 1.5 KiB for a veth;
	// a longer one (a device with many VFs) is truncated and turned into a
	// resync.
	notifyBufferSize = 8 << 10
	// maxPerWake bounds the datagrams taken from one socket per report.
	maxPerWake = 16
	// maxOverrunDrain bounds them after an overrun (ENOBUFS), when the
	// socket's queue only shrinks until it is empty: a full default
	// receive buffer (208 KiB) is about a hundred link notifications.
	maxOverrunDrain = 1024
	// maxEventsPerWait is the size of the epoll_wait event array.
	maxEventsPerWait = 32
)

// notifier is the epoll instance and eventfd of the notification reader and
// the registered subscription sockets.
type notifier struct {
	epfd, wakefd int // valid until close

	mu     sync.Mutex // guards the fields below and every epoll_ctl
	closed bool
	nextID uint64
	regs   map[uint64]*namespace // by registration id
}

func newNotifier() (*notifier, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	setEventID(&ev, wakeID)
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(wakefd)
		unix.Close(epfd)
		return nil, fmt.Errorf("epoll add eventfd: %w", err)
	}
	return &notifier{epfd: epfd, wakefd: wakefd, nextID: wakeID + 1, regs: make(map[uint64]*namespace)}, nil
}

// The 64-bit epoll data is the Fd and Pad fields of unix.EpollEvent.
func setEventID(ev *unix.EpollEvent, id uint64) {
	ev.Fd, ev.Pad = int32(uint32(id)), int32(uint32(id>>32))
}

func eventID(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// add registers ns's subscription socket. ns must not be visible to other
// goroutines yet (ns.reg is set without ns.subMu; publishing ns through
// n.mu orders it before the reader's use).
func (n *notifier) add(ns *namespace) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return fmt.Errorf("monitor closed: %w", errdefs.ErrUnavailable)
	}
	id := n.nextID
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	setEventID(&ev, id)
	if err := unix.EpollCtl(n.epfd, unix.EPOLL_CTL_ADD, ns.sub.fd, &ev); err != nil {
		return fmt.Errorf("epoll add subscription: %w", err)
	}
	n.nextID++
	ns.reg = id
	n.regs[id] = ns
	return nil
}

// remove unregisters ns's subscription socket, if registered. ns.subMu must
// be held and the socket still open.
func (n *notifier) remove(ns *namespace) {
	if ns.reg == 0 {
		return
	}
	n.mu.Lock()
	delete(n.regs, ns.reg)
	if !n.closed {
		_ = unix.EpollCtl(n.epfd, unix.EPOLL_CTL_DEL, ns.sub.fd, nil)
	}
	n.mu.Unlock()
	ns.reg = 0
}

// lookup returns the namespace registered as id (nil: removed since).
func (n *notifier) lookup(id uint64) *namespace {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.regs[id]
}

// wake makes the reader's epoll_wait return with wakeID.
func (n *notifier) wake() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1) // an eventfd counts in native byte order
	_, _ = unix.Write(n.wakefd, one[:])
}

// close releases the epoll instance and the eventfd. The reader must have
// returned.
func (n *notifier) close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	n.closed = true
	clear(n.regs)
	unix.Close(n.epfd)
	unix.Close(n.wakefd)
}

// readNotifications is the notification reader: it waits for any
// registered socket to become readable and handles its datagrams, until
// Close wakes it.
func (m *Monitor) readNotifications() {
	defer m.wg.Done()
	r := notifyReader{m: m, buf: make([]byte, notifyBufferSize)}
	var events [maxEventsPerWait]unix.EpollEvent
	for {
		n, err := unix.EpollWait(m.notify.epfd, events[:], -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			m.log.Error("network notifications stopped", "err", err)
			return
		}
		for i := range events[:n] {
			id := eventID(&events[i])
			if id == wakeID {
				select {
				case <-m.done:
					return
				default: // not Close: take the count so that it stops reporting
					var b [8]byte
					_, _ = unix.Read(m.notify.wakefd, b[:])
					continue
				}
			}
			r.drain(id)
		}
	}
}

// notifyReader is the reader goroutine's state.
type notifyReader struct {
	m   *Monitor
	buf []byte
	rl  rawLink
}

// drain handles up to maxPerWake datagrams of the socket registered as id
// (after lost notifications, every datagram still queued; see below).
func (r *notifyReader) drain(id uint64) {
	m := r.m
	ns := m.notify.lookup(id)
	if ns == nil {
		return // closed after epoll_wait reported it
	}
	resync, overrun := false, false
	var resyncAt time.Time
	ns.subMu.Lock()
	for i := 0; i < maxPerWake || (overrun && i < maxOverrunDrain); i++ {
		if ns.reg != id {
			break // closed meanwhile (the socket may be gone)
		}
		n, truncated, err := ns.sub.receive(r.buf)
		now := time.Now()
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if errors.Is(err, unix.ENOBUFS) {
			// The kernel reports the overrun before the datagrams still
			// queued, and keeps dropping notifications without a further
			// error until they have been read. Take them first, so that the
			// links are re-learnt once no change can be lost any more.
			if !resync {
				resyncAt = now
			}
			resync, overrun = true, true
			continue
		}
		if err == nil && truncated {
			if !resync {
				resyncAt = now
			}
			resync = true
			if overrun {
				continue
			}
			break // the rest at the next report, after the resync
		}
		if err != nil {
			// Not expected from a netlink socket. Stop watching it rather
			// than have a level-triggered epoll report it forever.
			m.log.Warn("network namespace notifications stopped", "netns_inode", ns.id.Ino, "err", err)
			m.notify.remove(ns)
			break
		}
		_, _ = walkMessages(r.buf[:n], anySeq, func(typ uint16, p []byte) {
			switch typ {
			case unix.RTM_NEWLINK, unix.RTM_DELLINK:
				if parseLink(p, &r.rl) == nil {
					m.linkNotification(ns, typ == unix.RTM_DELLINK, &r.rl, now)
				}
			case unix.RTM_NEWADDR, unix.RTM_DELADDR:
				ns.addrsDirty.Store(true)
			case unix.RTM_NEWROUTE, unix.RTM_DELROUTE:
				ns.routesDirty.Store(true)
			}
		})
	}
	ns.subMu.Unlock()
	// Outside subMu: resync dumps the links under ns.mu, which close holds
	// while it takes subMu.
	if resync && !ns.stopping.Load() {
		m.resync(ns, resyncAt)
	}
}
