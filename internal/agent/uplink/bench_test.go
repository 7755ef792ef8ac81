package uplink_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/agent/uplink"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// benchEvent is a container event of a realistic size (a pod container with
// labels, counters and health), about 600 bytes encoded.
func benchEvent(i int) *vigilv1.ContainerEvent {
	return &vigilv1.ContainerEvent{
		Type: vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED, Time: timestamppb.Now(),
		Container: &vigilv1.Container{
			Id: fmt.Sprintf("%064x", i), Namespace: "k8s.io", Image: "registry.local/team/service:1.2.3",
			Pod: &vigilv1.PodIdentity{Namespace: "prod", Name: "service-7d9f8b6c5d-abcde", Uid: "4f1e2d3c-aaaa-bbbb-cccc-0123456789ab", ContainerName: "service"},
			Labels: map[string]string{"io.kubernetes.pod.name": "service-7d9f8b6c5d-abcde", "io.kubernetes.pod.namespace": "prod",
				"io.kubernetes.container.name": "service", "vigil.io/restart-policy": "always"},
			State: vigilv1.ContainerState_CONTAINER_STATE_STOPPED, Manager: vigilv1.Manager_MANAGER_KUBELET, RestartCount: 3,
			Health:   &vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY, FailingStreak: 3, Probe: "http", Source: "label"},
			Counters: &vigilv1.ContainerCounters{Exits: []*vigilv1.ExitCount{{Reason: vigilv1.ExitReason_EXIT_REASON_ERROR, Code: 1, Count: 7}}, RestartsTotal: 3},
		},
		Exit:    &vigilv1.ExitStatus{Code: 1, Reason: vigilv1.ExitReason_EXIT_REASON_ERROR, ExitedAt: timestamppb.Now()},
		Message: "exited with code 1",
	}
}

func quietConfig(addr string) uplink.Config {
	return uplink.Config{Address: addr, NodeName: node, Logger: slog.New(slog.DiscardHandler),
		BackoffInitial: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond}
}

// BenchmarkSend measures the cost of Send* to the caller, without a
// stream: the floor (encoding the size check), a buffer with room, a full
// buffer of 10000 dropping its oldest, and a samples batch that replaces
// the previous one.
func BenchmarkSend(b *testing.B) {
	ev := benchEvent(1)
	b.Run("baseline-proto-size", func(b *testing.B) {
		for range b.N {
			_ = proto.Size(&vigilv1.AgentMessage{Seq: 1, SentAt: timestamppb.Now(), Body: &vigilv1.AgentMessage_ContainerEvent{ContainerEvent: ev}})
		}
	})
	b.Run("event-with-room", func(b *testing.B) {
		cfg := quietConfig("127.0.0.1:1")
		cfg.BufferSize = b.N + 1
		u, _ := uplink.New(cfg, func() *vigilv1.Snapshot { return &vigilv1.Snapshot{} })
		b.ResetTimer()
		for range b.N {
			_ = u.SendContainerEvent(ev)
		}
	})
	b.Run("event-full-buffer-10000", func(b *testing.B) {
		cfg := quietConfig("127.0.0.1:1")
		cfg.BufferSize = 10000
		u, _ := uplink.New(cfg, func() *vigilv1.Snapshot { return &vigilv1.Snapshot{} })
		for range 10000 {
			_ = u.SendContainerEvent(ev)
		}
		b.ResetTimer()
		for range b.N {
			_ = u.SendContainerEvent(ev)
		}
	})
	b.Run("samples-coalesced-behind-10000-events", func(b *testing.B) {
		cfg := quietConfig("127.0.0.1:1")
		cfg.BufferSize = 20000
		u, _ := uplink.New(cfg, func() *vigilv1.Snapshot { return &vigilv1.Snapshot{} })
		for range 10000 {
			_ = u.SendContainerEvent(ev)
		}
		rs := &vigilv1.ResourceSamples{Samples: make([]*vigilv1.ResourceSample, 100)}
		for i := range rs.Samples {
			rs.Samples[i] = &vigilv1.ResourceSample{Namespace: "k8s.io", ContainerId: fmt.Sprintf("%064x", i), CpuUsageSeconds: 1, MemoryWorkingSetBytes: 1 << 20}
		}
		b.ResetTimer()
		for range b.N {
			_ = u.SendResourceSamples(rs)
		}
	})
}

// BenchmarkStream measures delivery through a real loopback stream to the
// test gateway, until the last message is applied: the uplink against a
// baseline client that writes the same envelopes straight to the stream
// (no buffer, no acks awaited, no resend bookkeeping).
func BenchmarkStream(b *testing.B) {
	events := make([]*vigilv1.ContainerEvent, 1000)
	for i := range events {
		events[i] = benchEvent(i)
	}
	b.Run("uplink", func(b *testing.B) {
		g := newGateway(b, nil)
		cfg := quietConfig(g.addr)
		cfg.BufferSize = b.N + 10 // measure delivery, not overflow
		u, err := uplink.New(cfg, func() *vigilv1.Snapshot { return &vigilv1.Snapshot{} })
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = u.Run(ctx) }()
		defer func() { cancel(); <-done }()
		for u.Stats().AckedSeq < 1 {
			time.Sleep(time.Millisecond)
		}
		b.ResetTimer()
		for i := range b.N {
			_ = u.SendContainerEvent(events[i%len(events)])
		}
		for u.Stats().Buffered > 0 {
			time.Sleep(100 * time.Microsecond)
		}
		b.StopTimer()
		if s := u.Stats(); s.Dropped != 0 || s.AckedSeq != uint64(b.N)+1 {
			b.Fatalf("stats %+v after %d events", s, b.N)
		}
	})
	b.Run("baseline-raw-stream", func(b *testing.B) {
		g := newGateway(b, nil)
		conn, err := grpc.NewClient(g.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		stream, err := vigilv1.NewAgentGatewayClient(conn).Connect(ctx)
		if err != nil {
			b.Fatal(err)
		}
		_ = stream.Send(&vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_Hello{Hello: &vigilv1.Hello{NodeName: node, InstanceId: "raw"}}})
		if _, err := stream.Recv(); err != nil {
			b.Fatal(err)
		}
		go func() {
			for {
				if _, err := stream.Recv(); err != nil {
					return
				}
			}
		}()
		b.ResetTimer()
		for i := range b.N {
			m := &vigilv1.AgentMessage{Seq: uint64(i + 1), SentAt: timestamppb.Now(),
				Body: &vigilv1.AgentMessage_ContainerEvent{ContainerEvent: events[i%len(events)]}}
			if err := stream.Send(m); err != nil {
				b.Fatal(err)
			}
		}
		for g.node(node).lastApplied < uint64(b.N) {
			time.Sleep(100 * time.Microsecond)
		}
	})
}
