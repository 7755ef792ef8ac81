package aggregator

import (
	"bufio"
	"crypto/tls"
	"net"
	"sync"
	"time"
)

// sniffTimeout bounds how long a new HTTP connection may take to send its
// first byte before it is closed.
const sniffTimeout = 10 * time.Second

// sniffListener serves TLS and plain HTTP on one port: it reads the first
// byte of each connection (a TLS handshake starts with 0x16, an HTTP
// request with a letter) and hands out a *tls.Conn or the plain
// connection. net/http takes a *tls.Conn as HTTPS (it handshakes and sets
// Request.TLS). The first byte is read in a goroutine per connection, so a
// client that sends nothing holds up no one (and is dropped after
// sniffTimeout). Close stops the accept loop and closes what is waiting.
type sniffListener struct {
	net.Listener
	tls *tls.Config

	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
	errOnce   sync.Once
	err       error
	errc      chan struct{}
}

func newSniffListener(l net.Listener, cfg *tls.Config) *sniffListener {
	s := &sniffListener{Listener: l, tls: cfg, conns: make(chan net.Conn), done: make(chan struct{}), errc: make(chan struct{})}
	go s.acceptLoop()
	return s
}

func (s *sniffListener) acceptLoop() {
	for {
		c, err := s.Listener.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			s.errOnce.Do(func() { s.err = err; close(s.errc) })
			return
		}
		go s.classify(c)
	}
}

func (s *sniffListener) classify(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(sniffTimeout))
	br := bufio.NewReaderSize(c, 16)
	first, err := br.Peek(1)
	if err != nil {
		c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	var out net.Conn = &peekedConn{Conn: c, r: br}
	if first[0] == 0x16 {
		out = tls.Server(out, s.tls)
	}
	select {
	case s.conns <- out:
	case <-s.done:
		c.Close()
	}
}

func (s *sniffListener) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.done:
		return nil, net.ErrClosed
	case <-s.errc:
		return nil, s.err
	}
}

func (s *sniffListener) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.done)
		err = s.Listener.Close()
	})
	return err
}

// peekedConn is a connection whose first bytes were read into r.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
