package uplink_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/vigilhq/vigil/internal/pki"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// gateway is a small AgentGateway that follows the protocol the way the
// aggregator must: it answers a Hello with the resume point it holds for the
// agent's instance (or asks for a snapshot), applies each sequence number at
// most once and acknowledges cumulatively. It can be stopped and started
// again on the same address, keeping its state (a restart of an aggregator
// with durable state, or a network cut) or losing it (forget).
type gateway struct {
	vigilv1.UnimplementedAgentGatewayServer

	addr    string
	tls     *tls.Config
	ackTick time.Duration
	// silent: apply messages but never acknowledge them (a stuck
	// aggregator).
	silent bool

	mu      sync.Mutex
	srv     *grpc.Server
	nodes   map[string]*nodeState
	streams map[int]context.CancelFunc
	nextID  int
	// killAfter, when set, is called after each applied message; when it
	// returns true the stream ends at once, before any further ack, and
	// killed is signalled (the test then stops the server).
	killAfter func(n *nodeState, m *vigilv1.AgentMessage) bool
	killed    chan struct{}
	// reply, when set, is asked after each applied message (under mu);
	// a non-nil answer is sent on the stream.
	reply func(m *vigilv1.AgentMessage) *vigilv1.AggregatorMessage
	// refuse, when set, is asked after each Hello; a non-nil error ends
	// the stream with it (a replica refusing a node held elsewhere).
	refuse func() error
	// commands are sent on every stream right after the HelloAck.
	commands []*vigilv1.Command
}

// nodeState is what the gateway holds for one node.
type nodeState struct {
	instance    string
	lastApplied uint64
	hasState    bool
	hellos      []*vigilv1.Hello
	// applied holds every applied message, across instances and restarts.
	applied []*vigilv1.AgentMessage
	// duplicates counts messages received with a number already applied.
	duplicates int
}

func newGateway(t testing.TB, tlsCfg *tls.Config) *gateway {
	t.Helper()
	g := &gateway{tls: tlsCfg, ackTick: 10 * time.Millisecond, nodes: map[string]*nodeState{},
		streams: map[int]context.CancelFunc{}, killed: make(chan struct{}, 1)}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g.addr = lis.Addr().String()
	g.serve(lis)
	t.Cleanup(g.stop)
	return g
}

func (g *gateway) serve(lis net.Listener) {
	opts := []grpc.ServerOption{grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true})}
	if g.tls != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(g.tls)))
	}
	srv := grpc.NewServer(opts...)
	vigilv1.RegisterAgentGatewayServer(srv, g)
	g.mu.Lock()
	g.srv = srv
	g.mu.Unlock()
	go func() { _ = srv.Serve(lis) }()
}

// stop kills the server: listener and every connection closed at once.
func (g *gateway) stop() {
	g.mu.Lock()
	srv := g.srv
	g.srv = nil
	g.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
}

// start serves again on the same address.
func (g *gateway) start(t *testing.T) {
	t.Helper()
	var lis net.Listener
	var err error
	for range 50 {
		if lis, err = net.Listen("tcp", g.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("listen again on %s: %v", g.addr, err)
	}
	g.serve(lis)
}

// forget drops everything held for node, as an aggregator that lost its
// memory would (what was applied before stays in the record).
func (g *gateway) forget(node string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if n := g.nodes[node]; n != nil {
		n.instance, n.lastApplied, n.hasState = "", 0, false
	}
}

// kick ends every open stream with Unavailable, the server staying up.
func (g *gateway) kick() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, cancel := range g.streams {
		cancel()
	}
}

// node returns a copy of what the gateway holds for name.
func (g *gateway) node(name string) nodeState {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := g.nodes[name]
	if n == nil {
		return nodeState{}
	}
	c := *n
	c.applied = append([]*vigilv1.AgentMessage(nil), n.applied...)
	c.hellos = append([]*vigilv1.Hello(nil), n.hellos...)
	return c
}

func (g *gateway) Connect(stream grpc.BidiStreamingServer[vigilv1.AgentMessage, vigilv1.AggregatorMessage]) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	g.mu.Lock()
	id := g.nextID
	g.nextID++
	g.streams[id] = cancel
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.streams, id)
		g.mu.Unlock()
	}()

	first, err := stream.Recv()
	if err != nil {
		return err
	}
	g.mu.Lock()
	refuse := g.refuse
	g.mu.Unlock()
	if refuse != nil {
		if err := refuse(); err != nil {
			return err
		}
	}
	hello := first.GetHello()
	if hello == nil || hello.GetNodeName() == "" || hello.GetInstanceId() == "" {
		return status.Error(codes.InvalidArgument, "the first message must be a Hello with a node name and an instance id")
	}
	if g.tls != nil {
		who, err := pki.PeerIdentity(ctx, false)
		if err != nil {
			return status.Error(codes.PermissionDenied, err.Error())
		}
		if who != pki.NodeIdentity(hello.GetNodeName()) {
			return status.Errorf(codes.PermissionDenied, "certificate of %q cannot speak for node %q", who, hello.GetNodeName())
		}
	}

	g.mu.Lock()
	n := g.nodes[hello.GetNodeName()]
	if n == nil {
		n = &nodeState{}
		g.nodes[hello.GetNodeName()] = n
	}
	n.hellos = append(n.hellos, hello)
	if n.instance != hello.GetInstanceId() {
		n.instance, n.lastApplied, n.hasState = hello.GetInstanceId(), 0, false
	}
	ack := &vigilv1.HelloAck{NodeName: hello.GetNodeName(), ResumeAfterSeq: n.lastApplied, SnapshotRequired: !n.hasState, AggregatorId: "test"}
	commands := g.commands
	g.mu.Unlock()
	if err := stream.Send(&vigilv1.AggregatorMessage{Body: &vigilv1.AggregatorMessage_HelloAck{HelloAck: ack}}); err != nil {
		return err
	}
	for _, c := range commands {
		if err := stream.Send(&vigilv1.AggregatorMessage{Body: &vigilv1.AggregatorMessage_Command{Command: c}}); err != nil {
			return err
		}
	}

	in := make(chan *vigilv1.AgentMessage)
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case in <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	tick := time.NewTicker(g.ackTick)
	defer tick.Stop()
	var acked uint64
	for {
		select {
		case <-ctx.Done():
			return status.Error(codes.Unavailable, "stream ended by the test")
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-tick.C:
			g.mu.Lock()
			last := n.lastApplied
			g.mu.Unlock()
			if last > acked && !g.silent {
				acked = last
				if err := stream.Send(&vigilv1.AggregatorMessage{Body: &vigilv1.AggregatorMessage_Ack{Ack: &vigilv1.Ack{Seq: last}}}); err != nil {
					return err
				}
			}
		case m := <-in:
			g.mu.Lock()
			if m.GetSeq() <= n.lastApplied {
				n.duplicates++
				g.mu.Unlock()
				continue
			}
			n.lastApplied = m.GetSeq()
			n.applied = append(n.applied, proto.Clone(m).(*vigilv1.AgentMessage))
			if m.GetSnapshot() != nil {
				n.hasState = true
			}
			kill := g.killAfter != nil && g.killAfter(n, m)
			if kill {
				g.killAfter = nil
			}
			var answer *vigilv1.AggregatorMessage
			if g.reply != nil {
				answer = g.reply(m)
			}
			g.mu.Unlock()
			if answer != nil {
				if err := stream.Send(answer); err != nil {
					return err
				}
			}
			if kill {
				g.killed <- struct{}{}
				return status.Error(codes.Unavailable, "killed by the test")
			}
		}
	}
}

// since returns the messages applied for node after the first skip.
func since(n nodeState, skip int) []*vigilv1.AgentMessage {
	if skip > len(n.applied) {
		return nil
	}
	return n.applied[skip:]
}

// describe renders applied messages compactly for failure output.
func describe(ms []*vigilv1.AgentMessage) string {
	s := ""
	for _, m := range ms {
		switch b := m.GetBody().(type) {
		case *vigilv1.AgentMessage_Snapshot:
			s += fmt.Sprintf(" %d:snapshot(%d)", m.GetSeq(), len(b.Snapshot.GetContainers()))
		case *vigilv1.AgentMessage_ContainerEvent:
			s += fmt.Sprintf(" %d:event(%s)", m.GetSeq(), b.ContainerEvent.GetContainer().GetId())
		case *vigilv1.AgentMessage_ResourceSamples:
			s += fmt.Sprintf(" %d:resources(%s)", m.GetSeq(), b.ResourceSamples.GetSamples()[0].GetContainerId())
		case *vigilv1.AgentMessage_NetworkSamples:
			s += fmt.Sprintf(" %d:network(%d)", m.GetSeq(), b.NetworkSamples.GetNamespaces()[0].GetInode())
		default:
			s += fmt.Sprintf(" %d:%T", m.GetSeq(), b)
		}
	}
	return s
}
