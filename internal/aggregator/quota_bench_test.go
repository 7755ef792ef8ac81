package aggregator

import (
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// quotaBenchMessages are the messages an agent of 100 containers sends
// most: a ResourceSamples batch, a NetworkSamples read of 101 namespaces
// (one interface each, host with two), and a snapshot.
func quotaBenchMessages() map[string]*vigilv1.AgentMessage {
	samples := &vigilv1.ResourceSamples{}
	snap := &vigilv1.Snapshot{}
	netw := &vigilv1.NetworkSamples{Namespaces: []*vigilv1.NetworkNamespace{{Host: true, Interfaces: []*vigilv1.Interface{{Name: "eth0", Index: 2}, {Name: "lo", Index: 1}}}}}
	for i := range 100 {
		id := fmt.Sprintf("%064x", i)
		samples.Samples = append(samples.Samples, &vigilv1.ResourceSample{Namespace: "k8s.io", ContainerId: id, CpuUsageSeconds: 1, MemoryWorkingSetBytes: 1 << 20})
		snap.Containers = append(snap.Containers, &vigilv1.Container{Id: id, Namespace: "k8s.io", Image: "registry.example/app:1.2.3",
			Pod:      &vigilv1.PodIdentity{Namespace: "shop", Name: fmt.Sprintf("cart-%d", i), Uid: id[:36], ContainerName: "cart"},
			Labels:   map[string]string{"io.kubernetes.pod.name": "cart", "io.kubernetes.pod.namespace": "shop", "io.kubernetes.container.name": "cart", "vigil.io/restart-policy": "always"},
			Health:   &vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_HEALTHY, LastResults: []*vigilv1.ProbeResult{{Ok: true, Output: "HTTP 200 OK\nok"}}},
			Counters: &vigilv1.ContainerCounters{Exits: []*vigilv1.ExitCount{{Reason: vigilv1.ExitReason_EXIT_REASON_ERROR, Code: 1, Count: 3}}}})
		netw.Namespaces = append(netw.Namespaces, &vigilv1.NetworkNamespace{Inode: uint64(4026530000 + i),
			Containers: []*vigilv1.ContainerRef{{Namespace: "k8s.io", Id: id}},
			Interfaces: []*vigilv1.Interface{{Name: "eth0", Index: 3, Kind: "veth", Mac: "02:42:ac:11:00:02", Addresses: []string{"10.1.0.2/24"}}}})
	}
	return map[string]*vigilv1.AgentMessage{
		"resource_samples": {Seq: 1, Body: &vigilv1.AgentMessage_ResourceSamples{ResourceSamples: samples}},
		"network_samples":  {Seq: 2, Body: &vigilv1.AgentMessage_NetworkSamples{NetworkSamples: netw}},
		"snapshot":         {Seq: 3, Body: &vigilv1.AgentMessage_Snapshot{Snapshot: snap}},
	}
}

// BenchmarkQuotaCheck compares the quota checks of a message (strings on
// the wire, then the counts of the decoded message) with decoding it (the
// baseline every message pays already).
func BenchmarkQuotaCheck(b *testing.B) {
	var q Quotas
	q.setDefaults()
	for name, m := range quotaBenchMessages() {
		wire, err := proto.Marshal(m)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name+"/decode", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var out vigilv1.AgentMessage
				if err := proto.Unmarshal(wire, &out); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/quota", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := checkWireStrings(wire, agentMessageDesc, q.StringBytes); err != nil {
					b.Fatal(err)
				}
				if err := q.checkMessage(m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
