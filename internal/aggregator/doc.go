// Package aggregator holds the fleet's state as the agents report it, serves
// the agents' streams (AgentGateway), the operator API (Vigil) and its JSON
// endpoints, and feeds the Prometheus exposition.
//
// # Stream
//
// Each agent keeps one Connect stream. The first message must be a Hello
// (else InvalidArgument); under mutual TLS its node_name must be the client
// certificate's common name (else PermissionDenied, "certificate is for A,
// hello claims B"). A newer stream of the same node replaces the older one,
// whose context is cancelled (it ends with Aborted). Messages of an agent
// instance (Hello.instance_id) are applied at most once per sequence
// number; a reconnect of the same instance is answered with
// resume_after_seq = the last sequence number applied, a new instance or an
// unknown node with resume 0 and snapshot_required. Acks are cumulative,
// sent at most Config.AckInterval after a message was applied, or at once
// after Config.AckEvery messages. A malformed message (InvalidArgument) or
// one over Config.MaxMessageBytes (ResourceExhausted) ends only its own
// stream.
//
// # State and liveness
//
// Fleet keeps one node entry per node name, each behind its own mutex; the
// stored protobuf messages are never modified, so readers copy pointers
// under the lock and use them after. A node is DOWN as soon as its stream
// ends, STALE after Config.StaleAfter without a message while connected,
// and forgotten (from the API and the metrics) Config.ForgetAfter after it
// went down; until then its containers' series stay, with vigil_node_up 0.
// Counters are exposed as the agents send them, never summed here.
//
// # Exposition
//
// GET /metrics?shard=I&shards=N writes the series of the nodes whose
// metrics.ShardOf(name, N) is I; without parameters, every node. Each node's
// series are rendered (metrics.RenderNode) at the first scrape after the
// node changed, outside the node's lock, and kept as bytes until the next
// change, so a scrape of an unchanged fleet only copies bytes and ingest
// never waits for a scrape. Shard 0 (and the unsharded form) also carries
// the aggregator's self-metrics and the fleet-level counts
// (vigil_aggregator_*), gathered from the client_golang registry of Config.
package aggregator
