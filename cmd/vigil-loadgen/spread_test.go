package main

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// replica is a real gRPC server on loopback that counts the calls it
// served.
type replica struct {
	addr string
	srv  *grpc.Server
	mu   sync.Mutex
	n    int
}

func startReplica(t *testing.T) *replica {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{addr: lis.Addr().String()}
	r.srv = grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		r.mu.Lock()
		r.n++
		r.mu.Unlock()
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(r.srv, health.NewServer())
	go func() { _ = r.srv.Serve(lis) }()
	t.Cleanup(r.srv.Stop)
	return r
}

func (r *replica) calls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

// TestSpreadOverReplicas: channels dialled to registerSpread's target
// (one per simulated node) are spread evenly over three real gRPC servers,
// and the channels of a server that stops reach the next one on their next
// call, as an agent given several addresses fails over.
func TestSpreadOverReplicas(t *testing.T) {
	reps := []*replica{startReplica(t), startReplica(t), startReplica(t)}
	target := registerSpread([]string{reps[0].addr, reps[1].addr, reps[2].addr})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const nodes = 9
	var conns []*grpc.ClientConn
	for range nodes {
		c, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns = append(conns, c)
	}
	// Which replica serves each node: the one whose count its call raised
	// (one call at a time). A call sent on a connection that its server
	// just closed fails with Unavailable before the channel notices; it is
	// tried again, as the load generator opens a new stream after a failed
	// one.
	servedBy := func(c *grpc.ClientConn) int {
		t.Helper()
		before := []int{reps[0].calls(), reps[1].calls(), reps[2].calls()}
		for {
			_, err := healthpb.NewHealthClient(c).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
			if err == nil {
				break
			}
			if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
				t.Fatal(err)
			}
		}
		for i, r := range reps {
			if r.calls() != before[i] {
				return i
			}
		}
		t.Fatal("no replica counted the call")
		return -1
	}
	owner := make([]int, nodes)
	perReplica := make([]int, len(reps))
	for i, c := range conns {
		owner[i] = servedBy(c)
		perReplica[owner[i]]++
	}
	for i, n := range perReplica {
		if n != nodes/len(reps) {
			t.Fatalf("replica %d serves %d of %d nodes (%v), want an even spread", i, n, nodes, perReplica)
		}
	}

	// Replica 1 goes: its nodes move to the next address of their list
	// (replica 2), the others stay where they are.
	reps[1].srv.Stop()
	for i, c := range conns {
		got := servedBy(c)
		want := owner[i]
		if owner[i] == 1 {
			want = 2
		}
		if got != want {
			t.Errorf("node %d: served by replica %d after replica 1 stopped, want %d (it was on %d)", i, got, want, owner[i])
		}
	}
}
