package aggregator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/pki"
	"github.com/vigilhq/vigil/internal/remediation"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// replaceWait bounds how long a new stream waits for the stream it replaces
// to end.
const replaceWait = 5 * time.Second

// errReplaced is the cancel cause of a stream replaced by a newer one.
var errReplaced = errors.New("replaced by a newer stream from the same node")

// Gateway is the AgentGateway server: one live stream per node, messages
// applied to the Fleet at most once per sequence number, cumulative acks,
// and a bounded command queue per connected node.
type Gateway struct {
	vigilv1.UnimplementedAgentGatewayServer

	fleet           *Fleet
	metrics         *selfMetrics
	log             *slog.Logger
	requireIdentity bool
	aggregatorID    string
	maxMessageBytes int
	ackInterval     time.Duration
	ackEvery        int
	commandQueue    int
	maxStreams      int
	quotas          Quotas
	now             func() time.Time
	stopping        <-chan struct{} // closed when the aggregator shuts down
	// remediation, when set, delivers each held node's outbox on its
	// stream (unless holdCommands) and journals the agents' command results.
	remediation  *remediation.Engine
	holdCommands bool
	// replicas, when the store is shared (Config.Replicated), claims each
	// node's stream under the replica's lease before it is served.
	replicas *replicas
	// claimed is told of a node just claimed from another replica.
	claimed func(node string)

	mu      sync.Mutex
	streams map[string]*agentStream
}

var _ vigilv1.AgentGatewayServer = (*Gateway)(nil)

// agentStream is one node's live stream.
type agentStream struct {
	node     string
	cancel   context.CancelCauseFunc
	done     chan struct{}
	commands chan *vigilv1.Command
	applied  atomic.Uint64 // highest seq applied (or already held) for the instance
	unacked  atomic.Int64
	wake     chan struct{}
	// snapshot holds a SnapshotRequest for sendLoop (room for one).
	snapshot chan *vigilv1.SnapshotRequest
}

func newGateway(cfg *Config, fleet *Fleet, m *selfMetrics, stopping <-chan struct{}) *Gateway {
	return &Gateway{
		stopping:        stopping,
		fleet:           fleet,
		metrics:         m,
		log:             cfg.Logger,
		requireIdentity: cfg.TLS != nil,
		aggregatorID:    cfg.AggregatorID,
		maxMessageBytes: cfg.MaxMessageBytes,
		ackInterval:     cfg.AckInterval,
		ackEvery:        cfg.AckEvery,
		commandQueue:    cfg.CommandQueue,
		maxStreams:      cfg.MaxStreams,
		quotas:          cfg.Quotas,
		now:             time.Now,
		streams:         make(map[string]*agentStream),
	}
}

// SendCommand queues cmd for the node's live stream without blocking. It
// fails with an error wrapping errdefs.ErrUnavailable when the node is not
// connected or its queue (Config.CommandQueue) is full. Commands still queued
// when the stream ends are dropped: the caller owns retries (commands are
// idempotent by id on the agent). Safe for concurrent use.
func (g *Gateway) SendCommand(node string, cmd *vigilv1.Command) error {
	g.mu.Lock()
	s := g.streams[node]
	g.mu.Unlock()
	if s == nil {
		g.metrics.commands.WithLabelValues("unavailable").Inc()
		return fmt.Errorf("send command %q: node %q is not connected: %w", cmd.GetId(), node, errdefs.ErrUnavailable)
	}
	select {
	case s.commands <- cmd:
		g.metrics.commands.WithLabelValues("queued").Inc()
		return nil
	default:
		g.metrics.commands.WithLabelValues("unavailable").Inc()
		return fmt.Errorf("send command %q: queue of node %q is full (%d): %w", cmd.GetId(), node, cap(s.commands), errdefs.ErrUnavailable)
	}
}

// Connect is not served through the generated stream: the Aggregator
// registers the gateway with gatewayServiceDesc, whose handler decodes frames
// itself (serveConn) so that a malformed message gets InvalidArgument. Served
// through RegisterAgentGatewayServer, Connect answers Unimplemented.
func (g *Gateway) Connect(vigilv1.AgentGateway_ConnectServer) error {
	return status.Error(codes.Unimplemented, "AgentGateway.Connect is served by the aggregator's raw-frame handler (gatewayServiceDesc); register the gateway with it, not with RegisterAgentGatewayServer")
}

// serveConn serves one stream (see Connect). Its errors wrap errdefs
// sentinels or are gRPC statuses (Aborted, ResourceExhausted, context
// errors, which errdefs has no sentinel for); the handler turns them into
// the stream's status with errdefs.GRPC.
func (g *Gateway) serveConn(stream agentConn) error {
	first, size, err := stream.recv()
	if err != nil {
		return g.recvError("", err)
	}
	g.count(first, size)
	hello, err := checkHello(first, &g.quotas)
	if err != nil {
		if first.GetHello() == nil {
			g.metrics.rejected.WithLabelValues("no_hello").Inc()
		} else if q, ok := asQuotaError(err); ok {
			g.helloOverQuota(q, first.GetHello().GetNodeName())
		} else {
			g.metrics.rejected.WithLabelValues("invalid").Inc()
		}
		return err
	}
	node := hello.GetNodeName()
	if g.requireIdentity {
		// The interceptor admitted only node certificates to Connect.
		id, ok := Caller(stream.Context())
		if !ok || id.Role != pki.RoleNode {
			g.metrics.rejected.WithLabelValues("identity").Inc()
			return fmt.Errorf("hello claims node %q without a node certificate: %w", node, errdefs.ErrPermission)
		}
		if id.Name != node {
			g.metrics.rejected.WithLabelValues("identity").Inc()
			g.log.Warn("refused agent stream: hello names another node than the certificate", "certificate", id.Name, "hello", node)
			return fmt.Errorf("certificate is for %s, hello claims %s: %w", id.Name, node, errdefs.ErrPermission)
		}
	}

	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	s := &agentStream{
		node:     node,
		cancel:   cancel,
		done:     make(chan struct{}),
		commands: make(chan *vigilv1.Command, g.commandQueue),
		wake:     make(chan struct{}, 1),
		snapshot: make(chan *vigilv1.SnapshotRequest, 1),
	}
	defer close(s.done)
	fresh := false
	if g.replicas != nil {
		// Claimed before the stream is registered: a node held by another
		// replica is refused (Unavailable) and the agent tries another
		// address.
		if fresh, err = g.replicas.claim(ctx, node, s); err != nil {
			g.log.Info("agent stream refused: its node is held elsewhere", "node", node, "err", err)
			return err
		}
		defer g.replicas.release(node, s)
		if fresh && g.claimed != nil {
			g.claimed(node)
		}
	}
	if err := g.replace(s); err != nil {
		return err
	}
	g.metrics.streams.Inc()
	if g.replicas == nil {
		g.metrics.heldNodes.Inc()
	}
	defer func() {
		g.metrics.streams.Dec()
		if g.replicas == nil {
			g.metrics.heldNodes.Dec()
		}
		// The node is marked down under g.mu: a newer stream of the node
		// registers itself (replace) under g.mu before fleet.connect, so
		// it cannot connect between this stream leaving g.streams and the
		// disconnect, which would mark the live node down. Lock order:
		// g.mu, then the fleet's locks.
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.streams[node] == s {
			delete(g.streams, node)
			if c := context.Cause(ctx); errors.Is(c, errLeaseLost) || errors.Is(c, errHeldElsewhere) {
				// Another replica may hold the node now: stop exposing it.
				g.forget(node)
			} else {
				g.fleet.disconnect(node, g.now())
			}
		}
	}()

	ack := g.fleet.connect(hello, g.aggregatorID, g.now(), fresh)
	g.metrics.nodeSeen(node)
	ack.GossipSeeds = g.fleet.gossipSeeds(node, g.now()) // gossipseeds.go
	s.applied.Store(ack.GetResumeAfterSeq())
	if err := stream.Send(&vigilv1.AggregatorMessage{Body: &vigilv1.AggregatorMessage_HelloAck{HelloAck: ack}}); err != nil {
		return err
	}
	g.log.Info("agent connected", "node", node, "instance", hello.GetInstanceId(),
		"resume_after_seq", ack.GetResumeAfterSeq(), "snapshot_required", ack.GetSnapshotRequired())

	// The sender is waited for (nothing may Send after the handler returns).
	// The receiver is not: Recv only returns once the handler has returned
	// and gRPC has cancelled the stream; it then exits without blocking.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); g.sendLoop(ctx, stream, s) }()
	if g.remediation != nil {
		wg.Add(1)
		go func() { defer wg.Done(); g.deliverCommands(ctx, s) }()
	}
	msgs := make(chan sized)
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, size, err := stream.recv()
			if err != nil {
				// Classified (and counted) here: after gRPC itself ended the
				// stream, the handler may see the cancelled context first.
				recvErr <- g.recvError(node, err)
				return
			}
			select {
			case msgs <- sized{m, size}:
			case <-ctx.Done():
				return
			}
		}
	}()

	err = g.serve(ctx, s, msgs, recvErr)
	cancel(err)
	wg.Wait()
	if errors.Is(context.Cause(ctx), errReplaced) {
		g.metrics.rejected.WithLabelValues("replaced").Inc()
		return status.Errorf(codes.Aborted, "stream of node %s %v", node, errReplaced)
	}
	if c := context.Cause(ctx); errors.Is(c, errLeaseLost) || errors.Is(c, errHeldElsewhere) {
		return status.Errorf(codes.Unavailable, "stream of node %s dropped: %v; connect to another replica", node, c)
	}
	if err != nil {
		g.log.Info("agent stream ended", "node", node, "err", err)
	} else {
		g.log.Info("agent stream closed by the agent", "node", node)
	}
	return err
}

// replace registers s as its node's live stream, ending the previous one
// and waiting (a bounded time) for it to finish applying. A stream of a new
// node beyond MaxStreams is refused with ResourceExhausted.
func (g *Gateway) replace(s *agentStream) error {
	g.mu.Lock()
	old := g.streams[s.node]
	if old == nil && len(g.streams) >= g.maxStreams {
		g.mu.Unlock()
		g.metrics.rejected.WithLabelValues("too_many_streams").Inc()
		return status.Errorf(codes.ResourceExhausted, "the aggregator serves %d agent streams, its cap (--max-streams); node %s is refused", g.maxStreams, s.node)
	}
	g.streams[s.node] = s
	g.mu.Unlock()
	if old == nil {
		return nil
	}
	g.log.Info("agent reconnected: replacing its previous stream", "node", s.node)
	old.cancel(errReplaced)
	select {
	case <-old.done:
	case <-time.After(replaceWait):
		g.log.Warn("previous stream did not end in time; continuing", "node", s.node)
	}
	return nil
}

// dropStream ends s (a stream of node) with cause, if it still runs.
func (g *Gateway) dropStream(node string, s *agentStream, cause error) {
	if s != nil {
		s.cancel(cause)
	}
}

// nodeMoved forgets node here when another replica holds it now and no
// stream of it is held here: its series and state are that replica's to
// show (no duplicate series, no stale ones).
func (g *Gateway) nodeMoved(node string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.streams[node] == nil && !g.replicas.holds(node) {
		g.forget(node)
	}
}

// forget drops node from this replica: its fleet state and its per-node
// self-metric series (another replica shows them now).
func (g *Gateway) forget(node string) {
	g.fleet.forget(node)
	g.metrics.nodeForgotten(node)
}

// helloOverQuota counts and logs a stream refused because its hello is
// over a quota; claimed is the node the hello names ("" when it could not
// be read). It is not counted under that name: the name is not checked
// against the certificate yet (and may be what is over the cap), and a
// series per name claimed would never be deleted.
func (g *Gateway) helloOverQuota(q *quotaError, claimed string) {
	g.metrics.rejected.WithLabelValues("hello_over_quota").Inc()
	g.log.Warn("agent stream refused: its hello is over a quota", "claimed_node", claimed, "cap", q.cap, "value", q.value, "limit", q.limit)
}

// quotaExceeded counts and logs a node over a cap; the error ends the
// node's stream with ResourceExhausted naming the cap and the value.
func (g *Gateway) quotaExceeded(node string, err error) error {
	if q, ok := asQuotaError(err); ok {
		g.metrics.quota.WithLabelValues(node, q.cap).Inc()
		g.log.Warn("agent stream cut off: over a quota", "node", node, "cap", q.cap, "value", q.value, "limit", q.limit)
	}
	return err
}

// serve applies messages until the stream ends; nil means the agent closed it.
func (g *Gateway) serve(ctx context.Context, s *agentStream, msgs <-chan sized, recvErr <-chan error) error {
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(context.Cause(ctx)).Err()
		case <-g.stopping:
			return fmt.Errorf("aggregator shutting down: %w", errdefs.ErrUnavailable)
		case err := <-recvErr:
			return err
		case sm := <-msgs:
			m := sm.m
			g.count(m, sm.size)
			if err := validate(m); err != nil {
				g.metrics.rejected.WithLabelValues("invalid").Inc()
				return err
			}
			if err := g.quotas.checkMessage(m); err != nil {
				return g.quotaExceeded(s.node, err)
			}
			// Journaled before the ack; a message re-sent after a reconnect
			// that was applied already is not journaled again.
			if r := m.GetCommandResult(); r != nil && g.remediation != nil && !g.fleet.applied(s.node, m.GetSeq()) {
				if err := g.recordResult(ctx, s.node, r); err != nil {
					return err
				}
			}
			now := g.now()
			res, err := g.fleet.apply(s.node, m, now, &g.quotas)
			if err != nil {
				if _, ok := asQuotaError(err); ok {
					return g.quotaExceeded(s.node, err)
				}
				return err
			}
			if res.gap > 0 {
				g.log.Warn("sequence gap in an agent's stream: messages were lost", "node", s.node,
					"after_seq", res.gapAfter, "seq", m.GetSeq(), "missing", res.gap, "snapshot_asked", res.askSnapshot)
			}
			if res.askSnapshot {
				req := &vigilv1.SnapshotRequest{AfterSeq: res.gapAfter,
					Reason: fmt.Sprintf("sequence gap: %d after %d", m.GetSeq(), res.gapAfter)}
				select {
				case s.snapshot <- req:
				default: // one is pending already
				}
			}
			if !res.applied {
				g.metrics.rejected.WithLabelValues("duplicate").Inc()
			} else if sent := m.GetSentAt(); sent != nil {
				g.metrics.lag.Observe(max(0, now.Sub(sent.AsTime()).Seconds()))
			}
			s.applied.Store(res.acked)
			// Wake the sender on the first unacknowledged message (it arms
			// the ack timer) and when AckEvery is reached (it acks at once).
			if n := s.unacked.Add(1); n == 1 || n >= int64(g.ackEvery) {
				select {
				case s.wake <- struct{}{}:
				default:
				}
			}
		}
	}
}

// sendLoop is the only sender on the stream after the HelloAck: acks (at
// most AckInterval after a message was applied, at once after AckEvery
// messages) and queued commands. An idle stream costs no wakeups: the ack
// timer runs only while something is unacknowledged.
func (g *Gateway) sendLoop(ctx context.Context, stream agentConn, s *agentStream) {
	timer := time.NewTimer(g.ackInterval)
	timer.Stop()
	var timerC <-chan time.Time
	var lastAck uint64
	sendAck := func() bool {
		s.unacked.Store(0)
		seq := s.applied.Load()
		if seq == lastAck {
			return true
		}
		if err := stream.Send(&vigilv1.AggregatorMessage{Body: &vigilv1.AggregatorMessage_Ack{Ack: &vigilv1.Ack{Seq: seq}}}); err != nil {
			s.cancel(fmt.Errorf("send ack: %w", err))
			return false
		}
		lastAck = seq
		g.metrics.acks.Inc()
		return true
	}
	for {
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timerC:
			timerC = nil
			if !sendAck() {
				return
			}
		case <-s.wake:
			if s.unacked.Load() >= int64(g.ackEvery) {
				timer.Stop()
				timerC = nil
				if !sendAck() {
					return
				}
			} else if timerC == nil {
				timer.Reset(g.ackInterval)
				timerC = timer.C
			}
		case req := <-s.snapshot:
			if err := stream.Send(&vigilv1.AggregatorMessage{Body: &vigilv1.AggregatorMessage_SnapshotRequest{SnapshotRequest: req}}); err != nil {
				s.cancel(fmt.Errorf("send snapshot request: %w", err))
				return
			}
		case cmd := <-s.commands:
			if err := stream.Send(&vigilv1.AggregatorMessage{Body: &vigilv1.AggregatorMessage_Command{Command: cmd}}); err != nil {
				s.cancel(fmt.Errorf("send command: %w", err))
				return
			}
			g.metrics.commands.WithLabelValues("sent").Inc()
		}
	}
}

// sized is a received message and its wire size.
type sized struct {
	m    *vigilv1.AgentMessage
	size int
}

func (g *Gateway) count(m *vigilv1.AgentMessage, size int) {
	k := kindOf(m)
	g.metrics.messages.WithLabelValues(k).Inc()
	g.metrics.bytes.WithLabelValues(k).Add(float64(size))
}

// recvError turns a receive error into the stream's final status: nil when
// the agent closed the stream, a clear status for malformed or oversized
// messages.
func (g *Gateway) recvError(node string, err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	if q, ok := asQuotaError(err); ok {
		if node == "" {
			g.helloOverQuota(q, "")
			return err
		}
		return g.quotaExceeded(node, err)
	}
	if errors.Is(err, errMalformed) {
		g.metrics.rejected.WithLabelValues("malformed").Inc()
		g.log.Warn("malformed agent message", "node", node, "err", err)
		return fmt.Errorf("%w: %w", err, errdefs.ErrInvalid)
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch {
	case st.Code() == codes.ResourceExhausted:
		g.metrics.rejected.WithLabelValues("oversized").Inc()
		g.log.Warn("agent message over the size limit", "node", node, "limit", g.maxMessageBytes, "err", st.Message())
		if node != "" {
			g.metrics.quota.WithLabelValues(node, capMessageBytes).Inc()
		}
		// gRPC has already ended the stream with its own status
		// ("received message larger than max (N vs. LIMIT)").
		return status.Errorf(codes.ResourceExhausted, "quota %s exceeded: message over the aggregator's limit of %d bytes (%s; %s)", capMessageBytes, g.maxMessageBytes, st.Message(), flagOf[capMessageBytes])
	}
	return err
}

// checkHello checks the first message of a stream: a Hello with a valid
// node name, whose strings are within the quotas. Errors wrap
// errdefs.ErrInvalid or are a *quotaError.
func checkHello(first *vigilv1.AgentMessage, q *Quotas) (*vigilv1.Hello, error) {
	hello := first.GetHello()
	if hello == nil {
		return nil, fmt.Errorf("the first message of a stream must be a Hello, got %s: %w", kindOf(first), errdefs.ErrInvalid)
	}
	if err := validNodeName(hello.GetNodeName()); err != nil {
		return nil, fmt.Errorf("hello: %w", err)
	}
	if n := len(hello.GetCapabilities()); n > 64 {
		return nil, fmt.Errorf("hello: %d capabilities, at most 64: %w", n, errdefs.ErrInvalid)
	}
	if err := q.checkMessage(first); err != nil {
		return nil, err
	}
	return hello, nil
}

// validNodeName checks a node name: 1 to 253 bytes of printable UTF-8.
func validNodeName(name string) error {
	if name == "" {
		return fmt.Errorf("node_name is empty: %w", errdefs.ErrInvalid)
	}
	if len(name) > 253 {
		return fmt.Errorf("node_name is %d bytes long, the limit is 253: %w", len(name), errdefs.ErrInvalid)
	}
	if !utf8.ValidString(name) || strings.IndexFunc(name, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return fmt.Errorf("node_name %q holds invalid UTF-8 or unprintable characters: %w", name, errdefs.ErrInvalid)
	}
	return nil
}

// validate checks a message after the hello: what apply relies on.
func validate(m *vigilv1.AgentMessage) error {
	if m.GetBody() == nil {
		return fmt.Errorf("message seq %d has no body (empty or unknown payload): %w", m.GetSeq(), errdefs.ErrInvalid)
	}
	if m.GetHello() != nil {
		return fmt.Errorf("message seq %d is a second Hello; a stream has one: %w", m.GetSeq(), errdefs.ErrInvalid)
	}
	if m.GetSeq() == 0 {
		return fmt.Errorf("%s message has seq 0; sequence numbers start at 1: %w", kindOf(m), errdefs.ErrInvalid)
	}
	checkContainer := func(where string, c *vigilv1.Container) error {
		if c == nil || c.GetId() == "" || c.GetNamespace() == "" {
			return fmt.Errorf("message seq %d: %s: container without id or namespace: %w", m.GetSeq(), where, errdefs.ErrInvalid)
		}
		return nil
	}
	switch b := m.GetBody().(type) {
	case *vigilv1.AgentMessage_Snapshot:
		for i, c := range b.Snapshot.GetContainers() {
			if err := checkContainer(fmt.Sprintf("snapshot container %d", i), c); err != nil {
				return err
			}
		}
	case *vigilv1.AgentMessage_ContainerEvent:
		return checkContainer("container event", b.ContainerEvent.GetContainer())
	case *vigilv1.AgentMessage_CommandResult:
		if b.CommandResult.GetCommandId() == "" {
			return fmt.Errorf("message seq %d: command result without command_id: %w", m.GetSeq(), errdefs.ErrInvalid)
		}
	case *vigilv1.AgentMessage_NetworkEvent:
		if b.NetworkEvent.GetInterface() == nil {
			return fmt.Errorf("message seq %d: network event without interface: %w", m.GetSeq(), errdefs.ErrInvalid)
		}
	}
	return nil
}
