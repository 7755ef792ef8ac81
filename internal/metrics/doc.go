// Package metrics renders Vigil's Prometheus exposition: the per-container and
// per-node series of the fleet (pre-rendered and sharded by node) and the
// agent's self-metrics.
//
// # Fleet series
//
// RenderNode turns one node's state (its containers, their latest resource
// samples, its network namespaces and its gossip view) into the node's series
// in the text exposition format, grouped by metric family. The result is
// immutable and cheap to write out again: the aggregator keeps one Rendered
// per node and re-renders a node only after it changed, the way
// kube-state-metrics keeps each object's series as bytes. WriteFamilies writes
// the series of many nodes as one valid exposition (each family's HELP and
// TYPE once, then every node's lines of that family). The agent serves its own
// node with WriteNode. Measured against client_golang's registry in
// docs/benchmarks/aggregator.md.
//
// Label rules (ARCHITECTURE.md, "The contract"): every per-container series
// carries node, namespace (containerd namespace), pod_namespace, pod and
// container (the kubelet's container name for pods, the containerd id
// otherwise). container_id and image appear on vigil_container_info only.
// Pod sandboxes get no per-container series; a pod's network series carry the
// pod's labels and container="" because the network belongs to the pod.
// Loopback interfaces inside containers and host veths whose peer lives in a
// container (already counted from inside) are left out, which keeps a running
// container at about 25 series.
//
// # Self-metrics
//
// The agent's own metrics (vigil_agent_*, go_*, process_*) are Counters,
// Histograms and Collectors of this package, gathered by a Registry and
// written in the same text format; see self.go for why not client_golang.
// The aggregator's self-metrics still use client_golang.
//
// # Shards
//
// ShardOf assigns a node to one of N shards by the 64-bit FNV-1a hash of its
// name modulo N: stable across processes and restarts, so each Prometheus
// target of /metrics?shard=I&shards=N holds a fixed part of the fleet.
package metrics
