// Package loadgen simulates a fleet of agents against an aggregator through
// the real AgentGateway stream: each simulated agent says hello, sends a
// snapshot of M containers, then at every interval a batch of resource
// samples and a network read, and now and then a container event. It backs
// cmd/vigil-loadgen, the aggregator's Prometheus test and its benchmark.
package loadgen

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/errdefs"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// Config configures a simulated fleet.
type Config struct {
	// Target is the aggregator's gRPC address (host:port).
	Target string
	// ClientTLS returns the TLS configuration of one simulated node (a
	// client certificate for that node); nil means insecure.
	ClientTLS func(node string) (*tls.Config, error)
	// Nodes is the number of simulated agents (N).
	Nodes int
	// Containers is the number of application containers per node (M);
	// pods also get a sandbox each.
	Containers int
	// Interval between sample batches; default 10s.
	Interval time.Duration
	// EventEvery sends one container event per node every EventEvery
	// intervals; default 6, negative disables events.
	EventEvery int
	// Duration of the run after every agent connected; 0 runs until ctx ends.
	Duration time.Duration
	// NodePrefix names the nodes: prefix + "%05d"; default "loadgen-".
	NodePrefix string
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Stats are the totals of a run. Safe to read while Run runs (atomics).
type Stats struct {
	Connected atomic.Int64  // agents whose hello was acknowledged
	Messages  atomic.Uint64 // messages sent (hello excluded)
	Bytes     atomic.Uint64 // protobuf bytes sent
	Samples   atomic.Uint64 // resource samples sent
	Acks      atomic.Uint64 // acks received
	Errors    atomic.Uint64 // streams that failed
}

// NodeName is the name of simulated node i.
func NodeName(prefix string, i int) string {
	if prefix == "" {
		prefix = "loadgen-"
	}
	return fmt.Sprintf("%s%05d", prefix, i)
}

// Run simulates the fleet until cfg.Duration has passed after every agent
// connected, or ctx ends. It returns the stats and the first setup error;
// stream failures during the run are counted in Stats.Errors and retried
// after a second.
func Run(ctx context.Context, cfg Config, stats *Stats) error {
	if cfg.Target == "" || cfg.Nodes < 1 || cfg.Containers < 0 {
		return fmt.Errorf("loadgen: need a target, at least one node and a non-negative container count (got target=%q nodes=%d containers=%d): %w",
			cfg.Target, cfg.Nodes, cfg.Containers, errdefs.ErrInvalid)
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Second
	}
	if cfg.EventEvery == 0 {
		cfg.EventEvery = 6
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	agents := make([]*agent, cfg.Nodes)
	for i := range agents {
		name := NodeName(cfg.NodePrefix, i)
		creds := insecure.NewCredentials()
		if cfg.ClientTLS != nil {
			tc, err := cfg.ClientTLS(name)
			if err != nil {
				return fmt.Errorf("loadgen: TLS for %s: %w", name, err)
			}
			creds = credentials.NewTLS(tc)
		}
		conn, err := grpc.NewClient(cfg.Target, grpc.WithTransportCredentials(creds))
		if err != nil {
			return fmt.Errorf("loadgen: dial %s: %w", cfg.Target, err)
		}
		defer conn.Close()
		agents[i] = &agent{cfg: &cfg, stats: stats, conn: conn, name: name,
			state: NewNodeState(name, cfg.Containers, uint64(i)), connected: make(chan struct{})}
	}

	var wg sync.WaitGroup
	for _, a := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.run(ctx)
		}()
	}
	if cfg.Duration > 0 {
		for _, a := range agents {
			select {
			case <-a.connected:
			case <-ctx.Done():
			}
		}
		select {
		case <-time.After(cfg.Duration):
		case <-ctx.Done():
		}
		cancel()
	}
	wg.Wait()
	return nil
}

type agent struct {
	cfg       *Config
	stats     *Stats
	conn      *grpc.ClientConn
	name      string
	state     *NodeState
	connected chan struct{}
	once      sync.Once
}

func (a *agent) run(ctx context.Context) {
	instance := fmt.Sprintf("%s-%x", a.name, rand.Uint64())
	for ctx.Err() == nil {
		err := a.stream(ctx, instance)
		if ctx.Err() != nil {
			return
		}
		a.stats.Errors.Add(1)
		a.cfg.Logger.Warn("loadgen stream failed; retrying", "node", a.name, "err", err)
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
		}
	}
}

// stream runs one stream. Every reconnect starts a fresh sequence space with
// a snapshot: the simulator keeps no resend buffer.
func (a *agent) stream(ctx context.Context, instance string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := vigilv1.NewAgentGatewayClient(a.conn).Connect(ctx)
	if err != nil {
		return err
	}
	instance = fmt.Sprintf("%s-%x", instance, rand.Uint32())
	if err := s.Send(&vigilv1.AgentMessage{SentAt: timestamppb.Now(), Body: &vigilv1.AgentMessage_Hello{Hello: &vigilv1.Hello{
		NodeName: a.name, AgentVersion: "loadgen", InstanceId: instance, ProtocolVersion: 1,
		Capabilities: []string{"health", "restart", "network"},
	}}}); err != nil {
		return err
	}
	first, err := s.Recv()
	if err != nil {
		return err
	}
	if first.GetHelloAck() == nil {
		return fmt.Errorf("expected a HelloAck, got %T", first.GetBody())
	}
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := s.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			if m.GetAck() != nil {
				a.stats.Acks.Add(1)
			}
		}
	}()

	var seq uint64
	send := func(m *vigilv1.AgentMessage) error {
		seq++
		m.Seq = seq
		m.SentAt = timestamppb.Now()
		a.stats.Messages.Add(1)
		a.stats.Bytes.Add(uint64(proto.Size(m)))
		return s.Send(m)
	}
	if err := send(&vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_Snapshot{Snapshot: a.state.Snapshot()}}); err != nil {
		return err
	}
	a.stats.Connected.Add(1)
	defer a.stats.Connected.Add(-1)
	a.once.Do(func() { close(a.connected) })

	// Spread the fleet over the interval, as real agents started at
	// different times are.
	offset := time.Duration(rand.Int64N(int64(a.cfg.Interval)))
	timer := time.NewTimer(offset)
	defer timer.Stop()
	tick := 0
	for {
		select {
		case <-ctx.Done():
			_ = s.CloseSend()
			return ctx.Err()
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("aggregator closed the stream")
			}
			return err
		case <-timer.C:
			timer.Reset(a.cfg.Interval)
			tick++
			a.state.Advance(a.cfg.Interval)
			samples := a.state.Samples()
			if err := send(&vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_ResourceSamples{ResourceSamples: &vigilv1.ResourceSamples{
				Samples: samples, CollectionDuration: durationpb.New(3 * time.Millisecond),
			}}}); err != nil {
				return err
			}
			a.stats.Samples.Add(uint64(len(samples)))
			if err := send(&vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_NetworkSamples{NetworkSamples: &vigilv1.NetworkSamples{
				Namespaces: a.state.Network(), CollectionDuration: durationpb.New(2 * time.Millisecond),
			}}}); err != nil {
				return err
			}
			if a.cfg.EventEvery > 0 && tick%a.cfg.EventEvery == 0 {
				if ev := a.state.Restart(); ev != nil {
					if err := send(&vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_ContainerEvent{ContainerEvent: ev}}); err != nil {
						return err
					}
				}
			}
		}
	}
}
