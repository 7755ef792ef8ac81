package uplink_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/vigilhq/vigil/internal/agent/uplink"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/metrics/expotest"
	"github.com/vigilhq/vigil/internal/pki"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

const node = "node-a"

// fakeNode is the agent's state as the snapshot callback reads it: the
// containers it has announced so far.
type fakeNode struct {
	mu         sync.Mutex
	containers map[string]*vigilv1.Container
}

func (f *fakeNode) snapshot() *vigilv1.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := &vigilv1.Snapshot{Status: &vigilv1.NodeStatus{RuntimeAvailable: true}}
	ids := make([]string, 0, len(f.containers))
	for id := range f.containers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		s.Containers = append(s.Containers, f.containers[id])
	}
	return s
}

// exit records a container exit in the node's state, then sends its event,
// in the order the uplink's contract asks for.
func (f *fakeNode) exit(t *testing.T, u *uplink.Uplink, id string) {
	t.Helper()
	c := &vigilv1.Container{Id: id, Namespace: "default", State: vigilv1.ContainerState_CONTAINER_STATE_STOPPED}
	f.mu.Lock()
	if f.containers == nil {
		f.containers = map[string]*vigilv1.Container{}
	}
	f.containers[id] = c
	f.mu.Unlock()
	ev := &vigilv1.ContainerEvent{Type: vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED, Container: c,
		Exit: &vigilv1.ExitStatus{Code: 1, Reason: vigilv1.ExitReason_EXIT_REASON_ERROR}}
	if err := u.SendContainerEvent(ev); err != nil {
		t.Fatalf("SendContainerEvent(%s): %v", id, err)
	}
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

func testConfig(t *testing.T, addr string) uplink.Config {
	return uplink.Config{
		Address:        addr,
		NodeName:       node,
		AgentVersion:   "test",
		BootID:         "boot-1",
		Capabilities:   []string{"health"},
		BackoffInitial: 10 * time.Millisecond,
		BackoffMax:     100 * time.Millisecond,
		HelloTimeout:   5 * time.Second,
		Logger:         testLogger(t),
	}
}

// run starts u.Run and stops it when the test ends, failing the test if Run
// does not return promptly.
func run(t *testing.T, u *uplink.Uplink) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- u.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after cancel, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return within 10s of its context ending")
		}
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitReady waits until the first snapshot is acknowledged: a change sent
// before the snapshot is written is superseded by it (the snapshot carries
// it), and tests that count events must not race with that.
func waitReady(t *testing.T, u *uplink.Uplink) {
	t.Helper()
	waitFor(t, "the first snapshot acknowledged", func() bool { return u.Connected() && u.Stats().AckedSeq >= 1 })
}

func eventIDs(ms []*vigilv1.AgentMessage) []string {
	var ids []string
	for _, m := range ms {
		if ev := m.GetContainerEvent(); ev != nil {
			ids = append(ids, ev.GetContainer().GetId())
		}
	}
	return ids
}

// A burst of 100 exits with the aggregator killed in the middle and started
// again: every event arrives, each sequence number is applied exactly once,
// the numbers have no gap, and nothing the aggregator already applied is
// sent again (the uplink honours resume_after_seq).
func TestBurstSurvivesAggregatorRestart(t *testing.T) {
	g := newGateway(t, nil)
	g.mu.Lock()
	g.killAfter = func(n *nodeState, m *vigilv1.AgentMessage) bool { return len(eventIDs(n.applied)) == 50 }
	g.mu.Unlock()
	var st fakeNode
	u, err := uplink.New(testConfig(t, g.addr), st.snapshot)
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	waitReady(t, u)

	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		<-g.killed
		g.stop()
		time.Sleep(150 * time.Millisecond) // several failed reconnects
		g.start(t)
	}()
	for i := range 100 {
		st.exit(t, u, fmt.Sprintf("c%03d", i))
		time.Sleep(500 * time.Microsecond)
	}
	<-restarted
	waitFor(t, "100 events applied", func() bool { return len(eventIDs(g.node(node).applied)) >= 100 })

	n := g.node(node)
	for i, m := range n.applied {
		if m.GetSeq() != uint64(i+1) {
			t.Fatalf("applied message %d has seq %d, want %d (no gap, no reordering):%s", i, m.GetSeq(), i+1, describe(n.applied))
		}
	}
	ids := eventIDs(n.applied)
	if len(ids) != 100 {
		t.Fatalf("applied %d events, want 100:%s", len(ids), describe(n.applied))
	}
	for i, id := range ids {
		if want := fmt.Sprintf("c%03d", i); id != want {
			t.Fatalf("event %d is %s, want %s (each exactly once, in order)", i, id, want)
		}
	}
	if n.applied[0].GetSnapshot() == nil {
		t.Errorf("first message is not the snapshot of a new instance:%s", describe(n.applied[:1]))
	}
	if snaps := len(n.applied) - len(ids); snaps != 1 {
		t.Errorf("%d snapshots sent, want 1 (the restart kept the aggregator's state)", snaps)
	}
	if n.duplicates != 0 {
		t.Errorf("the aggregator received %d messages it had already applied; the uplink must resume after resume_after_seq", n.duplicates)
	}
	if len(n.hellos) < 2 {
		t.Fatalf("%d hellos, want a reconnect", len(n.hellos))
	}
	if h := n.hellos[1]; h.GetInstanceId() != u.InstanceID() || h.GetLastAckedSeq() > 51 {
		t.Errorf("second hello = %v, want instance %s and last_acked_seq <= 51", h, u.InstanceID())
	}
	waitFor(t, "everything acknowledged", func() bool { return u.Stats().Buffered == 0 })
	if s := u.Stats(); s.Reconnects == 0 || s.Dropped != 0 || s.AckedSeq != 101 {
		t.Errorf("stats = %+v, want reconnects > 0, nothing dropped, acked 101", s)
	}
}

// An aggregator that comes back without the node's state asks for a
// snapshot: the uplink sends one first, with every change made meanwhile,
// and does not replay the older events the snapshot supersedes.
func TestLostAggregatorStateGetsSnapshot(t *testing.T) {
	g := newGateway(t, nil)
	var st fakeNode
	u, err := uplink.New(testConfig(t, g.addr), st.snapshot)
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	waitReady(t, u)
	for i := range 10 {
		st.exit(t, u, fmt.Sprintf("c%d", i))
	}
	waitFor(t, "10 events applied", func() bool { return len(eventIDs(g.node(node).applied)) == 10 })
	waitFor(t, "the acks", func() bool { return u.Stats().Buffered == 0 })

	g.stop()
	g.forget(node)
	waitFor(t, "the uplink to notice", func() bool { return !u.Connected() })
	for i := 10; i < 15; i++ {
		st.exit(t, u, fmt.Sprintf("c%d", i))
	}
	before := len(g.node(node).applied)
	g.start(t)
	waitFor(t, "a snapshot after the restart", func() bool { return len(since(g.node(node), before)) > 0 })
	time.Sleep(50 * time.Millisecond)

	after := since(g.node(node), before)
	snap := after[0].GetSnapshot()
	if snap == nil || len(snap.GetContainers()) != 15 {
		t.Fatalf("after the restart got%s, want first a snapshot of 15 containers", describe(after))
	}
	if len(after) != 1 {
		t.Errorf("after the snapshot got%s; the held events are older than the snapshot and must not be replayed", describe(after[1:]))
	}
	if after[0].GetSeq() <= 11 {
		t.Errorf("snapshot seq %d, want a new number above the 11 used before", after[0].GetSeq())
	}
	expectMetrics(t, u, `
		# HELP vigil_agent_uplink_snapshots_total Snapshots sent, by why they were sent.
		# TYPE vigil_agent_uplink_snapshots_total counter
		vigil_agent_uplink_snapshots_total{reason="new_instance"} 1
		vigil_agent_uplink_snapshots_total{reason="overflow"} 0
		vigil_agent_uplink_snapshots_total{reason="requested"} 1
		vigil_agent_uplink_snapshots_total{reason="resume_mismatch"} 0
		# HELP vigil_agent_uplink_superseded_messages_total Held messages not sent because a snapshot carrying their content replaced them.
		# TYPE vigil_agent_uplink_superseded_messages_total counter
		vigil_agent_uplink_superseded_messages_total 5
	`, "vigil_agent_uplink_snapshots_total", "vigil_agent_uplink_superseded_messages_total")
}

func expectMetrics(t *testing.T, u *uplink.Uplink, want string, names ...string) {
	t.Helper()
	if err := testutil.GatherAndCompare(expotest.Gatherer{u.Collector()}, strings.NewReader(dedent(want)), names...); err != nil {
		t.Error(err)
	}
}

func dedent(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSpace(l)
	}
	return strings.Join(lines, "\n") + "\n"
}

// When the buffer is truly full of lifecycle messages the oldest are
// dropped, counted, and the next stream starts with a snapshot even though
// the aggregator kept its state.
func TestOverflowDropsOldestAndForcesSnapshot(t *testing.T) {
	g := newGateway(t, nil)
	var st fakeNode
	cfg := testConfig(t, g.addr)
	cfg.BufferSize = 8
	u, err := uplink.New(cfg, st.snapshot)
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	waitReady(t, u)
	g.stop()
	waitFor(t, "the uplink to notice", func() bool { return !u.Connected() })

	for i := range 12 {
		st.exit(t, u, fmt.Sprintf("c%02d", i))
	}
	if s := u.Stats(); s.Buffered != 8 || s.Capacity != 8 || s.Dropped != 4 {
		t.Fatalf("stats = %+v, want 8 of 8 buffered and 4 dropped", s)
	}
	expectMetrics(t, u, `
		# HELP vigil_agent_uplink_dropped_messages_total Messages lost because the uplink buffer was full; a lost state change is repaired by a fresh snapshot.
		# TYPE vigil_agent_uplink_dropped_messages_total counter
		vigil_agent_uplink_dropped_messages_total{kind="command_result"} 0
		vigil_agent_uplink_dropped_messages_total{kind="container_event"} 4
		vigil_agent_uplink_dropped_messages_total{kind="network_event"} 0
		vigil_agent_uplink_dropped_messages_total{kind="network_samples"} 0
		vigil_agent_uplink_dropped_messages_total{kind="node_status"} 0
		vigil_agent_uplink_dropped_messages_total{kind="peer_view"} 0
		vigil_agent_uplink_dropped_messages_total{kind="resource_samples"} 0
		vigil_agent_uplink_dropped_messages_total{kind="snapshot"} 0
		# HELP vigil_agent_uplink_buffer_messages Messages held until the aggregator acknowledges them.
		# TYPE vigil_agent_uplink_buffer_messages gauge
		vigil_agent_uplink_buffer_messages 8
	`, "vigil_agent_uplink_dropped_messages_total", "vigil_agent_uplink_buffer_messages")

	g.start(t)
	waitFor(t, "a message after the restart", func() bool { return len(g.node(node).applied) > 1 })
	time.Sleep(50 * time.Millisecond)
	after := since(g.node(node), 1)
	if snap := after[0].GetSnapshot(); snap == nil || len(snap.GetContainers()) != 12 {
		t.Fatalf("after the restart got%s, want first a snapshot of all 12 containers", describe(after))
	}
	if hellos := g.node(node).hellos; hellos[len(hellos)-1].GetInstanceId() != u.InstanceID() {
		t.Fatal("the uplink changed its instance id")
	}
	expectMetrics(t, u, `
		# HELP vigil_agent_uplink_snapshots_total Snapshots sent, by why they were sent.
		# TYPE vigil_agent_uplink_snapshots_total counter
		vigil_agent_uplink_snapshots_total{reason="new_instance"} 1
		vigil_agent_uplink_snapshots_total{reason="overflow"} 1
		vigil_agent_uplink_snapshots_total{reason="requested"} 0
		vigil_agent_uplink_snapshots_total{reason="resume_mismatch"} 0
	`, "vigil_agent_uplink_snapshots_total")
}

func resources(id string) *vigilv1.ResourceSamples {
	return &vigilv1.ResourceSamples{Samples: []*vigilv1.ResourceSample{{ContainerId: id}}, CollectionDuration: durationpb.New(time.Millisecond)}
}

func network(inode uint64) *vigilv1.NetworkSamples {
	return &vigilv1.NetworkSamples{Namespaces: []*vigilv1.NetworkNamespace{{Inode: inode, Host: inode == 1}}}
}

// While disconnected only the newest sample batches are kept; lifecycle
// events all go through, in order, and no snapshot is needed.
func TestSamplesCoalesceWhileDisconnected(t *testing.T) {
	g := newGateway(t, nil)
	var st fakeNode
	u, err := uplink.New(testConfig(t, g.addr), st.snapshot)
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	waitReady(t, u)
	g.stop()
	waitFor(t, "the uplink to notice", func() bool { return !u.Connected() })

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(u.SendResourceSamples(resources("r1")))
	st.exit(t, u, "e1")
	must(u.SendResourceSamples(resources("r2")))
	must(u.SendNetworkSamples(network(1)))
	st.exit(t, u, "e2")
	must(u.SendResourceSamples(resources("r3")))
	must(u.SendNetworkSamples(network(2)))
	if got := u.Stats().Buffered; got != 4 {
		t.Errorf("buffered %d, want 4 (two events, newest batch of each sample kind)", got)
	}

	g.start(t)
	waitFor(t, "4 messages after the restart", func() bool { return len(g.node(node).applied) >= 5 })
	time.Sleep(50 * time.Millisecond)
	got := describe(since(g.node(node), 1))
	if want := " 2:event(e1) 3:event(e2) 4:resources(r3) 5:network(2)"; got != want {
		t.Errorf("after the restart got\n%s\nwant\n%s", got, want)
	}
	expectMetrics(t, u, `
		# HELP vigil_agent_uplink_coalesced_messages_total Messages replaced by a newer one of the same kind before they were acknowledged (samples, node status, peer view).
		# TYPE vigil_agent_uplink_coalesced_messages_total counter
		vigil_agent_uplink_coalesced_messages_total{kind="network_samples"} 1
		vigil_agent_uplink_coalesced_messages_total{kind="node_status"} 0
		vigil_agent_uplink_coalesced_messages_total{kind="peer_view"} 0
		vigil_agent_uplink_coalesced_messages_total{kind="resource_samples"} 2
	`, "vigil_agent_uplink_coalesced_messages_total")
}

// Against an address where nothing listens, Run waits between attempts:
// with a 100ms initial backoff doubling to 1s, one second holds a handful
// of attempts, where a loop without backoff would make hundreds.
func TestRunBacksOffBetweenAttempts(t *testing.T) {
	g := newGateway(t, nil)
	g.stop() // a port that was just ours and where nothing listens now
	cfg := testConfig(t, g.addr)
	cfg.BackoffInitial, cfg.BackoffMax = 100*time.Millisecond, time.Second
	u, err := uplink.New(cfg, (&fakeNode{}).snapshot)
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	time.Sleep(time.Second)
	// Expected ceilings 0.1+0.2+0.4+0.8 s cover a second with 4 attempts
	// at the least; full jitter halves the mean, so about 6-8.
	if n := u.Stats().Reconnects; n < 2 || n > 20 {
		t.Errorf("%d reconnect attempts in 1s, want between 2 and 20", n)
	}
	if u.Connected() {
		t.Error("Connected() with no aggregator")
	}
}

// With mutual TLS (certificates from internal/pki) the stream works; a
// certificate for node-a claiming another node is refused and never
// connects; a certificate from another CA fails the handshake.
func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("vigil test CA")
	if err != nil {
		t.Fatal(err)
	}
	serverFiles, err := ca.WriteFiles(dir, "aggregator", "aggregator")
	if err != nil {
		t.Fatal(err)
	}
	clientFiles, err := ca.WriteFiles(dir, "node-a", node)
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, err := pki.ServerConfig(serverFiles)
	if err != nil {
		t.Fatal(err)
	}
	clientTLS, err := pki.ClientConfig(clientFiles, "")
	if err != nil {
		t.Fatal(err)
	}
	g := newGateway(t, serverTLS)

	t.Run("matching identity", func(t *testing.T) {
		var st fakeNode
		cfg := testConfig(t, g.addr)
		cfg.TLS = clientTLS
		u, err := uplink.New(cfg, st.snapshot)
		if err != nil {
			t.Fatal(err)
		}
		run(t, u)
		waitReady(t, u)
		st.exit(t, u, "c1")
		waitFor(t, "the event over mTLS", func() bool { return len(eventIDs(g.node(node).applied)) == 1 })
	})

	t.Run("certificate of another node", func(t *testing.T) {
		cfg := testConfig(t, g.addr)
		cfg.TLS = clientTLS
		cfg.NodeName = "node-b"
		u, err := uplink.New(cfg, (&fakeNode{}).snapshot)
		if err != nil {
			t.Fatal(err)
		}
		run(t, u)
		waitFor(t, "several refused attempts", func() bool { return u.Stats().Reconnects >= 3 })
		if u.Connected() || len(g.node("node-b").applied) != 0 {
			t.Error("node-a's certificate was accepted for node-b")
		}
	})

	t.Run("certificate of another CA", func(t *testing.T) {
		other, err := pki.NewCA("someone else")
		if err != nil {
			t.Fatal(err)
		}
		otherFiles, err := other.WriteFiles(t.TempDir(), "node-a", node)
		if err != nil {
			t.Fatal(err)
		}
		otherTLS, err := pki.ClientConfig(otherFiles, "")
		if err != nil {
			t.Fatal(err)
		}
		// Trust the right server, present a client certificate it does not.
		otherTLS.RootCAs = clientTLS.RootCAs
		cfg := testConfig(t, g.addr)
		cfg.TLS = otherTLS
		cfg.NodeName = "node-c"
		u, err := uplink.New(cfg, (&fakeNode{}).snapshot)
		if err != nil {
			t.Fatal(err)
		}
		run(t, u)
		waitFor(t, "several refused attempts", func() bool { return u.Stats().Reconnects >= 3 })
		if u.Connected() || len(g.node("node-c").hellos) != 0 {
			t.Error("a client certificate from another CA got through")
		}
	})
}

// Twenty streams ended by the aggregator leave no goroutine behind: the
// count while connected stays flat, and nothing is left once Run returns.
func TestNoGoroutineLeakAcrossReconnects(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	g := newGateway(t, nil)
	var st fakeNode
	u, err := uplink.New(testConfig(t, g.addr), st.snapshot)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- u.Run(ctx) }()

	var baseline int
	for i := range 20 {
		waitFor(t, "stream "+fmt.Sprint(i+1), func() bool { return len(g.node(node).hellos) == i+1 })
		waitReady(t, u)
		st.exit(t, u, fmt.Sprintf("c%d", i))
		waitFor(t, "the event acknowledged", func() bool { return u.Stats().Buffered == 0 })
		if i == 1 {
			time.Sleep(100 * time.Millisecond)
			baseline = runtime.NumGoroutine()
		}
		g.kick()
	}
	waitFor(t, "stream 21", func() bool { return len(g.node(node).hellos) == 21 })
	waitFor(t, "a connection", u.Connected)
	waitFor(t, "the goroutine count to settle", func() bool { return runtime.NumGoroutine() <= baseline+2 })
	if n := len(eventIDs(g.node(node).applied)); n != 20 {
		t.Errorf("%d events applied, want 20", n)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	g.stop()
}

// A message over the size limit is refused locally; the stream lives on.
func TestOversizedMessageIsRefused(t *testing.T) {
	g := newGateway(t, nil)
	var st fakeNode
	cfg := testConfig(t, g.addr)
	cfg.MaxMessageBytes = 2048
	u, err := uplink.New(cfg, st.snapshot)
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	waitReady(t, u)
	big := &vigilv1.ContainerEvent{Message: strings.Repeat("x", 4096), Container: &vigilv1.Container{Id: "big"}}
	if err := u.SendContainerEvent(big); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("SendContainerEvent(4 KiB) = %v, want ErrInvalid", err)
	}
	if err := u.SendContainerEvent(nil); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("SendContainerEvent(nil) = %v, want ErrInvalid", err)
	}
	st.exit(t, u, "small")
	waitFor(t, "the next event", func() bool { return len(eventIDs(g.node(node).applied)) == 1 })
	if ids := eventIDs(g.node(node).applied); ids[0] != "small" {
		t.Errorf("applied %v, want [small]", ids)
	}
	if s := u.Stats(); s.Reconnects != 0 {
		t.Errorf("%d reconnects; an oversized message must not break the stream", s.Reconnects)
	}
	expectMetrics(t, u, `
		# HELP vigil_agent_uplink_oversized_messages_total Messages refused because they exceed the message size limit.
		# TYPE vigil_agent_uplink_oversized_messages_total counter
		vigil_agent_uplink_oversized_messages_total{kind="command_result"} 0
		vigil_agent_uplink_oversized_messages_total{kind="container_event"} 1
		vigil_agent_uplink_oversized_messages_total{kind="network_event"} 0
		vigil_agent_uplink_oversized_messages_total{kind="network_samples"} 0
		vigil_agent_uplink_oversized_messages_total{kind="node_status"} 0
		vigil_agent_uplink_oversized_messages_total{kind="peer_view"} 0
		vigil_agent_uplink_oversized_messages_total{kind="resource_samples"} 0
		vigil_agent_uplink_oversized_messages_total{kind="snapshot"} 0
	`, "vigil_agent_uplink_oversized_messages_total")
}

// Commands reach Commands() in order; one that finds the queue full is
// answered at once with a FAILED result rather than blocking the stream.
func TestCommandsAndFullQueue(t *testing.T) {
	g := newGateway(t, nil)
	g.commands = []*vigilv1.Command{
		{Id: "r1", Action: vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART},
		{Id: "r2", Action: vigilv1.RemediationAction_REMEDIATION_ACTION_KILL},
		{Id: "r3", Action: vigilv1.RemediationAction_REMEDIATION_ACTION_STOP},
	}
	cfg := testConfig(t, g.addr)
	cfg.CommandBuffer = 2
	u, err := uplink.New(cfg, (&fakeNode{}).snapshot)
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	waitFor(t, "a command result", func() bool {
		for _, m := range g.node(node).applied {
			if m.GetCommandResult() != nil {
				return true
			}
		}
		return false
	})
	var results []*vigilv1.CommandResult
	for _, m := range g.node(node).applied {
		if r := m.GetCommandResult(); r != nil {
			results = append(results, r)
		}
	}
	if len(results) != 1 || results[0].GetCommandId() != "r3" || results[0].GetOutcome() != vigilv1.CommandOutcome_COMMAND_OUTCOME_FAILED {
		t.Fatalf("results = %v, want r3 FAILED", results)
	}
	for _, want := range []string{"r1", "r2"} {
		select {
		case c := <-u.Commands():
			if c.GetId() != want {
				t.Errorf("command %s, want %s", c.GetId(), want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no command %s", want)
		}
	}
}

func TestCollectorIsLintClean(t *testing.T) {
	u, err := uplink.New(uplink.Config{Address: "127.0.0.1:1", NodeName: node, BufferSize: 10}, (&fakeNode{}).snapshot)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := u.SendContainerEvent(&vigilv1.ContainerEvent{Container: &vigilv1.Container{Id: fmt.Sprint(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	problems, err := testutil.GatherAndLint(expotest.Gatherer{u.Collector()})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	expectMetrics(t, u, `
		# HELP vigil_agent_uplink_buffer_capacity_messages Capacity of the uplink buffer.
		# TYPE vigil_agent_uplink_buffer_capacity_messages gauge
		vigil_agent_uplink_buffer_capacity_messages 10
		# HELP vigil_agent_uplink_buffer_messages Messages held until the aggregator acknowledges them.
		# TYPE vigil_agent_uplink_buffer_messages gauge
		vigil_agent_uplink_buffer_messages 3
		# HELP vigil_agent_uplink_connected 1 while a stream to the aggregator is established, else 0.
		# TYPE vigil_agent_uplink_connected gauge
		vigil_agent_uplink_connected 0
	`, "vigil_agent_uplink_buffer_capacity_messages", "vigil_agent_uplink_buffer_messages", "vigil_agent_uplink_connected")
}

func TestNewRejectsBadConfig(t *testing.T) {
	snap := (&fakeNode{}).snapshot
	for name, tc := range map[string]struct {
		cfg  uplink.Config
		snap func() *vigilv1.Snapshot
	}{
		"no address":          {uplink.Config{NodeName: node}, snap},
		"no node":             {uplink.Config{Address: "x:1"}, snap},
		"no snapshot":         {uplink.Config{Address: "x:1", NodeName: node}, nil},
		"negative buffer":     {uplink.Config{Address: "x:1", NodeName: node, BufferSize: -1}, snap},
		"max below initial":   {uplink.Config{Address: "x:1", NodeName: node, BackoffInitial: time.Second, BackoffMax: time.Millisecond}, snap},
		"negative keepalive":  {uplink.Config{Address: "x:1", NodeName: node, KeepaliveTime: -time.Second}, snap},
		"negative max bytes":  {uplink.Config{Address: "x:1", NodeName: node, MaxMessageBytes: -5}, snap},
		"negative ack period": {uplink.Config{Address: "x:1", NodeName: node, AckTimeout: -1}, snap},
	} {
		if _, err := uplink.New(tc.cfg, tc.snap); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: New = %v, want ErrInvalid", name, err)
		}
	}
}

func TestRunTwiceConflicts(t *testing.T) {
	g := newGateway(t, nil)
	u, err := uplink.New(testConfig(t, g.addr), (&fakeNode{}).snapshot)
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	waitFor(t, "a connection", u.Connected)
	if err := u.Run(context.Background()); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("second Run = %v, want ErrConflict", err)
	}
}

// An aggregator that takes messages but never acknowledges them is left
// after the ack timeout, and the uplink dials again.
func TestUnacknowledgedStreamIsReplaced(t *testing.T) {
	g := newGateway(t, nil)
	g.silent = true
	cfg := testConfig(t, g.addr)
	cfg.AckTimeout = 200 * time.Millisecond
	u, err := uplink.New(cfg, (&fakeNode{}).snapshot)
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	waitFor(t, "a second stream", func() bool { return len(g.node(node).hellos) >= 2 })
	// The new stream's HelloAck says the snapshot was applied: that
	// acknowledges it.
	waitFor(t, "the snapshot acknowledged by the resume point", func() bool { return u.Stats().AckedSeq == 1 })
	if s := u.Stats(); s.Reconnects == 0 || s.Buffered != 0 {
		t.Errorf("stats = %+v, want a reconnect and nothing held", s)
	}
}

// A replica refusing the node (held by another replica's lease) tells when
// to retry (RetryInfo): the agent waits that long, not its (here tiny)
// backoff, then connects.
func TestRefusalRetryInfoIsHonoured(t *testing.T) {
	g := newGateway(t, nil)
	const hint = time.Second
	var mu sync.Mutex
	var attempts []time.Time
	g.mu.Lock()
	g.refuse = func() error {
		mu.Lock()
		defer mu.Unlock()
		attempts = append(attempts, time.Now())
		if len(attempts) > 2 {
			return nil
		}
		st, err := status.New(codes.Unavailable, "node is held by aggregator replica r0").
			WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(hint)})
		if err != nil {
			t.Error(err)
		}
		return st.Err()
	}
	g.mu.Unlock()
	cfg := testConfig(t, g.addr)
	cfg.BackoffInitial, cfg.BackoffMax = 5*time.Millisecond, 5*time.Second
	u, err := uplink.New(cfg, (&fakeNode{}).snapshot)
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	waitReady(t, u)
	mu.Lock()
	defer mu.Unlock()
	if len(attempts) < 3 {
		t.Fatalf("%d attempts, want 3 (two refused, one accepted)", len(attempts))
	}
	for i := 1; i < 3; i++ {
		// A lower bound only: the backoff alone would retry within 5-10ms.
		if gap := attempts[i].Sub(attempts[i-1]); gap < hint {
			t.Errorf("attempt %d came %v after a refusal asking for %v", i, gap, hint)
		}
	}
}

// A SnapshotRequest mid-stream (the aggregator saw a sequence gap) makes
// the agent send a fresh Snapshot on the same stream, counted with reason
// "requested".
func TestSnapshotRequestMidStream(t *testing.T) {
	g := newGateway(t, nil)
	asked := false
	g.mu.Lock()
	g.reply = func(m *vigilv1.AgentMessage) *vigilv1.AggregatorMessage {
		if m.GetSnapshot() == nil || asked {
			return nil
		}
		asked = true
		return &vigilv1.AggregatorMessage{Body: &vigilv1.AggregatorMessage_SnapshotRequest{SnapshotRequest: &vigilv1.SnapshotRequest{
			Reason: "sequence gap: 5 after 2", AfterSeq: m.GetSeq(),
		}}}
	}
	g.mu.Unlock()
	u, err := uplink.New(testConfig(t, g.addr), (&fakeNode{}).snapshot)
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	waitFor(t, "a second snapshot on the first stream", func() bool {
		n := g.node(node)
		snapshots := 0
		for _, m := range n.applied {
			if m.GetSnapshot() != nil {
				snapshots++
			}
		}
		return snapshots == 2
	})
	if s := u.Stats(); s.Reconnects != 0 {
		t.Errorf("%d reconnects: the snapshot was to come on the same stream", s.Reconnects)
	}
	expectMetrics(t, u, `
		# HELP vigil_agent_uplink_snapshots_total Snapshots sent, by why they were sent.
		# TYPE vigil_agent_uplink_snapshots_total counter
		vigil_agent_uplink_snapshots_total{reason="new_instance"} 1
		vigil_agent_uplink_snapshots_total{reason="overflow"} 0
		vigil_agent_uplink_snapshots_total{reason="requested"} 1
		vigil_agent_uplink_snapshots_total{reason="resume_mismatch"} 0
	`, "vigil_agent_uplink_snapshots_total")
}
