package uplink

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/errdefs"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// ProtocolVersion is the AgentGateway protocol revision this package speaks.
const ProtocolVersion = 1

// Config configures an Uplink. Zero durations and sizes take the defaults
// named on each field.
type Config struct {
	// Address of the aggregator's AgentGateway (host:port, or any gRPC
	// target such as dns:///name:port), or several of them separated by
	// commas (the replicas of an aggregator): each stream goes to one, and
	// after a stream fails or ends the next one is tried, with the usual
	// backoff and jitter. Required.
	Address string
	// TLS is the client configuration (pki.ClientConfig). nil dials without
	// TLS; the caller is expected to warn about it. The Uplink clones it.
	TLS *tls.Config
	// NodeName is sent in every Hello. Under mTLS it must equal the client
	// certificate's common name. Required.
	NodeName string
	// AgentVersion and BootID are sent in every Hello.
	AgentVersion, BootID string
	// Capabilities announced in every Hello ("health", "restart", ...).
	Capabilities []string
	// OnHelloAck, when set, is called with each stream's HelloAck (on the
	// stream's goroutine: it must not block), e.g. for its gossip seeds.
	OnHelloAck func(*vigilv1.HelloAck)
	// BufferSize is how many messages are held until acknowledged.
	// Default 10000.
	BufferSize int
	// CommandBuffer is the capacity of the Commands channel. Default 64.
	CommandBuffer int
	// BackoffInitial and BackoffMax bound the reconnect delay: the delay
	// before attempt n is drawn uniformly from [0, min(BackoffMax,
	// BackoffInitial*2^n)]. The attempt count restarts after a stream that
	// lived at least BackoffMax. Defaults 500ms and 30s.
	BackoffInitial, BackoffMax time.Duration
	// KeepaliveTime is the idle time after which the client pings the
	// aggregator (gRPC raises values under 10s to 10s); KeepaliveTimeout is
	// how long it waits for the answer before closing the connection. The
	// aggregator's keepalive.EnforcementPolicy.MinTime must not exceed
	// KeepaliveTime. Defaults 30s and 10s.
	KeepaliveTime, KeepaliveTimeout time.Duration
	// HelloTimeout bounds connecting plus the Hello/HelloAck exchange.
	// Default 15s.
	HelloTimeout time.Duration
	// AckTimeout: when a message written on the current stream stays
	// unacknowledged for longer, the stream is taken as stuck and replaced.
	// Default 1m.
	AckTimeout time.Duration
	// MaxMessageBytes is the largest message sent or received. A message
	// larger than it is refused by Send (and a Snapshot larger than it is
	// not sent), with an error log, instead of breaking the stream on every
	// resend. Default 4 MiB (gRPC's default receive limit).
	MaxMessageBytes int
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() (Config, error) {
	if c.Address == "" {
		return c, fmt.Errorf("uplink: aggregator address is required: %w", errdefs.ErrInvalid)
	}
	if c.NodeName == "" {
		return c, fmt.Errorf("uplink: node name is required: %w", errdefs.ErrInvalid)
	}
	for name, v := range map[string]int64{
		"BufferSize": int64(c.BufferSize), "CommandBuffer": int64(c.CommandBuffer),
		"BackoffInitial": int64(c.BackoffInitial), "BackoffMax": int64(c.BackoffMax),
		"KeepaliveTime": int64(c.KeepaliveTime), "KeepaliveTimeout": int64(c.KeepaliveTimeout),
		"HelloTimeout": int64(c.HelloTimeout), "AckTimeout": int64(c.AckTimeout),
		"MaxMessageBytes": int64(c.MaxMessageBytes),
	} {
		if v < 0 {
			return c, fmt.Errorf("uplink: %s must not be negative (got %d): %w", name, v, errdefs.ErrInvalid)
		}
	}
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.BackoffInitial, 500*time.Millisecond)
	def(&c.BackoffMax, 30*time.Second)
	def(&c.KeepaliveTime, 30*time.Second)
	def(&c.KeepaliveTimeout, 10*time.Second)
	def(&c.HelloTimeout, 15*time.Second)
	def(&c.AckTimeout, time.Minute)
	if c.BackoffMax < c.BackoffInitial {
		return c, fmt.Errorf("uplink: BackoffMax (%s) is below BackoffInitial (%s): %w", c.BackoffMax, c.BackoffInitial, errdefs.ErrInvalid)
	}
	if c.BufferSize == 0 {
		c.BufferSize = 10000
	}
	if c.CommandBuffer == 0 {
		c.CommandBuffer = 64
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = 4 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.TLS != nil {
		c.TLS = c.TLS.Clone()
	}
	return c, nil
}

// Snapshot reasons, the values of the reason label of
// vigil_agent_uplink_snapshots_total.
const (
	reasonNewInstance    = "new_instance"
	reasonRequested      = "requested"
	reasonOverflow       = "overflow"
	reasonResumeMismatch = "resume_mismatch"
)

var snapshotReasons = []string{reasonNewInstance, reasonRequested, reasonOverflow, reasonResumeMismatch}

// Uplink is the agent's end of the AgentGateway stream. Send* and the other
// methods are safe for concurrent use; Run runs at most once at a time.
type Uplink struct {
	cfg        Config
	snapshot   func() *vigilv1.Snapshot
	log        *slog.Logger
	instanceID string
	backoff    backoff
	// addrs are Address's targets; next is the index of the one the next
	// stream dials (Run's goroutine only).
	addrs []string
	next  int

	commands chan *vigilv1.Command
	// wake has room for one token: a Send leaves one so the transmitter
	// looks at the buffer again.
	wake      chan struct{}
	connected atomic.Bool
	running   atomic.Bool

	mu  sync.Mutex
	buf *buffer
	// needSnapshot is why the next write must be a Snapshot; "" when not.
	needSnapshot string
	// overflowDrops counts drops since the last snapshot, for the log line.
	overflowDrops uint64
	stats         counters
}

// counters are the cumulative figures behind Collector and Stats, guarded
// by Uplink.mu.
type counters struct {
	dropped, coalesced, oversized, sent, sentBytes [numKinds]uint64
	superseded                                     uint64
	snapshots                                      map[string]uint64
	reconnects                                     uint64
	commandsReceived, commandsRefused              uint64
	ackLag                                         time.Duration
}

// New returns an Uplink that is not yet connected: messages sent before Run
// are held and delivered once it connects. snapshot returns the node's whole
// current state; it is called from the goroutine running Run, whenever a
// Snapshot must be sent, and must not return nil. The agent must apply a
// change to the state that snapshot reads before sending the change's
// message, so that a snapshot never misses a change it supersedes.
func New(cfg Config, snapshot func() *vigilv1.Snapshot) (*Uplink, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if snapshot == nil {
		return nil, fmt.Errorf("uplink: a snapshot function is required: %w", errdefs.ErrInvalid)
	}
	addrs, err := targets(cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("uplink: %w", err)
	}
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("uplink: instance id: %w", err)
	}
	return &Uplink{
		addrs:        addrs,
		cfg:          cfg,
		snapshot:     snapshot,
		log:          cfg.Logger.With("component", "uplink", "aggregator", cfg.Address),
		instanceID:   hex.EncodeToString(id[:]),
		backoff:      backoff{initial: cfg.BackoffInitial, max: cfg.BackoffMax},
		commands:     make(chan *vigilv1.Command, cfg.CommandBuffer),
		wake:         make(chan struct{}, 1),
		buf:          newBuffer(cfg.BufferSize),
		needSnapshot: reasonNewInstance,
		stats:        counters{snapshots: map[string]uint64{}},
	}, nil
}

// InstanceID is the random id of this Uplink's sequence space, sent in
// every Hello.
func (u *Uplink) InstanceID() string { return u.instanceID }

// Connected reports whether a stream is established (HelloAck received)
// right now.
func (u *Uplink) Connected() bool { return u.connected.Load() }

// Commands delivers the aggregator's commands in the order received. The
// channel holds Config.CommandBuffer commands and is never closed. When it
// is full, a new command is not queued: the uplink answers it at once with a
// FAILED CommandResult saying so, and keeps reading the stream (acks must
// not wait for a slow consumer).
func (u *Uplink) Commands() <-chan *vigilv1.Command { return u.commands }

// Stats is a summary of the uplink's state, for the agent's NodeStatus.
type Stats struct {
	// Buffered messages awaiting acknowledgement, and the buffer's capacity.
	Buffered, Capacity int
	// Dropped counts messages lost because the buffer was full.
	Dropped uint64
	// Reconnects counts streams that ended and were dialed again.
	Reconnects uint64
	// AckedSeq is the highest sequence number acknowledged.
	AckedSeq uint64
	// Connected is Connected().
	Connected bool
}

// Stats returns the current figures.
func (u *Uplink) Stats() Stats {
	u.mu.Lock()
	defer u.mu.Unlock()
	var dropped uint64
	for _, n := range u.stats.dropped {
		dropped += n
	}
	return Stats{
		Buffered:   len(u.buf.entries),
		Capacity:   u.buf.capacity,
		Dropped:    dropped,
		Reconnects: u.stats.reconnects,
		AckedSeq:   u.buf.acked,
		Connected:  u.connected.Load(),
	}
}

// SendContainerEvent queues a container event. Like every Send method it
// never blocks on the network: it takes a mutex, and returns an error
// wrapping errdefs.ErrInvalid only for a nil or oversized message. The
// uplink owns the message afterwards; the caller must not modify it.
func (u *Uplink) SendContainerEvent(ev *vigilv1.ContainerEvent) error {
	if ev == nil {
		return errNil(kindContainerEvent)
	}
	return u.send(kindContainerEvent, &vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_ContainerEvent{ContainerEvent: ev}})
}

// SendResourceSamples queues a batch of resource samples; an older batch
// not yet sent is replaced.
func (u *Uplink) SendResourceSamples(s *vigilv1.ResourceSamples) error {
	if s == nil {
		return errNil(kindResourceSamples)
	}
	return u.send(kindResourceSamples, &vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_ResourceSamples{ResourceSamples: s}})
}

// SendNetworkSamples queues a batch of network namespace reads; an older
// batch not yet sent is replaced.
func (u *Uplink) SendNetworkSamples(s *vigilv1.NetworkSamples) error {
	if s == nil {
		return errNil(kindNetworkSamples)
	}
	return u.send(kindNetworkSamples, &vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_NetworkSamples{NetworkSamples: s}})
}

// SendNetworkEvent queues a link change.
func (u *Uplink) SendNetworkEvent(ev *vigilv1.NetworkEvent) error {
	if ev == nil {
		return errNil(kindNetworkEvent)
	}
	return u.send(kindNetworkEvent, &vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_NetworkEvent{NetworkEvent: ev}})
}

// SendNodeStatus queues the node status; an older one not yet sent is
// replaced.
func (u *Uplink) SendNodeStatus(s *vigilv1.NodeStatus) error {
	if s == nil {
		return errNil(kindNodeStatus)
	}
	return u.send(kindNodeStatus, &vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_NodeStatus{NodeStatus: s}})
}

// SendPeerView queues the gossip view; an older one not yet sent is
// replaced.
func (u *Uplink) SendPeerView(v *vigilv1.PeerView) error {
	if v == nil {
		return errNil(kindPeerView)
	}
	return u.send(kindPeerView, &vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_PeerView{PeerView: v}})
}

// SendCommandResult queues the outcome of a command.
func (u *Uplink) SendCommandResult(r *vigilv1.CommandResult) error {
	if r == nil {
		return errNil(kindCommandResult)
	}
	return u.send(kindCommandResult, &vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_CommandResult{CommandResult: r}})
}

func errNil(k kind) error {
	return fmt.Errorf("uplink: nil %s: %w", k, errdefs.ErrInvalid)
}

func (u *Uplink) send(k kind, env *vigilv1.AgentMessage) error {
	env.SentAt = timestamppb.Now()
	// Size with the largest sequence number, so that the limit still holds
	// once the real number is set.
	env.Seq = math.MaxUint64
	size := proto.Size(env)
	env.Seq = 0
	if size > u.cfg.MaxMessageBytes {
		u.mu.Lock()
		u.stats.oversized[k]++
		u.mu.Unlock()
		u.log.Error("refusing to send a message larger than the limit", "kind", k.String(), "bytes", size, "limit", u.cfg.MaxMessageBytes)
		return fmt.Errorf("uplink: %s of %d bytes exceeds the %d-byte message limit: %w", k, size, u.cfg.MaxMessageBytes, errdefs.ErrInvalid)
	}
	e := &entry{kind: k, msg: env, size: size}

	u.mu.Lock()
	res := u.buf.push(e)
	if res.coalesced || res.evictedSample {
		kk := k
		if res.evictedSample {
			kk = res.dropped.kind
		}
		u.stats.coalesced[kk]++
	}
	var dropped *entry
	if !res.evictedSample {
		dropped = res.dropped
	}
	logDrop := u.noteDropLocked(dropped)
	u.mu.Unlock()
	logDrop()
	select {
	case u.wake <- struct{}{}:
	default:
	}
	return nil
}

// noteDropLocked counts an entry the full buffer dropped (nil: none) and
// decides what it takes to recover; it returns the log line to write once
// u.mu is released. Called with u.mu held.
func (u *Uplink) noteDropLocked(d *entry) (logLine func()) {
	if d == nil {
		return func() {}
	}
	u.stats.dropped[d.kind]++
	switch {
	case d.kind.latestWins():
		// The next batch of its kind carries the same information.
		return func() {
			u.log.Debug("uplink buffer is full of lifecycle messages: dropped a batch", "kind", d.kind.String())
		}
	case d.kind.inSnapshot():
		first := u.overflowDrops == 0
		u.overflowDrops++
		if u.needSnapshot == "" {
			u.needSnapshot = reasonOverflow
		}
		if !first {
			return func() {}
		}
		return func() {
			u.log.Warn("uplink buffer is full: dropping the oldest messages; a fresh snapshot will follow",
				"capacity", u.cfg.BufferSize, "dropped_kind", d.kind.String())
		}
	default:
		return func() {
			u.log.Error("uplink buffer is full: dropped a command result; the aggregator will not learn that command's outcome",
				"capacity", u.cfg.BufferSize, "command_id", d.msg.GetCommandResult().GetCommandId())
		}
	}
}

// Run dials the aggregator and keeps one stream open, reconnecting with
// backoff when it ends, until ctx ends; it then returns nil. Every stream's
// context is cancelled and its goroutines have returned before the next one
// is dialed. Calling Run while another Run is active returns an error
// wrapping errdefs.ErrConflict.
func (u *Uplink) Run(ctx context.Context) error {
	if !u.running.CompareAndSwap(false, true) {
		return fmt.Errorf("uplink: Run is already active: %w", errdefs.ErrConflict)
	}
	defer u.running.Store(false)
	attempt := 0
	waitLogged := false
	for {
		start := time.Now()
		established, err := u.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errNoCertificate) {
			// Expected while the certificate keeper bootstraps (its own
			// log says why when that fails): nothing was dialed, so no
			// reconnect is counted and the backoff does not grow; a stat
			// of the files every BackoffInitial is all it costs.
			delay := u.backoff.delay(0)
			level := slog.LevelDebug
			if !waitLogged {
				level, waitLogged = slog.LevelInfo, true
			}
			u.log.Log(ctx, level, "waiting for the node certificate before dialing the aggregator", "error", err, "retry_in", delay.Round(time.Millisecond))
			if !sleep(ctx, delay) {
				return nil
			}
			continue
		}
		// The next stream goes to the next replica: the one that just
		// failed (or ended a stream) may be gone.
		u.next = (u.next + 1) % len(u.addrs)
		if established && time.Since(start) >= u.cfg.BackoffMax {
			attempt = 0
		}
		var delay time.Duration
		var ra *retryAfterError
		if errors.As(err, &ra) {
			// The aggregator said when the node can be taken (the lease
			// of the replica that held it ends): retry then, not later
			// with a backoff grown on refusals.
			delay = u.backoff.after(ra.after)
		} else {
			delay = u.backoff.delay(attempt)
			if attempt < 64 {
				attempt++
			}
		}
		u.mu.Lock()
		u.stats.reconnects++
		u.mu.Unlock()
		level := slog.LevelWarn
		if established {
			level = slog.LevelInfo
		}
		u.log.Log(ctx, level, "aggregator stream ended; reconnecting", "error", err, "was_connected", established, "retry_in", delay.Round(time.Millisecond))
		if !sleep(ctx, delay) {
			return nil
		}
	}
}

// sleep waits d; false when ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// errNoCertificate: the client certificate cannot be loaded yet (the
// certificate keeper has not obtained it), so a handshake would only fail.
var errNoCertificate = errors.New("no client certificate yet")

// certificateReady reports errNoCertificate while the TLS configuration's
// client certificate does not load. Without TLS, or with a fixed
// certificate, it is always ready.
func (u *Uplink) certificateReady() error {
	if u.cfg.TLS == nil || u.cfg.TLS.GetClientCertificate == nil {
		return nil
	}
	if _, err := u.cfg.TLS.GetClientCertificate(&tls.CertificateRequestInfo{}); err != nil {
		return fmt.Errorf("%w: %v", errNoCertificate, err)
	}
	return nil
}

var (
	errHelloTimeout = errors.New("no HelloAck within the hello timeout")
	errAckTimeout   = errors.New("a message stayed unacknowledged longer than the ack timeout")
	errServerClosed = errors.New("the aggregator closed the stream")
)

// session runs one stream to its end. established reports whether a
// HelloAck was received. The stream's context is cancelled and its
// goroutines have returned when session returns.
func (u *Uplink) session(ctx context.Context) (established bool, err error) {
	if err := u.certificateReady(); err != nil {
		return false, err
	}
	addr := u.addrs[u.next]
	conn, err := grpc.NewClient(addr, u.dialOptions()...)
	if err != nil {
		return false, fmt.Errorf("dial %s: %v: %w", addr, err, errdefs.ErrInvalid)
	}
	defer conn.Close()
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	helloTimer := time.AfterFunc(u.cfg.HelloTimeout, func() { cancel(errHelloTimeout) })
	defer helloTimer.Stop()
	stream, err := vigilv1.NewAgentGatewayClient(conn).Connect(sctx)
	if err != nil {
		return false, causeOr(sctx, fmt.Errorf("cannot reach aggregator at %s: %w", addr, err))
	}
	u.mu.Lock()
	acked := u.buf.acked
	u.mu.Unlock()
	hello := &vigilv1.AgentMessage{SentAt: timestamppb.Now(), Body: &vigilv1.AgentMessage_Hello{Hello: &vigilv1.Hello{
		NodeName:        u.cfg.NodeName,
		AgentVersion:    u.cfg.AgentVersion,
		BootId:          u.cfg.BootID,
		InstanceId:      u.instanceID,
		LastAckedSeq:    acked,
		Capabilities:    u.cfg.Capabilities,
		ProtocolVersion: ProtocolVersion,
	}}}
	if err := stream.Send(hello); err != nil {
		return false, causeOr(sctx, u.streamError(stream, "send hello", err))
	}
	first, err := stream.Recv()
	if err != nil {
		return false, causeOr(sctx, u.streamError(stream, "await HelloAck", err))
	}
	ack := first.GetHelloAck()
	if ack == nil {
		return false, fmt.Errorf("protocol error: the aggregator's first message is %T, not a HelloAck", first.GetBody())
	}
	if !helloTimer.Stop() {
		return false, context.Cause(sctx)
	}
	u.onHelloAck(ack)
	if u.cfg.OnHelloAck != nil {
		u.cfg.OnHelloAck(ack)
	}
	u.connected.Store(true)
	defer u.connected.Store(false)

	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		cancel(u.receive(stream))
	}()
	go func() {
		defer wg.Done()
		u.watchAcks(sctx, cancel)
	}()
	cancel(u.transmit(sctx, stream))
	wg.Wait()
	return true, context.Cause(sctx)
}

// targets splits an aggregator address (Config.Address, KeeperConfig.Address)
// into the gRPC targets it lists, in order: one, or several separated by
// commas (the replicas of an aggregator). The stream and the certificate
// keeper both go through the list from one target to the next.
func targets(address string) ([]string, error) {
	var addrs []string
	for _, a := range strings.Split(address, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("aggregator address %q names no address: %w", address, errdefs.ErrInvalid)
	}
	return addrs, nil
}

// causeOr prefers the cause of ctx's cancellation (a hello timeout) over the
// error a cancelled call returned.
func causeOr(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) {
		return c
	}
	return err
}

// streamError turns the error of a failed Send or Recv into the stream's
// final status.
func (u *Uplink) streamError(stream grpc.BidiStreamingClient[vigilv1.AgentMessage, vigilv1.AggregatorMessage], op string, err error) error {
	if errors.Is(err, io.EOF) {
		// A failed Send returns io.EOF; the status comes from Recv.
		if _, rerr := stream.Recv(); rerr != nil && !errors.Is(rerr, io.EOF) {
			err = rerr
		} else {
			err = errServerClosed
		}
	}
	wrapped := fmt.Errorf("%s: %w", op, errdefs.FromGRPC(err))
	if d := retryInfo(err); d > 0 {
		return &retryAfterError{after: d, err: wrapped}
	}
	return wrapped
}

// retryAfterError is a stream's end where the aggregator told when to try
// again (a google.rpc.RetryInfo detail in its status).
type retryAfterError struct {
	after time.Duration
	err   error
}

func (e *retryAfterError) Error() string { return e.err.Error() }
func (e *retryAfterError) Unwrap() error { return e.err }

// retryInfo is the RetryInfo delay in a gRPC error's status (0: none).
func retryInfo(err error) time.Duration {
	st, ok := status.FromError(err)
	if !ok {
		return 0
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return 0
}

func (u *Uplink) dialOptions() []grpc.DialOption {
	creds := insecure.NewCredentials()
	if u.cfg.TLS != nil {
		creds = credentials.NewTLS(u.cfg.TLS)
	}
	return []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                u.cfg.KeepaliveTime,
			Timeout:             u.cfg.KeepaliveTimeout,
			PermitWithoutStream: true,
		}),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallSendMsgSize(u.cfg.MaxMessageBytes),
			grpc.MaxCallRecvMsgSize(u.cfg.MaxMessageBytes),
		),
		grpc.WithUserAgent("vigil-agent/" + u.cfg.AgentVersion),
		// The stream writes once per interval: its 32 KiB write buffer is
		// borrowed from a pool for each flush instead of held for the
		// connection's life. The read buffer would only copy what TLS
		// already holds decrypted (acknowledgements and commands are small).
		grpc.WithSharedWriteBuffer(true),
		grpc.WithReadBufferSize(0),
	}
}

// onHelloAck positions the buffer for a new stream.
func (u *Uplink) onHelloAck(ack *vigilv1.HelloAck) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.buf.rewind()
	resume, last, acked := ack.GetResumeAfterSeq(), u.buf.lastSeq(), u.buf.acked
	switch {
	case resume > last:
		// The aggregator claims numbers this instance never used. Continue
		// above them so that new messages are not discarded as duplicates,
		// and resynchronise with a snapshot.
		u.log.Warn("aggregator resumes after a sequence number this agent never sent; sending a snapshot",
			"resume_after_seq", resume, "last_seq", last)
		u.buf.nextSeq = resume + 1
		u.needSnapshot = cmp(u.needSnapshot, reasonResumeMismatch)
	case resume < acked && !ack.GetSnapshotRequired():
		u.log.Warn("aggregator resumes before messages it already acknowledged; sending a snapshot",
			"resume_after_seq", resume, "acked_seq", acked)
		u.needSnapshot = cmp(u.needSnapshot, reasonResumeMismatch)
	default:
		u.buf.ack(resume)
	}
	if ack.GetSnapshotRequired() {
		u.needSnapshot = cmp(u.needSnapshot, reasonRequested)
	}
	u.log.Info("connected to aggregator", "aggregator_id", ack.GetAggregatorId(), "node", ack.GetNodeName(),
		"resume_after_seq", resume, "snapshot_required", ack.GetSnapshotRequired(), "held", len(u.buf.entries))
}

// cmp keeps the first reason given.
func cmp(current, reason string) string {
	if current != "" {
		return current
	}
	return reason
}

// transmit writes the buffer to the stream until the stream fails or sctx
// ends.
func (u *Uplink) transmit(sctx context.Context, stream grpc.BidiStreamingClient[vigilv1.AgentMessage, vigilv1.AggregatorMessage]) error {
	for {
		if err := u.sendSnapshotIfNeeded(sctx, stream); err != nil {
			return err
		}
		u.mu.Lock()
		e := u.buf.next(time.Now())
		u.mu.Unlock()
		if e == nil {
			select {
			case <-u.wake:
				continue
			case <-sctx.Done():
				return context.Cause(sctx)
			}
		}
		if err := stream.Send(e.msg); err != nil {
			if errors.Is(err, io.EOF) {
				// The stream is over; its status arrives through Recv,
				// whose goroutine cancels sctx with it.
				<-sctx.Done()
				return context.Cause(sctx)
			}
			return fmt.Errorf("send: %w", err)
		}
		u.mu.Lock()
		u.stats.sent[e.kind]++
		u.stats.sentBytes[e.kind] += uint64(e.size)
		u.mu.Unlock()
	}
}

// sendSnapshotIfNeeded writes a fresh Snapshot when one is due. Called only
// from transmit's goroutine, which is the only writer of sequence numbers.
func (u *Uplink) sendSnapshotIfNeeded(sctx context.Context, stream grpc.BidiStreamingClient[vigilv1.AgentMessage, vigilv1.AggregatorMessage]) error {
	u.mu.Lock()
	reason := u.needSnapshot
	if reason == "" {
		u.mu.Unlock()
		return nil
	}
	u.needSnapshot = ""
	seq, superseded := u.buf.supersede()
	drops := u.overflowDrops
	u.overflowDrops = 0
	u.stats.superseded += uint64(superseded)
	u.mu.Unlock()

	snap := u.snapshot()
	if snap == nil {
		u.log.Error("snapshot function returned nil; the aggregator's view of this node may be stale", "reason", reason)
		return nil
	}
	env := &vigilv1.AgentMessage{Seq: seq, SentAt: timestamppb.Now(), Body: &vigilv1.AgentMessage_Snapshot{Snapshot: snap}}
	size := proto.Size(env)
	if size > u.cfg.MaxMessageBytes {
		u.mu.Lock()
		u.stats.oversized[kindSnapshot]++
		u.mu.Unlock()
		u.log.Error("snapshot exceeds the message limit and is not sent; raise the limit on both ends",
			"bytes", size, "limit", u.cfg.MaxMessageBytes, "containers", len(snap.GetContainers()))
		return nil
	}
	u.mu.Lock()
	logDrop := u.noteDropLocked(u.buf.insertFront(&entry{kind: kindSnapshot, msg: env, size: size}))
	u.stats.snapshots[reason]++
	u.mu.Unlock()
	logDrop()
	level := slog.LevelInfo
	if reason == reasonOverflow {
		level = slog.LevelWarn
	}
	u.log.Log(sctx, level, "sending snapshot", "reason", reason, "seq", seq, "superseded_messages", superseded,
		"dropped_since_last_snapshot", drops, "containers", len(snap.GetContainers()))
	return nil
}

// receive reads the aggregator's messages until the stream ends, returning
// why it ended.
func (u *Uplink) receive(stream grpc.BidiStreamingClient[vigilv1.AgentMessage, vigilv1.AggregatorMessage]) error {
	for {
		m, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errServerClosed
			}
			return fmt.Errorf("receive: %w", errdefs.FromGRPC(err))
		}
		switch b := m.GetBody().(type) {
		case *vigilv1.AggregatorMessage_Ack:
			u.onAck(b.Ack.GetSeq())
		case *vigilv1.AggregatorMessage_Command:
			u.deliverCommand(b.Command)
		case *vigilv1.AggregatorMessage_Config:
			// The aggregator sends no ConfigPush yet; nothing here uses one.
			u.log.Debug("ignoring a config push", "sample_interval", b.Config.GetSampleInterval().AsDuration())
		case *vigilv1.AggregatorMessage_SnapshotRequest:
			// The aggregator saw a gap in the sequence: resynchronise.
			u.log.Warn("the aggregator asks for a snapshot", "reason", b.SnapshotRequest.GetReason(), "after_seq", b.SnapshotRequest.GetAfterSeq())
			u.mu.Lock()
			u.needSnapshot = cmp(u.needSnapshot, reasonRequested)
			u.mu.Unlock()
			select {
			case u.wake <- struct{}{}:
			default:
			}
		case *vigilv1.AggregatorMessage_HelloAck:
			u.log.Warn("ignoring a second HelloAck on the stream")
		default:
			u.log.Debug("ignoring an aggregator message of unknown type", "type", fmt.Sprintf("%T", b))
		}
	}
}

func (u *Uplink) onAck(seq uint64) {
	now := time.Now()
	u.mu.Lock()
	defer u.mu.Unlock()
	if seq > u.buf.lastSeq() {
		u.log.Warn("ignoring an ack of a sequence number not yet sent", "seq", seq, "last_seq", u.buf.lastSeq())
		return
	}
	if _, last := u.buf.ack(seq); last != nil && !last.writtenAt.IsZero() {
		u.stats.ackLag = now.Sub(last.writtenAt)
	}
}

func (u *Uplink) deliverCommand(c *vigilv1.Command) {
	if c.GetId() == "" {
		u.log.Warn("ignoring a command without an id", "action", c.GetAction().String())
		return
	}
	u.mu.Lock()
	u.stats.commandsReceived++
	u.mu.Unlock()
	select {
	case u.commands <- c:
		return
	default:
	}
	u.mu.Lock()
	u.stats.commandsRefused++
	u.mu.Unlock()
	u.log.Warn("command queue is full; answering the command as failed", "command_id", c.GetId(), "capacity", cap(u.commands))
	_ = u.SendCommandResult(&vigilv1.CommandResult{
		CommandId:  c.GetId(),
		Outcome:    vigilv1.CommandOutcome_COMMAND_OUTCOME_FAILED,
		Message:    fmt.Sprintf("not run: the agent's command queue is full (%d waiting)", cap(u.commands)),
		FinishedAt: timestamppb.Now(),
	})
}

// watchAcks ends the stream when the oldest message written on it stays
// unacknowledged past the ack timeout (an aggregator that accepts writes
// but no longer applies them), until sctx ends.
func (u *Uplink) watchAcks(sctx context.Context, cancel context.CancelCauseFunc) {
	t := time.NewTicker(max(u.cfg.AckTimeout/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-sctx.Done():
			return
		case now := <-t.C:
			u.mu.Lock()
			stuck := u.buf.cursor > 0 && now.Sub(u.buf.entries[0].writtenAt) > u.cfg.AckTimeout
			u.mu.Unlock()
			if stuck {
				cancel(errAckTimeout)
				return
			}
		}
	}
}
