package gossip

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/memberlist"
)

// Beyond any peer (issue 25): before an agent declares a container
// unhealthy for a failed network probe, it can ask k peers to probe the
// same pod address from their side. If peers reach it, the pod is fine and
// this node's network is what is broken; if none does, the pod is.
//
// The request and the answer are memberlist user messages sent over its
// reliable (TCP) channel, so they are encrypted and authenticated with the
// gossip key like the rest of gossip: only a member holding the key can
// ask, and only one can answer. A member answers by opening (and closing)
// a TCP connection to the address, at most crossMaxProbes at once: more
// requests than that are not answered (the asker counts them as
// unanswered). The delegate only posts the message to a bounded queue.

const (
	crossRequest  byte = 'q'
	crossResponse byte = 'r'
	// crossMaxMessage bounds a cross-check message; anything larger is
	// dropped unread.
	crossMaxMessage = 512
	// crossMaxProbes bounds the probes a member runs for its peers at once,
	// crossMaxPerSecond how many it starts a second.
	crossMaxProbes    = 4
	crossMaxPerSecond = 8
	// crossQueue is the queue from the delegate to crossLoop.
	crossQueue = 64
	// CrossProbeTimeout is how long a peer's TCP connect to the address
	// may take; CrossCheck waits a second more for the answers.
	CrossProbeTimeout = 2 * time.Second
)

// crossMsg is a request (ID, From, Addr) or an answer (ID, OK, Err).
type crossMsg struct {
	ID   uint64 `json:"id"`
	From string `json:"from,omitempty"`
	Addr string `json:"addr,omitempty"`
	OK   bool   `json:"ok,omitempty"`
	Err  string `json:"err,omitempty"`
}

// crossState is the member's side of cross-checks.
type crossState struct {
	in      chan []byte // from the delegate
	nextID  atomic.Uint64
	mu      sync.Mutex
	pending map[uint64]chan crossMsg
	probes  chan struct{} // semaphore of crossMaxProbes
}

func newCrossState() crossState {
	return crossState{in: make(chan []byte, crossQueue), pending: map[uint64]chan crossMsg{}, probes: make(chan struct{}, crossMaxProbes)}
}

// encodeCross is a message of kind (crossRequest or crossResponse).
func encodeCross(kind byte, m crossMsg) []byte {
	b, _ := json.Marshal(m) // plain fields: cannot fail
	return append([]byte{kind}, b...)
}

// decodeCross parses a user message from a peer. The request's address
// must be an IP address and port.
func decodeCross(b []byte) (byte, crossMsg, error) {
	var m crossMsg
	if len(b) < 2 || len(b) > crossMaxMessage {
		return 0, m, fmt.Errorf("cross-check message of %d bytes", len(b))
	}
	kind := b[0]
	if kind != crossRequest && kind != crossResponse {
		return 0, m, fmt.Errorf("unknown message kind %q", kind)
	}
	if err := json.Unmarshal(b[1:], &m); err != nil {
		return 0, m, fmt.Errorf("cross-check message: %v", err)
	}
	if kind == crossRequest {
		if m.From == "" {
			return 0, m, errors.New("cross-check request without its sender")
		}
		if err := crossTarget(m.Addr); err != nil {
			return 0, m, err
		}
	}
	return kind, m, nil
}

// crossTarget checks an address a peer may be asked to reach: an IP
// address and port of another host. Loopback, unspecified, link-local
// and multicast addresses are refused: they name each member's own
// services (a kubelet on 127.0.0.1, a cloud's metadata on 169.254.169.254),
// which a holder of the gossip key must not be able to scan through its
// peers.
func crossTarget(addr string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || ap.Port() == 0 {
		return fmt.Errorf("cross-check of %q: want IP:port", addr)
	}
	ip := ap.Addr().Unmap()
	if ip.IsLoopback() || ip.IsUnspecified() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsMulticast() || ip.IsInterfaceLocalMulticast() {
		return fmt.Errorf("cross-check of %q: not an address of another host (loopback, unspecified, link-local or multicast)", addr)
	}
	return nil
}

// crossAnswerClass is what an answer says of a failed connection: a class,
// not the error's text (which would tell more about the peer's network
// than the asker needs).
func crossAnswerClass(err error) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	}
	return "unreachable"
}

// postUserMsg is the delegate's NotifyMsg: it copies the message to the
// queue, or drops it when the queue is full. It never blocks.
func (m *Member) postUserMsg(b []byte) {
	if len(b) == 0 || len(b) > crossMaxMessage {
		return
	}
	select {
	case m.cross.in <- append([]byte(nil), b...):
	default:
	}
}

// crossLoop answers peers' requests and routes answers to CrossCheck. It
// answers at most crossMaxProbes at once and crossMaxPerSecond a second;
// the probes it starts end (their dials cancelled) before it returns.
func (m *Member) crossLoop(ctx context.Context) {
	var probes sync.WaitGroup
	defer probes.Wait()
	var window time.Time
	var inWindow int
	for {
		var b []byte
		select {
		case <-ctx.Done():
			return
		case b = <-m.cross.in:
		}
		kind, msg, err := decodeCross(b)
		if err != nil {
			m.log.Debug("gossip: cross-check message dropped", "err", err)
			continue
		}
		if kind == crossResponse {
			m.cross.mu.Lock()
			ch := m.cross.pending[msg.ID]
			m.cross.mu.Unlock()
			if ch != nil {
				select {
				case ch <- msg:
				default:
				}
			}
			continue
		}
		if now := time.Now(); now.Sub(window) >= time.Second {
			window, inWindow = now, 0
		}
		if inWindow >= crossMaxPerSecond {
			m.log.Debug("gossip: cross-check request dropped: over the rate", "from", msg.From)
			continue
		}
		select {
		case m.cross.probes <- struct{}{}:
		default:
			m.log.Debug("gossip: cross-check request dropped: too many at once", "from", msg.From)
			continue
		}
		inWindow++
		probes.Add(1)
		go func() {
			defer probes.Done()
			defer func() { <-m.cross.probes }()
			ans := crossMsg{ID: msg.ID}
			c, err := (&net.Dialer{Timeout: CrossProbeTimeout}).DialContext(ctx, "tcp", msg.Addr)
			if err == nil {
				c.Close()
				ans.OK = true
			} else {
				ans.Err = crossAnswerClass(err)
			}
			if ctx.Err() != nil {
				return // the member is leaving
			}
			if node := m.node(msg.From); node != nil {
				if err := m.ml.Load().SendReliable(node, encodeCross(crossResponse, ans)); err != nil {
					m.log.Debug("gossip: cross-check answer not sent", "to", msg.From, "err", err)
				}
			}
		}()
	}
}

// node is memberlist's record of the member named name, nil if none.
func (m *Member) node(name string) *memberlist.Node {
	ml := m.ml.Load()
	if ml == nil {
		return nil
	}
	for _, n := range ml.Members() {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// CrossResult is what peers said of an address (CrossCheck).
type CrossResult struct {
	Asked     int      // peers a request was sent to
	Answered  int      // peers that answered in time
	Reachable int      // peers that reached the address
	Errors    []string // what the peers that did not reach it saw ("name: error")
}

// Verdict reads r against this node's own probe of the address that
// failed: some peer reaches it, so this node's network is what is broken
// ("node"); peers answered and none reaches it, so the pod is ("pod"); no
// peer answered, so nothing can be said ("unknown").
func (r CrossResult) Verdict() string {
	switch {
	case r.Reachable > 0:
		return "node"
	case r.Answered > 0:
		return "pod"
	}
	return "unknown"
}

// CrossCheck asks up to k peers alive in the view to open a TCP connection
// to addr ("IP:port", e.g. a pod's probe address) from their side, and
// returns what they found. It waits until every asked peer answered,
// CrossProbeTimeout plus a second passed, or ctx ended. Without Run, or
// with no alive peer, it asks no one. addr must be an IP address and
// port; anything else is an error and asks no one. Any member holding the
// gossip key can make its peers open such connections (bounded as above):
// the key is the trust boundary, as for the views.
func (m *Member) CrossCheck(ctx context.Context, addr string, k int) (CrossResult, error) {
	var res CrossResult
	if err := crossTarget(addr); err != nil {
		return res, fmt.Errorf("gossip: %w", err)
	}
	ml := m.ml.Load()
	if ml == nil || k <= 0 {
		return res, nil
	}
	var alive []*memberlist.Node
	for _, n := range ml.Members() {
		if n.Name != m.cfg.Name && n.State == memberlist.StateAlive {
			alive = append(alive, n)
		}
	}
	rand.Shuffle(len(alive), func(i, j int) { alive[i], alive[j] = alive[j], alive[i] })
	alive = alive[:min(k, len(alive))]

	// The requests go out concurrently and the wait starts now: a send
	// to a peer this node cannot reach takes memberlist's TCP timeout,
	// which is exactly when the check matters.
	timer := time.NewTimer(CrossProbeTimeout + time.Second)
	defer timer.Stop()
	answers := make(chan crossMsg, len(alive))
	unsent := make(chan struct{}, len(alive))
	byID := make(map[uint64]*memberlist.Node, len(alive)) // not answered yet
	ids := make([]uint64, 0, len(alive))                  // every one registered
	m.cross.mu.Lock()
	for _, n := range alive {
		id := m.cross.nextID.Add(1)
		m.cross.pending[id] = answers
		byID[id] = n
		ids = append(ids, id)
	}
	m.cross.mu.Unlock()
	defer func() {
		m.cross.mu.Lock()
		for _, id := range ids {
			delete(m.cross.pending, id)
		}
		m.cross.mu.Unlock()
	}()
	for id, n := range byID {
		go func() {
			if err := ml.SendReliable(n, encodeCross(crossRequest, crossMsg{ID: id, From: m.cfg.Name, Addr: addr})); err != nil {
				m.log.Debug("gossip: cross-check request not sent", "to", n.Name, "err", err)
				unsent <- struct{}{}
			}
		}()
	}
	res.Asked = len(byID)
	waiting := len(byID)
	for waiting > 0 {
		select {
		case <-ctx.Done():
			return res, nil
		case <-timer.C:
			return res, nil
		case <-unsent:
			res.Asked--
			waiting--
		case a := <-answers:
			n, ok := byID[a.ID]
			if !ok {
				continue
			}
			delete(byID, a.ID) // one answer per request
			waiting--
			res.Answered++
			if a.OK {
				res.Reachable++
			} else {
				res.Errors = append(res.Errors, n.Name+": "+a.Err)
			}
		}
	}
	return res, nil
}
