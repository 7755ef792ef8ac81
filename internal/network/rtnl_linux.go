package network

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A small rtnetlink client of our own for the per-cycle dumps, the link
// notifications and bringing a link up. vishvananda/netlink's Handle would do,
// but it does not decode IFLA_CARRIER_CHANGES, allocates a full Link (with
// every link type's attributes) per link per dump, and its LinkSubscribe
// reader blocks on an unbuffered send; reading a few attributes into reused
// buffers keeps a cycle at 100 namespaces in a few milliseconds of CPU.

// Multicast groups of the subscription socket (RTNLGRP_* as bits).
const subscriptionGroups = 1<<(unix.RTNLGRP_LINK-1) |
	1<<(unix.RTNLGRP_IPV4_IFADDR-1) | 1<<(unix.RTNLGRP_IPV6_IFADDR-1) |
	1<<(unix.RTNLGRP_IPV4_ROUTE-1) | 1<<(unix.RTNLGRP_IPV6_ROUTE-1)

// dumpBufferSize is the receive buffer for dumps: the kernel fills dump
// datagrams up to 32 KiB (more with large pages), so 64 KiB never truncates.
const dumpBufferSize = 64 << 10

// rtnlConn is a NETLINK_ROUTE socket for requests (dumps, set link). It is
// not safe for concurrent use: the namespace's dumpMu serialises it.
type rtnlConn struct {
	fd  int
	seq uint32
}

// seqBase spreads sequence numbers across connections (debugging aid only;
// replies are matched per socket).
var seqBase atomic.Uint32

// openConn opens a request socket in the calling thread's network namespace.
func openConn() (*rtnlConn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	// A reply never takes seconds; the timeout keeps a wedged kernel from
	// holding a read cycle forever.
	tv := unix.Timeval{Sec: 5}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink socket timeout: %w", err)
	}
	// Ask the kernel to check dump requests strictly (and to filter route
	// dumps by the header): harmless where unsupported.
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 1)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	seq := seqBase.Add(1 << 20)
	if seq == anySeq {
		seq = seqBase.Add(1 << 20)
	}
	return &rtnlConn{fd: fd, seq: seq}, nil
}

func (c *rtnlConn) close() error {
	if c == nil || c.fd < 0 {
		return nil
	}
	err := unix.Close(c.fd)
	c.fd = -1
	return err
}

// request builds a netlink message of type typ with the given body.
func (c *rtnlConn) request(buf []byte, typ, flags uint16, body []byte) []byte {
	c.seq++
	if c.seq == anySeq {
		c.seq++
	}
	n := unix.NLMSG_HDRLEN + len(body)
	buf = buf[:0]
	buf = binary.NativeEndian.AppendUint32(buf, uint32(n))
	buf = binary.NativeEndian.AppendUint16(buf, typ)
	buf = binary.NativeEndian.AppendUint16(buf, flags|unix.NLM_F_REQUEST)
	buf = binary.NativeEndian.AppendUint32(buf, c.seq)
	buf = binary.NativeEndian.AppendUint32(buf, 0)
	return append(buf, body...)
}

// dump sends a dump request and calls fn with the type and payload of every
// reply message, until NLMSG_DONE. buf is the receive buffer (reused by the
// caller between dumps). The payload passed to fn is only valid during the call.
// It returns errDumpInterrupted, after reading the whole dump, when any of its
// datagrams carried NLM_F_DUMP_INTR.
func (c *rtnlConn) dump(buf []byte, typ uint16, body []byte, fn func(typ uint16, payload []byte)) error {
	var reqBuf [64]byte
	return c.exchange(buf, c.request(reqBuf[:0], typ, unix.NLM_F_DUMP, body), fn)
}

// exchange sends req (built by request, so it carries c.seq) and reads the
// replies into buf until the kernel ends the answer (NLMSG_DONE, an error or
// an ACK), calling fn for each data message. It blocks for at most the
// socket's receive timeout per datagram.
func (c *rtnlConn) exchange(buf, req []byte, fn func(typ uint16, payload []byte)) error {
	if err := unix.Sendto(c.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	return readReplies(func() ([]byte, error) {
		n, fromKernel, err := recv(c.fd, buf, unix.MSG_TRUNC)
		for err == nil && !fromKernel {
			n, fromKernel, err = recv(c.fd, buf, unix.MSG_TRUNC) // not the kernel's: dropped
		}
		if err != nil {
			return nil, fmt.Errorf("netlink receive: %w", err)
		}
		if n > len(buf) {
			return nil, fmt.Errorf("netlink reply of %d bytes does not fit the %d-byte buffer", n, len(buf))
		}
		return buf[:n], nil
	}, c.seq, fn)
}

// readReplies walks the datagrams that next returns (the messages with
// sequence number seq) until the answer ends. An NLMSG_ERROR ends it with
// that error at once; an NLM_F_DUMP_INTR on any datagram is remembered and
// reported as errDumpInterrupted once the answer is complete, so the caller
// never takes an interrupted dump for a clean one.
func readReplies(next func() ([]byte, error), seq uint32, fn func(typ uint16, payload []byte)) error {
	interrupted := false
	for {
		b, err := next()
		if err != nil {
			return err
		}
		done, err := walkMessages(b, seq, fn)
		switch {
		case errors.Is(err, errDumpInterrupted):
			interrupted = true
		case err != nil:
			return err
		}
		if done {
			if interrupted {
				return errDumpInterrupted
			}
			return nil
		}
	}
}

// errDumpInterrupted: the kernel's table changed during a dump
// (NLM_F_DUMP_INTR); the data is usable but may be inconsistent.
var errDumpInterrupted = errors.New("netlink dump interrupted by a concurrent change")

// anySeq makes walkMessages accept every message: notifications carry the
// sequence number of whatever request caused them, or 0.
const anySeq = 0

// walkMessages walks the netlink messages in b that carry sequence number
// seq (all of them for anySeq), calling fn for each data message. It reports
// done at NLMSG_DONE or NLMSG_ERROR and returns the error of an NLMSG_ERROR
// message. It returns errDumpInterrupted (done or not) when a message of seq
// carried NLM_F_DUMP_INTR. Malformed input ends the walk with an error; it
// never panics.
func walkMessages(b []byte, seq uint32, fn func(typ uint16, payload []byte)) (done bool, err error) {
	for len(b) >= unix.NLMSG_HDRLEN {
		l := binary.NativeEndian.Uint32(b[0:4])
		typ := binary.NativeEndian.Uint16(b[4:6])
		flags := binary.NativeEndian.Uint16(b[6:8])
		s := binary.NativeEndian.Uint32(b[8:12])
		if l < unix.NLMSG_HDRLEN || uint64(l) > uint64(len(b)) {
			return false, fmt.Errorf("netlink: malformed message length %d (have %d bytes)", l, len(b))
		}
		payload := b[unix.NLMSG_HDRLEN:l]
		next := nlmAlign(int(l))
		if next > len(b) {
			next = len(b)
		}
		b = b[next:]
		if seq != anySeq && s != seq {
			continue // a stale reply to an earlier, abandoned request
		}
		if flags&unix.NLM_F_DUMP_INTR != 0 {
			err = errDumpInterrupted
		}
		switch typ {
		case unix.NLMSG_DONE:
			return true, err
		case unix.NLMSG_ERROR:
			if len(payload) < 4 {
				return true, errors.New("netlink: short error message")
			}
			if code := int32(binary.NativeEndian.Uint32(payload[0:4])); code != 0 {
				return true, unix.Errno(-code)
			}
			return true, err // an ACK
		case unix.NLMSG_NOOP, unix.NLMSG_OVERRUN:
			continue
		}
		fn(typ, payload)
	}
	return false, err
}

func nlmAlign(n int) int      { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }
func rtaAlign(n int) int      { return (n + unix.RTA_ALIGNTO - 1) &^ (unix.RTA_ALIGNTO - 1) }
func nlaType(t uint16) uint16 { return t &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER) }

// walkAttrs calls fn for each rtattr in b; it stops at the first malformed one.
func walkAttrs(b []byte, fn func(typ uint16, val []byte)) {
	for len(b) >= unix.SizeofRtAttr {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4])
		if l < unix.SizeofRtAttr || l > len(b) {
			return
		}
		fn(nlaType(typ), b[unix.SizeofRtAttr:l])
		next := rtaAlign(l)
		if next > len(b) {
			return
		}
		b = b[next:]
	}
}

// rawLink is a link message's fields; byte slices alias the receive buffer.
type rawLink struct {
	index          int32
	ifiType        uint16
	flags          uint32
	name           []byte
	mac            []byte
	kind           []byte
	mtu            uint32
	link           int32
	netnsid        int32
	oper           uint8
	carrierChanges uint32
	counters       Counters
}

// parseLink decodes an RTM_NEWLINK/RTM_DELLINK payload (ifinfomsg and
// attributes). A truncated message yields what it holds.
func parseLink(p []byte, l *rawLink) error {
	if len(p) < unix.SizeofIfInfomsg {
		return fmt.Errorf("netlink: link message of %d bytes is shorter than ifinfomsg", len(p))
	}
	*l = rawLink{
		ifiType: binary.NativeEndian.Uint16(p[2:4]),
		index:   int32(binary.NativeEndian.Uint32(p[4:8])),
		flags:   binary.NativeEndian.Uint32(p[8:12]),
		netnsid: -1,
	}
	haveStats64 := false
	walkAttrs(p[unix.SizeofIfInfomsg:], func(typ uint16, v []byte) {
		switch typ {
		case unix.IFLA_IFNAME:
			l.name = trimNUL(v)
		case unix.IFLA_ADDRESS:
			l.mac = v
		case unix.IFLA_MTU:
			if len(v) >= 4 {
				l.mtu = binary.NativeEndian.Uint32(v)
			}
		case unix.IFLA_LINK:
			if len(v) >= 4 {
				l.link = int32(binary.NativeEndian.Uint32(v))
			}
		case unix.IFLA_LINK_NETNSID:
			if len(v) >= 4 {
				l.netnsid = int32(binary.NativeEndian.Uint32(v))
			}
		case unix.IFLA_OPERSTATE:
			if len(v) >= 1 {
				l.oper = v[0]
			}
		case unix.IFLA_CARRIER_CHANGES:
			if len(v) >= 4 {
				l.carrierChanges = binary.NativeEndian.Uint32(v)
			}
		case unix.IFLA_STATS64:
			if len(v) >= 8*8 {
				l.counters = counters64(v)
				haveStats64 = true
			}
		case unix.IFLA_STATS:
			if len(v) >= 8*4 && !haveStats64 {
				u := func(i int) uint64 { return uint64(binary.NativeEndian.Uint32(v[4*i:])) }
				l.counters = Counters{
					RxPackets: u(0), TxPackets: u(1), RxBytes: u(2), TxBytes: u(3),
					RxErrors: u(4), TxErrors: u(5), RxDropped: u(6), TxDropped: u(7),
				}
			}
		case unix.IFLA_LINKINFO:
			walkAttrs(v, func(typ uint16, v []byte) {
				if typ == unix.IFLA_INFO_KIND {
					l.kind = trimNUL(v)
				}
			})
		}
	})
	return nil
}

func trimNUL(b []byte) []byte {
	for i, c := range b {
		if c == 0 {
			return b[:i]
		}
	}
	return b
}

// rawAddr is one address message's fields.
type rawAddr struct {
	index  int32
	prefix netip.Prefix
}

// parseAddr decodes an RTM_NEWADDR payload. ok is false for messages without
// a usable address.
func parseAddr(p []byte) (a rawAddr, ok bool) {
	if len(p) < unix.SizeofIfAddrmsg {
		return a, false
	}
	family, plen := p[0], int(p[1])
	a.index = int32(binary.NativeEndian.Uint32(p[4:8]))
	var local, address []byte
	walkAttrs(p[unix.SizeofIfAddrmsg:], func(typ uint16, v []byte) {
		switch typ {
		case unix.IFA_LOCAL:
			local = v
		case unix.IFA_ADDRESS:
			address = v
		}
	})
	raw := local // the local end of a point-to-point address; else the address
	if raw == nil {
		raw = address
	}
	var ip netip.Addr
	switch {
	case family == unix.AF_INET && len(raw) == 4:
		ip = netip.AddrFrom4([4]byte(raw))
	case family == unix.AF_INET6 && len(raw) == 16:
		ip = netip.AddrFrom16([16]byte(raw))
	default:
		return a, false
	}
	pfx, err := ip.Prefix(plen)
	if err != nil {
		return a, false
	}
	a.prefix = netip.PrefixFrom(ip, pfx.Bits()) // keep the host bits: "10.0.0.2/24"
	return a, true
}

// isDefaultRoute reports whether an RTM_NEWROUTE payload is an IPv4 or IPv6
// unicast default route of the main table.
func isDefaultRoute(p []byte) bool {
	if len(p) < unix.SizeofRtMsg {
		return false
	}
	family, dstLen, table, typ := p[0], p[1], uint32(p[4]), p[7]
	if family != unix.AF_INET && family != unix.AF_INET6 {
		return false
	}
	walkAttrs(p[unix.SizeofRtMsg:], func(t uint16, v []byte) {
		if t == unix.RTA_TABLE && len(v) >= 4 {
			table = binary.NativeEndian.Uint32(v)
		}
	})
	return dstLen == 0 && table == unix.RT_TABLE_MAIN && typ == unix.RTN_UNICAST
}

// statsDumpBody asks RTM_GETSTATS for IFLA_STATS_LINK_64 only
// (struct if_stats_msg: family, pad, pad, ifindex, filter_mask).
var statsDumpBody = func() []byte {
	b := make([]byte, sizeofIfStatsMsg)
	binary.NativeEndian.PutUint32(b[8:12], 1<<(unix.IFLA_STATS_LINK_64-1))
	return b
}()

const sizeofIfStatsMsg = 12

// parseStats decodes an RTM_NEWSTATS payload: the link index and its 64-bit
// counters. ok is false when the message carries no IFLA_STATS_LINK_64.
func parseStats(p []byte) (index int32, c Counters, ok bool) {
	if len(p) < sizeofIfStatsMsg {
		return 0, c, false
	}
	index = int32(binary.NativeEndian.Uint32(p[4:8]))
	walkAttrs(p[sizeofIfStatsMsg:], func(typ uint16, v []byte) {
		if typ == unix.IFLA_STATS_LINK_64 && len(v) >= 8*8 {
			c = counters64(v)
			ok = true
		}
	})
	return index, c, ok
}

// counters64 decodes the first eight fields of struct rtnl_link_stats64.
func counters64(v []byte) Counters {
	return Counters{
		RxPackets: binary.NativeEndian.Uint64(v[0:]),
		TxPackets: binary.NativeEndian.Uint64(v[8:]),
		RxBytes:   binary.NativeEndian.Uint64(v[16:]),
		TxBytes:   binary.NativeEndian.Uint64(v[24:]),
		RxErrors:  binary.NativeEndian.Uint64(v[32:]),
		TxErrors:  binary.NativeEndian.Uint64(v[40:]),
		RxDropped: binary.NativeEndian.Uint64(v[48:]),
		TxDropped: binary.NativeEndian.Uint64(v[56:]),
	}
}

// linkDumpBody, addrDumpBody and routeDumpBody are the request bodies of the
// three dumps: every family, no filter.
var (
	linkDumpBody  = make([]byte, unix.SizeofIfInfomsg)
	addrDumpBody  = make([]byte, unix.SizeofIfAddrmsg)
	routeDumpBody = make([]byte, unix.SizeofRtMsg)
)

// setLinkUp sets IFF_UP on the link named name and waits for the kernel's
// answer. unix.ENODEV means there is no such link.
func (c *rtnlConn) setLinkUp(buf []byte, name string) error {
	body := make([]byte, unix.SizeofIfInfomsg, unix.SizeofIfInfomsg+rtaAlign(unix.SizeofRtAttr+len(name)+1))
	binary.NativeEndian.PutUint32(body[8:12], unix.IFF_UP)  // ifi_flags
	binary.NativeEndian.PutUint32(body[12:16], unix.IFF_UP) // ifi_change
	attrLen := unix.SizeofRtAttr + len(name) + 1
	body = binary.NativeEndian.AppendUint16(body, uint16(attrLen))
	body = binary.NativeEndian.AppendUint16(body, unix.IFLA_IFNAME)
	body = append(body, name...)
	body = append(body, 0)
	for len(body)%unix.RTA_ALIGNTO != 0 {
		body = append(body, 0)
	}
	req := c.request(make([]byte, 0, unix.NLMSG_HDRLEN+len(body)), unix.RTM_NEWLINK, unix.NLM_F_ACK, body)
	return c.exchange(buf, req, func(uint16, []byte) {})
}

// subscription is a NETLINK_ROUTE socket joined to the link, address and
// route multicast groups. It is non-blocking: the monitor's notification
// reader waits for it with epoll (notify_linux.go).
type subscription struct {
	fd int // -1 after close
}

// openSubscription opens the notification socket in the calling thread's
// network namespace.
func openSubscription() (*subscription, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: subscriptionGroups}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink subscribe: %w", err)
	}
	return &subscription{fd: fd}, nil
}

// receive takes the next notification datagram from the kernel, without
// waiting, and copies it into buf (not empty); datagrams another process
// sent are dropped. truncated reports a datagram larger than buf (its tail
// is lost). It returns unix.EAGAIN when none is queued and unix.ENOBUFS
// when the kernel dropped notifications. Must not be called after close.
func (s *subscription) receive(buf []byte) (n int, truncated bool, err error) {
	fromKernel := false
	for !fromKernel {
		n, fromKernel, err = recv(s.fd, buf, unix.MSG_TRUNC|unix.MSG_DONTWAIT)
		if err != nil {
			return 0, false, err
		}
	}
	if n > len(buf) {
		return len(buf), true, nil
	}
	return n, false, nil
}

// recv is recvfrom(2) with the sender's address read into a stack value
// (unix.Recvfrom allocates one per datagram, and every dump and
// notification comes through here), retried on EINTR. buf must not be
// empty. With MSG_TRUNC, netlink returns the datagram's real length, which
// may exceed len(buf). fromKernel is false for a datagram another process
// sent to this socket (its sender port is not 0): callers drop those, so
// that no local process can forge link state or dump replies.
func recv(fd int, buf []byte, flags int) (n int, fromKernel bool, err error) {
	for {
		var from unix.RawSockaddrNetlink
		fromLen := uint32(unsafe.Sizeof(from))
		r, _, errno := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)),
			uintptr(flags), uintptr(unsafe.Pointer(&from)), uintptr(unsafe.Pointer(&fromLen)))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, false, errno
		}
		return int(r), from.Family == unix.AF_NETLINK && from.Pid == 0, nil
	}
}

// pending reports whether notifications are queued on the socket that the
// reader has not taken yet (netlink sockets do not answer FIONREAD; a
// zero-timeout poll does). Not a peeking recv: that would consume a pending
// ENOBUFS, which the notification reader needs to see to resync. Must not be
// called after close.
func (s *subscription) pending() bool {
	fds := []unix.PollFd{{Fd: int32(s.fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err != nil || (n > 0 && fds[0].Revents != 0)
}

func (s *subscription) close() error {
	if s == nil || s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	return err
}
