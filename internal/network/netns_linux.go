package network

import (
	"github.com/vigilhq/vigil/internal/netns"
)

// nsSockets are the two sockets the monitor keeps per namespace.
type nsSockets struct {
	conn *rtnlConn
	sub  *subscription
}

func (s nsSockets) close() {
	s.conn.close()
	s.sub.close()
}

// openSockets opens the request and subscription sockets in the calling
// thread's namespace.
func openSockets() (nsSockets, error) {
	conn, err := openConn()
	if err != nil {
		return nsSockets{}, err
	}
	sub, err := openSubscription()
	if err != nil {
		conn.close()
		return nsSockets{}, err
	}
	return nsSockets{conn: conn, sub: sub}, nil
}

// openSocketsIn opens the sockets inside the namespace h. A netlink socket
// stays bound to the namespace it was created in, so the namespace is
// entered only here, once, through netns.Do.
func openSocketsIn(h *netns.Handle) (nsSockets, error) {
	var s nsSockets
	err := h.Do(func() error {
		var err error
		s, err = openSockets()
		return err
	})
	if err != nil {
		if s.conn != nil {
			// Made, but the thread could not go back (netns.ErrRestore):
			// the sockets are in the right namespace, yet the monitor
			// gives up rather than keep what a broken thread made.
			s.close()
		}
		return nsSockets{}, err
	}
	return s, nil
}

// nsIdentity is what identifies a network namespace: device and inode of
// its nsfs file.
type nsIdentity = netns.ID

// statNS returns the identity of the namespace file at path
// (/proc/PID/ns/net or a bind mount such as /var/run/netns/NAME); a
// missing one is errdefs.ErrNotFound.
func statNS(path string) (nsIdentity, error) { return netns.IDOf(path) }

// openNS opens the namespace file at path and returns its handle and
// identity, read from the open descriptor so that the two agree.
func openNS(path string) (*netns.Handle, nsIdentity, error) {
	h, err := netns.Open(path)
	if err != nil {
		return nil, nsIdentity{}, err
	}
	return h, h.ID(), nil
}
