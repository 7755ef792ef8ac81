package aggregator

import (
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/credentials"
)

// handshakeLogged is the gRPC listener's TLS credentials, with each refused
// handshake counted and logged: gRPC closes such a connection without a
// word, and the client only sees a broken pipe. The log is rate-limited
// (a scanner or a fleet with an expired certificate would flood it): one
// line per handshakeLogEvery, saying how many were left out.
type handshakeLogged struct {
	credentials.TransportCredentials
	l *handshakeLog
}

type handshakeLog struct {
	log     *slog.Logger
	refused prometheus.Counter
	now     func() time.Time

	mu      sync.Mutex
	last    time.Time
	skipped int
}

const handshakeLogEvery = 10 * time.Second

func newHandshakeLogged(c credentials.TransportCredentials, log *slog.Logger, refused prometheus.Counter) credentials.TransportCredentials {
	return handshakeLogged{TransportCredentials: c, l: &handshakeLog{log: log, refused: refused, now: time.Now}}
}

func (h handshakeLogged) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := h.TransportCredentials.ServerHandshake(c)
	if err != nil {
		h.l.note(c.RemoteAddr(), err)
	}
	return conn, info, err
}

func (h handshakeLogged) Clone() credentials.TransportCredentials {
	return handshakeLogged{TransportCredentials: h.TransportCredentials.Clone(), l: h.l}
}

func (l *handshakeLog) note(remote net.Addr, err error) {
	l.refused.Inc()
	l.mu.Lock()
	now := l.now()
	if !l.last.IsZero() && now.Sub(l.last) < handshakeLogEvery {
		l.skipped++
		l.mu.Unlock()
		return
	}
	skipped := l.skipped
	l.last, l.skipped = now, 0
	l.mu.Unlock()
	l.log.Warn("TLS handshake refused on the gRPC listener (an expired client certificate, one not signed by a CA of --tls-ca, or a client without TLS)",
		"remote", remote.String(), "err", err, "refused_since_last_line", skipped)
}
