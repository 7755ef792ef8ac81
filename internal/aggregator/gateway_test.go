package aggregator_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/pki"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func TestHelloForAnotherNodeIsRefused(t *testing.T) {
	h := startAggregator(t, nil)
	_, err := h.connect("node-a", "node-b", "i1")
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("got %v, want PermissionDenied", err)
	}
	if want := "certificate is for node-a, hello claims node-b"; !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not say %q", err, want)
	}
	if got := len(h.agg.Fleet().Nodes()); got != 0 {
		t.Fatalf("a refused hello created %d nodes", got)
	}
}

func TestFirstMessageMustBeHello(t *testing.T) {
	h := startAggregator(t, nil)
	conn := h.dial("node-a")
	s, err := vigilv1.NewAgentGatewayClient(conn).Connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(snapshotMsg()); err != nil {
		t.Fatal(err)
	}
	_, err = s.Recv()
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "first message of a stream must be a Hello") {
		t.Fatalf("got %v, want InvalidArgument about the Hello", err)
	}
}

// rawCodec sends bytes as they are, to put a message on the wire that is not
// a valid AgentMessage.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

func TestGarbageAndOversizedMessagesFailOnlyTheirStream(t *testing.T) {
	h := startAggregator(t, func(c *aggregator.Config) { c.MaxMessageBytes = 64 << 10 })

	good := h.mustConnect("good", "g1")
	good.send(1, snapshotMsg(plainContainer("c1", vigilv1.ContainerState_CONTAINER_STATE_RUNNING, 0)))
	good.waitAck(1)

	// Garbage: a hello, then bytes that do not parse (a length-delimited
	// field 10 announcing 5 bytes and carrying 1).
	conn := h.dial("garbage")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	raw, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true},
		vigilv1.AgentGateway_Connect_FullMethodName, grpc.ForceCodec(rawCodec{}))
	if err != nil {
		t.Fatal(err)
	}
	hello, _ := proto.Marshal(&vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_Hello{Hello: &vigilv1.Hello{NodeName: "garbage", InstanceId: "x"}}})
	if err := raw.SendMsg(hello); err != nil {
		t.Fatal(err)
	}
	var ack []byte
	if err := raw.RecvMsg(&ack); err != nil {
		t.Fatalf("hello of the garbage stream: %v", err)
	}
	if err := raw.SendMsg([]byte{0x52, 0x05, 0x01}); err != nil {
		t.Fatal(err)
	}
	var sink []byte
	err = raw.RecvMsg(&sink)
	for err == nil { // an ack may come first
		err = raw.RecvMsg(&sink)
	}
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "malformed message") {
		t.Fatalf("garbage: got %v, want InvalidArgument saying malformed message", err)
	}

	// Oversized: a snapshot over the 64 KiB limit.
	big := h.mustConnect("big", "b1")
	huge := plainContainer("huge", vigilv1.ContainerState_CONTAINER_STATE_RUNNING, 0)
	huge.Labels = map[string]string{"vigil.io/padding": strings.Repeat("x", 100<<10)}
	big.send(1, snapshotMsg(huge))
	err = big.waitErr()
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "larger than max") {
		t.Fatalf("oversized: got %v, want ResourceExhausted naming the limit", err)
	}

	// The good stream still flows.
	good.send(2, eventMsg(vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED, plainContainer("c1", vigilv1.ContainerState_CONTAINER_STATE_STOPPED, 1)))
	good.waitAck(2)
	if got, err := h.agg.Fleet().Container("good", "default", "c1"); err != nil || got.GetContainer().GetState() != vigilv1.ContainerState_CONTAINER_STATE_STOPPED {
		t.Fatalf("good stream's event not applied: %v %v", got, err)
	}
	// gRPC answers an oversized message before the handler sees the error.
	for _, reason := range []string{"malformed", "oversized"} {
		waitFor(t, 10*time.Second, "rejected{reason="+reason+"} = 1", func() bool {
			return counterValue(t, h, "vigil_aggregator_messages_rejected_total", "reason", reason) == 1
		})
	}
}

// counterValue reads one labelled counter from the registry.
func counterValue(t *testing.T, h *harness, name, label, value string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("%s{%s=%q} not found", name, label, value)
	return 0
}

func TestResumeAppliesEachSeqOnce(t *testing.T) {
	h := startAggregator(t, nil)
	api := vigilv1.NewVigilClient(h.dial("viewer/op"))
	watch, err := api.WatchEvents(context.Background(), &vigilv1.WatchEventsRequest{Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan *vigilv1.WatchEventsResponse, 100)
	go func() {
		for {
			ev, err := watch.Recv()
			if err != nil {
				close(events)
				return
			}
			events <- ev
		}
	}()
	if _, err := watch.Header(); err != nil { // the subscription is in place
		t.Fatal(err)
	}

	a := h.mustConnect("n1", "inst-1")
	if a.ack.GetResumeAfterSeq() != 0 || !a.ack.GetSnapshotRequired() {
		t.Fatalf("first hello: %v, want resume 0 and snapshot required", a.ack)
	}
	a.send(1, snapshotMsg(plainContainer("c1", vigilv1.ContainerState_CONTAINER_STATE_RUNNING, 0)))
	for seq := uint64(2); seq <= 5; seq++ {
		a.send(seq, eventMsg(vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED, plainContainer("c1", vigilv1.ContainerState_CONTAINER_STATE_STOPPED, seq-1)))
	}
	a.waitAck(5)
	a.close()
	waitFor(t, 10*time.Second, "node down", func() bool {
		return h.agg.Fleet().Nodes()[0].GetState() == vigilv1.NodeState_NODE_STATE_DOWN
	})

	// Same instance: resume after 5, no snapshot needed; 3..5 are resent and
	// must not be applied again, 6..7 are new.
	b := h.mustConnect("n1", "inst-1")
	if b.ack.GetResumeAfterSeq() != 5 || b.ack.GetSnapshotRequired() {
		t.Fatalf("reconnect: %v, want resume 5 without snapshot", b.ack)
	}
	for seq := uint64(3); seq <= 7; seq++ {
		b.send(seq, eventMsg(vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED, plainContainer("c1", vigilv1.ContainerState_CONTAINER_STATE_STOPPED, seq-1)))
	}
	b.waitAck(7)

	var got []uint64
	deadline := time.After(10 * time.Second)
	for len(got) < 6 {
		select {
		case ev := <-events:
			got = append(got, ev.GetEvent().GetContainer().GetCounters().GetExits()[0].GetCount())
		case <-deadline:
			t.Fatalf("events seen: %v, want 6", got)
		}
	}
	select {
	case ev := <-events:
		t.Fatalf("an event was applied twice: extra %v after %v", ev, got)
	case <-time.After(200 * time.Millisecond):
	}
	if want := []uint64{1, 2, 3, 4, 5, 6}; !slicesEqual(got, want) {
		t.Fatalf("events applied: %v, want %v", got, want)
	}
	if v := counterValue(t, h, "vigil_aggregator_messages_rejected_total", "reason", "duplicate"); v != 3 {
		t.Fatalf("duplicates counted: %v, want 3", v)
	}
	exits := seriesLines(scrape(t, h, ""), "vigil_container_exits_total")
	if len(exits) != 1 || !strings.HasSuffix(exits[0], " 6") {
		t.Fatalf("exits series: %q, want one series at 6", exits)
	}

	// A new instance starts over and must send a snapshot.
	b.close()
	c := h.mustConnect("n1", "inst-2")
	if c.ack.GetResumeAfterSeq() != 0 || !c.ack.GetSnapshotRequired() {
		t.Fatalf("new instance: %v, want resume 0 with snapshot", c.ack)
	}
}

func slicesEqual(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestNewStreamReplacesOld(t *testing.T) {
	h := startAggregator(t, nil)
	a := h.mustConnect("n1", "i1")
	a.send(1, snapshotMsg())
	a.waitAck(1)
	b := h.mustConnect("n1", "i1")
	if b.ack.GetResumeAfterSeq() != 1 {
		t.Fatalf("replacement resumes after %d, want 1", b.ack.GetResumeAfterSeq())
	}
	if err := a.waitErr(); status.Code(err) != codes.Aborted || !strings.Contains(err.Error(), "replaced by a newer stream") {
		t.Fatalf("old stream ended with %v, want Aborted: replaced", err)
	}
	b.send(2, snapshotMsg())
	b.waitAck(2)
	if n := h.agg.Fleet().Nodes(); len(n) != 1 || n[0].GetState() != vigilv1.NodeState_NODE_STATE_UP {
		t.Fatalf("after replacement: %v, want one node UP", n)
	}
}

func TestSendCommand(t *testing.T) {
	h := startAggregator(t, func(c *aggregator.Config) { c.CommandQueue = 2 })
	cmd := &vigilv1.Command{Id: "r1", Action: vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART}
	if err := h.agg.Gateway().SendCommand("n1", cmd); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("not connected: got %v, want ErrUnavailable", err)
	}
	a := h.mustConnect("n1", "i1")
	if err := h.agg.Gateway().SendCommand("n1", cmd); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-a.msgs:
		if m.GetCommand().GetId() != "r1" {
			t.Fatalf("got %v, want command r1", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("command not delivered")
	}
}

func TestStaleDownForget(t *testing.T) {
	// The checks between two transitions (node_up 1 before stale; the
	// series kept while down, before forget) must run within these
	// periods: seconds, not hundreds of milliseconds, so that a loaded
	// machine does not miss them.
	const staleAfter, forgetAfter = 2 * time.Second, 4 * time.Second
	h := startAggregator(t, func(c *aggregator.Config) {
		c.StaleAfter = staleAfter
		c.ForgetAfter = forgetAfter
	})
	state := func() vigilv1.NodeState {
		n := h.agg.Fleet().Nodes()
		if len(n) == 0 {
			return vigilv1.NodeState_NODE_STATE_UNSPECIFIED
		}
		return n[0].GetState()
	}
	a := h.mustConnect("n1", "i1")
	a.send(1, snapshotMsg(plainContainer("c1", vigilv1.ContainerState_CONTAINER_STATE_RUNNING, 0)))
	a.waitAck(1)
	if !strings.Contains(scrape(t, h, ""), `vigil_node_up{node="n1"} 1`) {
		t.Fatal("node_up is not 1 after the snapshot")
	}
	waitFor(t, staleAfter+15*time.Second, "node stale", func() bool { return state() == vigilv1.NodeState_NODE_STATE_STALE })
	if !strings.Contains(scrape(t, h, ""), `vigil_node_up{node="n1"} 0`) {
		t.Fatal("node_up is not 0 while stale")
	}
	a.send(2, snapshotMsg(plainContainer("c1", vigilv1.ContainerState_CONTAINER_STATE_RUNNING, 0)))
	a.waitAck(2)
	if state() != vigilv1.NodeState_NODE_STATE_UP {
		t.Fatalf("state %v after a message, want UP", state())
	}

	a.close()
	downAt := time.Now()
	waitFor(t, 15*time.Second, "node down", func() bool { return state() == vigilv1.NodeState_NODE_STATE_DOWN })
	text := scrape(t, h, "")
	if len(seriesLines(text, "vigil_container_info")) != 1 {
		t.Fatal("container series vanished as soon as the node went down; they must outlive the grace period")
	}
	waitFor(t, forgetAfter+15*time.Second, "node forgotten", func() bool { return state() == vigilv1.NodeState_NODE_STATE_UNSPECIFIED })
	if since := time.Since(downAt); since < forgetAfter {
		t.Fatalf("forgotten after %v, before forget-after", since)
	}
	text = scrape(t, h, "")
	if strings.Contains(text, `node="n1"`) {
		t.Fatalf("forgotten node still in /metrics:\n%s", text)
	}
}

// TestWatchEventsAndRemediationOff: without a store, the remediation calls
// say remediation is off and how to turn it on.
func TestWatchEventsAndRemediationOff(t *testing.T) {
	h := startAggregator(t, nil)
	api := vigilv1.NewVigilClient(h.dial("operator/op"))
	_, err := api.ListRemediations(context.Background(), &vigilv1.ListRemediationsRequest{})
	if status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "remediation is off") || !strings.Contains(err.Error(), "--data-dir") {
		t.Fatalf("ListRemediations: %v", err)
	}
	_, err = api.RequestRemediation(context.Background(), &vigilv1.RequestRemediationRequest{})
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("RequestRemediation: %v", err)
	}
	_, err = api.GetContainer(context.Background(), &vigilv1.GetContainerRequest{Node: "x", Namespace: "default", Id: "y"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("GetContainer of an unknown node: %v, want NotFound", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w, err := api.WatchEvents(ctx, &vigilv1.WatchEventsRequest{Namespace: "default"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Header(); err != nil { // the subscription is in place
		t.Fatal(err)
	}
	a := h.mustConnect("n1", "i1")
	a.send(1, snapshotMsg())
	other := plainContainer("other", vigilv1.ContainerState_CONTAINER_STATE_RUNNING, 0)
	other.Namespace = "moby"
	a.send(2, eventMsg(vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_ADDED, other))
	a.send(3, eventMsg(vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_ADDED, plainContainer("c1", vigilv1.ContainerState_CONTAINER_STATE_RUNNING, 0)))
	ev, err := w.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if ev.GetNode() != "n1" || ev.GetEvent().GetContainer().GetId() != "c1" {
		t.Fatalf("got %v, want c1 on n1 (the moby event filtered out)", ev)
	}
	got, err := api.GetContainer(context.Background(), &vigilv1.GetContainerRequest{Node: "n1", Namespace: "default", Id: "c1"})
	if err != nil || got.GetContainer().GetContainer().GetId() != "c1" {
		t.Fatalf("GetContainer: %v %v", got, err)
	}
}

func TestAcksBatchedByCount(t *testing.T) {
	h := startAggregator(t, func(c *aggregator.Config) {
		c.AckInterval = time.Hour // only the count can trigger an ack
		c.AckEvery = 3
	})
	a := h.mustConnect("n1", "i1")
	a.send(1, snapshotMsg())
	a.send(2, snapshotMsg())
	a.send(3, snapshotMsg())
	a.waitAck(3)
	a.send(4, snapshotMsg())
	select {
	case m := <-a.msgs:
		t.Fatalf("got %v after one message; the ack should wait for two more or the interval", m)
	case <-time.After(300 * time.Millisecond):
	}
	a.send(5, snapshotMsg())
	a.send(6, snapshotMsg())
	a.waitAck(6)
}

// TestQuotaSeriesForgotten: a node cut off over a quota is counted by node,
// and that series goes when the node is forgotten (it stayed for ever).
func TestQuotaSeriesForgotten(t *testing.T) {
	h := startAggregator(t, func(c *aggregator.Config) {
		c.StaleAfter = 300 * time.Millisecond
		c.ForgetAfter = 600 * time.Millisecond
		c.Quotas.Containers = 1
	})
	a := h.mustConnect("n1", "i1")
	a.send(1, snapshotMsg(
		plainContainer("c1", vigilv1.ContainerState_CONTAINER_STATE_RUNNING, 0),
		plainContainer("c2", vigilv1.ContainerState_CONTAINER_STATE_RUNNING, 0)))
	waitFor(t, 10*time.Second, "the quota counted for n1", func() bool {
		return strings.Contains(scrape(t, h, ""), `vigil_aggregator_quota_exceeded_total{cap="containers",node="n1"} 1`)
	})
	a.close()
	waitFor(t, 10*time.Second, "n1 forgotten with its quota series", func() bool {
		return !strings.Contains(scrape(t, h, ""), `node="n1"`)
	})
}

// TestHelloOverQuotaNotCountedUnderItsName: a hello over a quota (here an
// agent version longer than the string cap) is refused with
// ResourceExhausted and counted as a rejected hello, not under the node
// it claims: that name is not checked against the certificate yet, and a
// series per claimed name would never be deleted.
func TestHelloOverQuotaNotCountedUnderItsName(t *testing.T) {
	h := startAggregator(t, func(c *aggregator.Config) { c.Quotas.StringBytes = 256 })
	s, err := vigilv1.NewAgentGatewayClient(h.dial("n1")).Connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&vigilv1.AgentMessage{SentAt: timestamppb.Now(), Body: &vigilv1.AgentMessage_Hello{Hello: &vigilv1.Hello{
		NodeName: "claimed-by-nobody", InstanceId: "i1", AgentVersion: strings.Repeat("v", 300), ProtocolVersion: 1,
	}}}); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	if _, err := s.Recv(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("hello over the string cap: %v, want ResourceExhausted", err)
	}
	waitFor(t, 10*time.Second, "the refused hello counted", func() bool {
		return strings.Contains(scrape(t, h, ""), `vigil_aggregator_messages_rejected_total{reason="hello_over_quota"} 1`)
	})
	if body := scrape(t, h, ""); strings.Contains(body, "claimed-by-nobody") {
		t.Errorf("the claimed node name is on /metrics:\n%s", body)
	}
}

// TestRefusedHandshakeCountedAndLogged: a client certificate from a CA the
// aggregator does not trust is refused in the TLS handshake, which gRPC
// does silently (the client sees a broken pipe): the aggregator counts it
// and logs it.
func TestRefusedHandshakeCountedAndLogged(t *testing.T) {
	var logs lockedBuffer
	h := startAggregator(t, func(c *aggregator.Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	if !strings.Contains(scrape(t, h, ""), "vigil_aggregator_tls_handshakes_refused_total 0") {
		t.Fatal("no refused handshakes counter at 0 from the start")
	}
	other, err := pki.NewCA("some other CA")
	if err != nil {
		t.Fatal(err)
	}
	f, err := other.WriteIdentity(t.TempDir(), "mallory", pki.Identity{Role: pki.RoleOperator, Name: "mallory"})
	if err != nil {
		t.Fatal(err)
	}
	conn := h.dialFiles(f)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := vigilv1.NewVigilClient(conn).ListNodes(ctx, &vigilv1.ListNodesRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("a certificate of another CA: %v, want Unavailable", err)
	}
	waitFor(t, 10*time.Second, "the refused handshake counted", func() bool {
		return !strings.Contains(scrape(t, h, ""), "vigil_aggregator_tls_handshakes_refused_total 0")
	})
	waitFor(t, 10*time.Second, "the refused handshake logged", func() bool {
		return strings.Contains(logs.String(), "TLS handshake refused on the gRPC listener")
	})
}

// lockedBuffer is a bytes.Buffer safe for a logger and a reader at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
