package gossip

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Traffic is what a member's transport carried: gossip packets (UDP) and
// stream bytes (TCP: joins, push/pull syncs, fallback pings), each way.
// Bytes are as they went on the wire (after encryption and label), without
// IP and UDP/TCP headers.
type Traffic struct {
	PacketsSent, PacketsReceived uint64
	PacketBytesSent              uint64
	PacketBytesReceived          uint64
	StreamsOpened                uint64 // dialed and accepted
	StreamBytesSent              uint64
	StreamBytesReceived          uint64
}

// BytesSent is every byte sent, packets and streams.
func (t Traffic) BytesSent() uint64 { return t.PacketBytesSent + t.StreamBytesSent }

// BytesReceived is every byte received, packets and streams.
func (t Traffic) BytesReceived() uint64 { return t.PacketBytesReceived + t.StreamBytesReceived }

// countingTransport wraps a transport and counts what it carries. It
// forwards the inner transport's packet and stream channels through one
// goroutine each, which end when the inner channels stop at Shutdown.
type countingTransport struct {
	inner    memberlist.NodeAwareTransport
	packetCh chan *memberlist.Packet
	streamCh chan net.Conn
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup

	packetsSent, packetsReceived atomic.Uint64
	packetBytesSent              atomic.Uint64
	packetBytesReceived          atomic.Uint64
	streams                      atomic.Uint64
	streamBytesSent              atomic.Uint64
	streamBytesReceived          atomic.Uint64
}

var _ memberlist.NodeAwareTransport = (*countingTransport)(nil)

func newCountingTransport(inner memberlist.NodeAwareTransport) *countingTransport {
	t := &countingTransport{
		inner:    inner,
		packetCh: make(chan *memberlist.Packet),
		streamCh: make(chan net.Conn),
		stop:     make(chan struct{}),
	}
	t.wg.Add(2)
	go func() {
		defer t.wg.Done()
		for {
			select {
			case p := <-inner.PacketCh():
				t.packetsReceived.Add(1)
				t.packetBytesReceived.Add(uint64(len(p.Buf)))
				select {
				case t.packetCh <- p:
				case <-t.stop:
					return
				}
			case <-t.stop:
				return
			}
		}
	}()
	go func() {
		defer t.wg.Done()
		for {
			select {
			case c := <-inner.StreamCh():
				t.streams.Add(1)
				select {
				case t.streamCh <- &countingConn{Conn: c, t: t}:
				case <-t.stop:
					c.Close()
					return
				}
			case <-t.stop:
				return
			}
		}
	}()
	return t
}

func (t *countingTransport) traffic() Traffic {
	return Traffic{
		PacketsSent:         t.packetsSent.Load(),
		PacketsReceived:     t.packetsReceived.Load(),
		PacketBytesSent:     t.packetBytesSent.Load(),
		PacketBytesReceived: t.packetBytesReceived.Load(),
		StreamsOpened:       t.streams.Load(),
		StreamBytesSent:     t.streamBytesSent.Load(),
		StreamBytesReceived: t.streamBytesReceived.Load(),
	}
}

func (t *countingTransport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	return t.inner.FinalAdvertiseAddr(ip, port)
}

func (t *countingTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	ts, err := t.inner.WriteTo(b, addr)
	if err == nil {
		t.packetsSent.Add(1)
		t.packetBytesSent.Add(uint64(len(b)))
	}
	return ts, err
}

func (t *countingTransport) WriteToAddress(b []byte, addr memberlist.Address) (time.Time, error) {
	ts, err := t.inner.WriteToAddress(b, addr)
	if err == nil {
		t.packetsSent.Add(1)
		t.packetBytesSent.Add(uint64(len(b)))
	}
	return ts, err
}

func (t *countingTransport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

func (t *countingTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	c, err := t.inner.DialTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	t.streams.Add(1)
	return &countingConn{Conn: c, t: t}, nil
}

func (t *countingTransport) DialAddressTimeout(addr memberlist.Address, timeout time.Duration) (net.Conn, error) {
	c, err := t.inner.DialAddressTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	t.streams.Add(1)
	return &countingConn{Conn: c, t: t}, nil
}

func (t *countingTransport) StreamCh() <-chan net.Conn { return t.streamCh }

// Shutdown stops the inner transport and the forwarding goroutines. Safe
// to call twice.
func (t *countingTransport) Shutdown() error {
	err := t.inner.Shutdown()
	t.stopOnce.Do(func() { close(t.stop) })
	t.wg.Wait()
	return err
}

type countingConn struct {
	net.Conn
	t *countingTransport
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.t.streamBytesReceived.Add(uint64(n))
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.t.streamBytesSent.Add(uint64(n))
	return n, err
}
