package gossip

import (
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// memNet is an in-memory network for many members in one process
// (benchmarks). memberlist's own MockNetwork cannot stand for a kill: its
// packet channels are unbuffered and Shutdown does nothing, so every
// sender to a stopped member blocks for ever. Here, as on a real network,
// packets to a member that is down are lost, a dial to it is refused, and
// a receiver that falls behind loses packets rather than block the sender.
type memNet struct {
	mu    sync.Mutex
	byAdr map[string]*memTransport
	port  int
}

func (n *memNet) transport() *memTransport {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.byAdr == nil {
		n.byAdr = map[string]*memTransport{}
		n.port = 20000
	}
	n.port++
	t := &memTransport{
		net:      n,
		ip:       net.IPv4(127, 0, 0, 1),
		port:     n.port,
		packetCh: make(chan *memberlist.Packet, 4096),
		streamCh: make(chan net.Conn, 64),
	}
	n.byAdr[net.JoinHostPort("127.0.0.1", strconv.Itoa(t.port))] = t
	return t
}

func (n *memNet) peer(addr string) *memTransport {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.byAdr[addr]
}

type memTransport struct {
	net      *memNet
	ip       net.IP
	port     int
	down     atomic.Bool
	packetCh chan *memberlist.Packet
	streamCh chan net.Conn
}

var _ memberlist.NodeAwareTransport = (*memTransport)(nil)

func (t *memTransport) addr() net.Addr { return &net.UDPAddr{IP: t.ip, Port: t.port} }

func (t *memTransport) FinalAdvertiseAddr(string, int) (net.IP, int, error) { return t.ip, t.port, nil }

func (t *memTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (t *memTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	now := time.Now()
	dest := t.net.peer(a.Addr)
	if t.down.Load() || dest == nil || dest.down.Load() {
		return now, nil // lost, as UDP is
	}
	select {
	case dest.packetCh <- &memberlist.Packet{Buf: append([]byte(nil), b...), From: t.addr(), Timestamp: now}:
	default: // the receiver's queue is full: lost
	}
	return now, nil
}

func (t *memTransport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

func (t *memTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (t *memTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	dest := t.net.peer(a.Addr)
	if t.down.Load() || dest == nil || dest.down.Load() {
		return nil, fmt.Errorf("dial %s: connection refused", a.Addr)
	}
	p1, p2 := net.Pipe()
	select {
	case dest.streamCh <- p1:
		return p2, nil
	case <-time.After(timeout):
		p1.Close()
		p2.Close()
		return nil, fmt.Errorf("dial %s: timeout", a.Addr)
	}
}

func (t *memTransport) StreamCh() <-chan net.Conn { return t.streamCh }

// Shutdown takes the member off the network, as a kill does.
func (t *memTransport) Shutdown() error {
	t.down.Store(true)
	return nil
}
