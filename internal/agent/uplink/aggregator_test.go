package uplink_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/agent/uplink"
	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/pki"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// exitCounter is an agent's state with lifetime exit counters, cumulative at
// the source as the architecture asks.
type exitCounter struct {
	mu         sync.Mutex
	containers map[string]*vigilv1.Container
}

func (e *exitCounter) snapshot() *vigilv1.Snapshot {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := &vigilv1.Snapshot{Status: &vigilv1.NodeStatus{RuntimeAvailable: true}}
	for _, c := range e.containers {
		s.Containers = append(s.Containers, c)
	}
	return s
}

// exit counts one more exit of container id and sends its event. The stored
// container is replaced, never modified, because the uplink may be encoding
// the previous one.
func (e *exitCounter) exit(t *testing.T, u *uplink.Uplink, id string) {
	t.Helper()
	e.mu.Lock()
	var n uint64
	if old := e.containers[id]; old != nil {
		n = old.GetCounters().GetExits()[0].GetCount()
	}
	c := &vigilv1.Container{Id: id, Namespace: "default", Image: "busybox", State: vigilv1.ContainerState_CONTAINER_STATE_STOPPED,
		Manager: vigilv1.Manager_MANAGER_VIGIL,
		Counters: &vigilv1.ContainerCounters{Exits: []*vigilv1.ExitCount{
			{Reason: vigilv1.ExitReason_EXIT_REASON_ERROR, Code: 3, Count: n + 1}}}}
	e.containers[id] = c
	e.mu.Unlock()
	ev := &vigilv1.ContainerEvent{Type: vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED, Container: c,
		Exit: &vigilv1.ExitStatus{Code: 3, Reason: vigilv1.ExitReason_EXIT_REASON_ERROR}}
	if err := u.SendContainerEvent(ev); err != nil {
		t.Fatal(err)
	}
}

func startAggregator(t *testing.T, listen string, serverTLS *tls.Config) (*aggregator.Aggregator, func()) {
	t.Helper()
	cfg := aggregator.Config{GRPCListen: listen, HTTPListen: "127.0.0.1:0", TLS: serverTLS,
		ShutdownTimeout: 2 * time.Second, Logger: testLogger(t)}
	var (
		a   *aggregator.Aggregator
		err error
	)
	for range 50 { // the port of a stopped aggregator can take a moment to free
		if a, err = aggregator.New(cfg); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("aggregator.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("aggregator Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return a, stop
}

// The uplink against the real aggregator over mTLS: 100 exits across ten
// containers, with the aggregator stopped in the middle of the burst and a
// new one (with empty memory) started on the same address. The new
// aggregator asks for a snapshot and ends up with exactly 100 exits counted,
// for containers it heard of only through that snapshot too.
func TestAgainstRealAggregatorAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("vigil test CA")
	if err != nil {
		t.Fatal(err)
	}
	sf, err := ca.WriteFiles(dir, "aggregator", "aggregator")
	if err != nil {
		t.Fatal(err)
	}
	cf, err := ca.WriteFiles(dir, "node-a", node)
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, err := pki.ServerConfig(sf)
	if err != nil {
		t.Fatal(err)
	}
	clientTLS, err := pki.ClientConfig(cf, "")
	if err != nil {
		t.Fatal(err)
	}

	agg, stop := startAggregator(t, "127.0.0.1:0", serverTLS)
	addr := agg.GRPCAddr().String()
	st := &exitCounter{containers: map[string]*vigilv1.Container{}}
	cfg := testConfig(t, addr)
	cfg.TLS = clientTLS
	u, err := uplink.New(cfg, st.snapshot)
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	waitReady(t, u)

	for i := range 100 {
		if i == 50 {
			// Acknowledged, so never resent: the new aggregator can only
			// learn of these exits through a snapshot.
			waitFor(t, "the first 50 acknowledged", func() bool { return u.Stats().Buffered == 0 })
			stop()
			agg, _ = startAggregator(t, addr, serverTLS)
		}
		// Before the restart all ten containers exit; after it only
		// app-0 to app-4, so the new aggregator learns of app-5 to app-9
		// from the snapshot alone.
		id := fmt.Sprintf("app-%d", i%10)
		if i >= 50 {
			id = fmt.Sprintf("app-%d", i%5)
		}
		st.exit(t, u, id)
		time.Sleep(time.Millisecond)
	}

	total := func() (sum uint64, perContainer map[string]uint64) {
		perContainer = map[string]uint64{}
		for _, nc := range agg.Fleet().Containers(&vigilv1.ListContainersRequest{Node: node}) {
			for _, ec := range nc.GetContainer().GetCounters().GetExits() {
				sum += ec.GetCount()
				perContainer[nc.GetContainer().GetId()] += ec.GetCount()
			}
		}
		return sum, perContainer
	}
	waitFor(t, "100 exits on the new aggregator", func() bool { s, _ := total(); return s == 100 })
	waitFor(t, "everything acknowledged", func() bool { return u.Stats().Buffered == 0 })
	time.Sleep(100 * time.Millisecond)
	sum, per := total()
	if sum != 100 || len(per) != 10 {
		t.Fatalf("exits counted = %d over %v, want 100 over 10 containers", sum, per)
	}
	for id, n := range per {
		want := uint64(5)
		if id < "app-5" {
			want = 15
		}
		if n != want {
			t.Errorf("%s: %d exits, want %d", id, n, want)
		}
	}
	nodes := agg.Fleet().Nodes()
	if len(nodes) != 1 || nodes[0].GetName() != node || nodes[0].GetState() != vigilv1.NodeState_NODE_STATE_UP {
		t.Errorf("nodes = %v, want %s UP", nodes, node)
	}
}

// TestFailsOverToAnotherReplica: an uplink given several aggregator
// addresses (replicas) streams to one; when it stops, the uplink goes to
// the next, which asks for a snapshot and counts every exit once. An
// address that answers nothing is passed over.
func TestFailsOverToAnotherReplica(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("vigil test CA")
	if err != nil {
		t.Fatal(err)
	}
	sf, err := ca.WriteFiles(dir, "aggregator", "aggregator")
	if err != nil {
		t.Fatal(err)
	}
	cf, err := ca.WriteFiles(dir, "node-a", node)
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, err := pki.ServerConfig(sf)
	if err != nil {
		t.Fatal(err)
	}
	clientTLS, err := pki.ClientConfig(cf, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	a, stopA := startAggregator(t, "127.0.0.1:0", serverTLS)
	b, _ := startAggregator(t, "127.0.0.1:0", serverTLS)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close() // nothing listens there any more

	st := &exitCounter{containers: map[string]*vigilv1.Container{}}
	cfg := testConfig(t, deadAddr+", "+a.GRPCAddr().String()+","+b.GRPCAddr().String())
	cfg.TLS = clientTLS
	u, err := uplink.New(cfg, st.snapshot)
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	waitReady(t, u)
	held := func(agg *aggregator.Aggregator) uint64 {
		var sum uint64
		for _, nc := range agg.Fleet().Containers(&vigilv1.ListContainersRequest{Node: node}) {
			for _, ec := range nc.GetContainer().GetCounters().GetExits() {
				sum += ec.GetCount()
			}
		}
		return sum
	}
	for range 20 {
		st.exit(t, u, "app-0")
	}
	waitFor(t, "20 exits at the first live replica", func() bool { return held(a) == 20 })
	stopA()
	for range 20 {
		st.exit(t, u, "app-0")
	}
	// The dead address comes next, then b.
	waitFor(t, "40 exits at the second replica", func() bool { return held(b) == 40 })
	if _, err := uplink.New(testConfig(t, " , "), st.snapshot); err == nil {
		t.Error("an address list with no address was accepted")
	}
}
