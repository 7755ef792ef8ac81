package aggregator

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// TestEndedStreamDoesNotMarkItsSuccessorDown holds the ended stream's
// cleanup (in the clock it reads for the disconnect time) while the node's
// new stream connects: the node must stay UP. Before the disconnect was made
// under the gateway's lock, the old stream marked the live node DOWN here.
func TestEndedStreamDoesNotMarkItsSuccessorDown(t *testing.T) {
	agg, err := New(Config{
		GRPCListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Insecure: true,
		Registry: prometheus.NewRegistry(), AckInterval: 20 * time.Millisecond, ShutdownTimeout: 5 * time.Second,
		Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	// The hook: once armed, the first clock read (the old stream's
	// disconnect) waits until the new stream has its HelloAck, or 500ms
	// (with the fix the new stream cannot connect meanwhile).
	var (
		mu      sync.Mutex
		armed   bool
		entered = make(chan struct{})
		proceed = make(chan struct{})
	)
	agg.gateway.now = func() time.Time {
		mu.Lock()
		hold := armed
		armed = false
		mu.Unlock()
		if hold {
			close(entered)
			select {
			case <-proceed:
			case <-time.After(500 * time.Millisecond):
			}
		}
		return time.Now()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agg.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	conn, err := grpc.NewClient(agg.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hello := func() vigilv1.AgentGateway_ConnectClient {
		t.Helper()
		s, err := vigilv1.NewAgentGatewayClient(conn).Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_Hello{Hello: &vigilv1.Hello{NodeName: "n1", InstanceId: "i1"}}}); err != nil {
			t.Fatal(err)
		}
		if m, err := s.Recv(); err != nil || m.GetHelloAck() == nil {
			t.Fatalf("hello: %v %v", m, err)
		}
		return s
	}

	old := hello()
	mu.Lock()
	armed = true
	mu.Unlock()
	if err := old.CloseSend(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the old stream's cleanup did not read the clock within 5s")
	}
	newer := hello()
	close(proceed)
	if _, err := old.Recv(); err != io.EOF {
		t.Fatalf("old stream ended with %v, want EOF", err)
	}
	for _, n := range agg.Fleet().Nodes() {
		if n.GetName() == "n1" && n.GetState() != vigilv1.NodeState_NODE_STATE_UP {
			t.Fatalf("node n1 is %v with a live stream, want UP", n.GetState())
		}
	}
	if len(agg.Fleet().Nodes()) != 1 {
		t.Fatalf("fleet holds %d nodes, want 1", len(agg.Fleet().Nodes()))
	}
	_ = newer.CloseSend()
}
