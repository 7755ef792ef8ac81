// Package uplink is the agent's side of the AgentGateway stream: it keeps one
// stream to the aggregator open, numbers and sends the agent's messages, holds
// each one until the aggregator acknowledges it, and resends what is
// unacknowledged after a reconnect, so that nothing is lost and nothing is
// applied twice.
//
// # Delivery
//
// Sequence numbers start at 1 for each Uplink (one random instance id per
// Uplink) and are given to a message when it is first written to a stream.
// After a reconnect the uplink resends, in order and under their original
// numbers, the held messages above the aggregator's HelloAck.resume_after_seq,
// then the messages never sent.
//
// # Snapshots
//
// A Snapshot (from the callback given to New) is sent first on the first
// connection of an Uplink, when the aggregator asks for one
// (HelloAck.snapshot_required, or a SnapshotRequest on a live stream when it
// saw a gap in the sequence), when the buffer overflowed, and when the
// aggregator's resume point contradicts what this instance sent. A snapshot
// carries the node's current state, so it supersedes every held message whose
// content it carries (container events, network events, network samples, node
// status): those are dropped rather than replayed after it, which would move
// the aggregator's state backwards. Command results, peer views and resource
// samples are not part of a snapshot; they are kept and sent after it under
// new numbers (each is idempotent).
//
// # The buffer when it fills
//
// Only the newest resource samples, network samples, node status and peer view
// matter: a newer one replaces an older one not yet sent (counted as
// coalesced). Lifecycle messages (container events, network events, command
// results) are never dropped until the buffer is truly full; then the oldest
// message is dropped, counted in vigil_agent_uplink_dropped_messages_total,
// logged, and a fresh Snapshot goes out before anything else at the next
// opportunity (at once on a live stream, else first on the next one) so the
// aggregator converges. A new sample batch that finds the buffer full of
// lifecycle messages is dropped itself: the next batch replaces it.
//
// # Reconnecting
//
// A stream that ends is dialed again (to the next address of the list) after
// a delay drawn with full jitter from an exponential window (BackoffInitial
// doubling to BackoffMax). When the aggregator's refusal says when to retry
// (a google.rpc.RetryInfo detail: a replica refusing a node another
// replica's lease still holds gives that lease's end), the uplink waits that
// long instead, plus up to a tenth of jitter, within [BackoffInitial,
// BackoffMax], and its exponential window does not grow.
package uplink
