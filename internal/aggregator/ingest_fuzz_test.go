package aggregator

import (
	"bytes"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/metrics"
	"github.com/vigilhq/vigil/internal/metrics/expotest"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// FuzzIngest feeds arbitrary frames through what a Connect stream does with
// them after the hello: decode, validate, apply to the fleet, then read the
// fleet as a scrape and the API do. A frame may be refused; nothing may
// panic, and what is applied must render as a valid exposition.
func FuzzIngest(f *testing.F) {
	seed := func(m *vigilv1.AgentMessage) {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, b)
	}
	c := &vigilv1.Container{Id: "web", Namespace: "default", State: vigilv1.ContainerState_CONTAINER_STATE_RUNNING,
		Pod:      &vigilv1.PodIdentity{Namespace: "shop", Name: "cart", ContainerName: "web"},
		Counters: &vigilv1.ContainerCounters{RestartsTotal: 2, Exits: []*vigilv1.ExitCount{{Reason: vigilv1.ExitReason_EXIT_REASON_ERROR, Code: 1, Count: 3}}},
		Health:   &vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_HEALTHY}}
	seed(&vigilv1.AgentMessage{Seq: 1, Body: &vigilv1.AgentMessage_Snapshot{Snapshot: &vigilv1.Snapshot{Containers: []*vigilv1.Container{c},
		Network: []*vigilv1.NetworkNamespace{{Host: true, Interfaces: []*vigilv1.Interface{{Name: "eth0", Index: 2, RxBytes: 10}}}}}}})
	seed(&vigilv1.AgentMessage{Seq: 2, SentAt: timestamppb.Now(), Body: &vigilv1.AgentMessage_ContainerEvent{ContainerEvent: &vigilv1.ContainerEvent{
		Type: vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED, Container: c, Exit: &vigilv1.ExitStatus{Code: 1}}}})
	seed(&vigilv1.AgentMessage{Seq: 3, Body: &vigilv1.AgentMessage_ResourceSamples{ResourceSamples: &vigilv1.ResourceSamples{
		Samples: []*vigilv1.ResourceSample{{Namespace: "default", ContainerId: "web", CpuUsageSeconds: 1.5, MemoryWorkingSetBytes: 1 << 20}}}}})
	seed(&vigilv1.AgentMessage{Seq: 4, Body: &vigilv1.AgentMessage_NetworkEvent{NetworkEvent: &vigilv1.NetworkEvent{
		Type: vigilv1.NetworkEventType_NETWORK_EVENT_TYPE_LINK_CHANGED, Interface: &vigilv1.Interface{Name: "eth0", NetnsInode: 7}}}})
	seed(&vigilv1.AgentMessage{Seq: 5, Body: &vigilv1.AgentMessage_PeerView{PeerView: &vigilv1.PeerView{Observer: "n1",
		Peers: []*vigilv1.PeerStatus{{Name: "n2", State: vigilv1.PeerState_PEER_STATE_DEAD}}}}})
	// Exit reasons that show the same label ("unknown"): one series.
	seed(&vigilv1.AgentMessage{Seq: 6, Body: &vigilv1.AgentMessage_Snapshot{Snapshot: &vigilv1.Snapshot{Containers: []*vigilv1.Container{{
		Id: "x", Namespace: "default", Counters: &vigilv1.ContainerCounters{Exits: []*vigilv1.ExitCount{
			{Reason: vigilv1.ExitReason_EXIT_REASON_UNSPECIFIED, Code: 2, Count: 1}, {Reason: vigilv1.ExitReason(42), Code: 2, Count: 1}}}}}}}})
	f.Add([]byte{0xff, 0x01}, []byte("not protobuf"))

	f.Fuzz(func(t *testing.T, first, second []byte) {
		fleet := NewFleet()
		var q Quotas
		q.setDefaults()
		fleet.connect(&vigilv1.Hello{NodeName: "n1", InstanceId: "i"}, "agg", time.Unix(0, 0), false)
		for i, frame := range [][]byte{first, second} {
			if err := checkWireStrings(frame, agentMessageDesc, q.StringBytes); err != nil {
				continue // refused by the stream with ResourceExhausted
			}
			m := &vigilv1.AgentMessage{}
			if err := proto.Unmarshal(frame, m); err != nil {
				continue // refused by the stream with InvalidArgument
			}
			if err := validate(m); err != nil {
				continue
			}
			if err := q.checkMessage(m); err != nil {
				if _, ok := asQuotaError(err); !ok {
					t.Fatalf("quota check error %v is not a quota error", err)
				}
				continue
			}
			if _, err := fleet.apply("n1", m, time.Unix(int64(i), 0), &q); err != nil {
				if _, ok := asQuotaError(err); ok {
					continue
				}
				t.Fatalf("apply of a validated message: %v", err)
			}
		}
		var buf bytes.Buffer
		n := fleet.get("n1")
		if _, err := metrics.WriteFamilies(&buf, []*metrics.Rendered{n.rendered()}); err != nil {
			t.Fatalf("render: %v", err)
		}
		if _, err := expotest.Check(buf.Bytes()); err != nil {
			t.Fatalf("scrape of the applied state: %v\n%s", err, buf.String())
		}
		fleet.Nodes()
		fleet.Containers(&vigilv1.ListContainersRequest{IncludeSandboxes: true})
		fleet.sweep(time.Unix(100, 0), time.Second, time.Minute)
	})
}
