package metrics_test

import (
	"bytes"
	"testing"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/metrics"
	"github.com/vigilhq/vigil/internal/metrics/expotest"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// FuzzRenderNode feeds agent-controlled strings (names, ids, images,
// interface names) through the renderer: the output must always parse and
// never hold the same series twice, whatever the agent sends.
func FuzzRenderNode(f *testing.F) {
	f.Fuzz(func(t *testing.T, node, namespace, pod, ctrID, image, iface string, code uint32, sandbox bool) {
		c1 := &vigilv1.Container{Id: ctrID, Namespace: namespace, Image: image, State: vigilv1.ContainerState_CONTAINER_STATE_RUNNING,
			Counters: &vigilv1.ContainerCounters{Exits: []*vigilv1.ExitCount{{Reason: vigilv1.ExitReason(code % 6), Code: code, Count: 1}, {Reason: vigilv1.ExitReason(code % 6), Code: code, Count: 2}, {Reason: vigilv1.ExitReason((code / 6) % 7), Code: code, Count: 4}}}}
		c2 := &vigilv1.Container{Id: ctrID + "2", Namespace: namespace, Image: image, Pod: &vigilv1.PodIdentity{Namespace: namespace, Name: pod, ContainerName: ctrID, Sandbox: sandbox}}
		c3 := &vigilv1.Container{Id: ctrID + "3", Namespace: namespace, Pod: &vigilv1.PodIdentity{Namespace: namespace, Name: pod, ContainerName: ctrID}}
		ifc := &vigilv1.Interface{Name: iface, RxBytes: uint64(code)}
		in := metrics.NodeInput{
			Name: node, Up: sandbox, Containers: []*vigilv1.Container{c1, c2, c3, nil},
			Samples: map[container.Key]*vigilv1.ResourceSample{{Namespace: namespace, ID: ctrID}: {CpuUsageSeconds: float64(code) / 7}},
			Network: []*vigilv1.NetworkNamespace{
				{Host: true, Interfaces: []*vigilv1.Interface{ifc, ifc}},
				{Containers: []*vigilv1.ContainerRef{{Namespace: namespace, Id: ctrID}}, Interfaces: []*vigilv1.Interface{ifc, ifc}},
				{Containers: []*vigilv1.ContainerRef{{Namespace: namespace, Id: ctrID + "2"}, {Namespace: namespace, Id: ctrID + "3"}}, Interfaces: []*vigilv1.Interface{ifc}},
				nil,
			},
			Peers: &vigilv1.PeerView{Peers: []*vigilv1.PeerStatus{{Name: iface}, {Name: iface}, {Name: node}}},
		}
		var buf bytes.Buffer
		if err := metrics.WriteNode(&buf, in); err != nil {
			t.Fatal(err)
		}
		if _, err := expotest.Check(buf.Bytes()); err != nil {
			t.Fatalf("%v\n%s", err, buf.String())
		}
	})
}

// FuzzParseShard checks that any shard parameters either fail or select a
// shard inside its range.
func FuzzParseShard(f *testing.F) {
	f.Fuzz(func(t *testing.T, shard, shards string) {
		s, err := metrics.ParseShard(shard, shards)
		if err != nil {
			return
		}
		if s.Of < 1 || s.Of > metrics.MaxShards || s.Index < 0 || s.Index >= s.Of {
			t.Fatalf("ParseShard(%q, %q) = %+v: out of range", shard, shards, s)
		}
		if got := metrics.ShardOf("node", s.Of); got < 0 || got >= s.Of {
			t.Fatalf("ShardOf out of range: %d of %d", got, s.Of)
		}
	})
}
