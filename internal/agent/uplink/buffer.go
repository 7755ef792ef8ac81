package uplink

import (
	"time"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// kind is the type of an AgentMessage body. It decides how the buffer treats
// the message when it must make room and when a snapshot is sent.
type kind int

const (
	kindSnapshot kind = iota
	kindContainerEvent
	kindResourceSamples
	kindNetworkSamples
	kindNetworkEvent
	kindNodeStatus
	kindPeerView
	kindCommandResult
	numKinds
)

var kindNames = [numKinds]string{
	kindSnapshot:        "snapshot",
	kindContainerEvent:  "container_event",
	kindResourceSamples: "resource_samples",
	kindNetworkSamples:  "network_samples",
	kindNetworkEvent:    "network_event",
	kindNodeStatus:      "node_status",
	kindPeerView:        "peer_view",
	kindCommandResult:   "command_result",
}

func (k kind) String() string { return kindNames[k] }

// latestWins reports whether only the newest message of this kind matters:
// each one carries the whole current value (a sample cycle, the node status,
// the gossip view), so an older one that was never sent can be dropped when
// a newer one arrives.
func (k kind) latestWins() bool {
	switch k {
	case kindResourceSamples, kindNetworkSamples, kindNodeStatus, kindPeerView:
		return true
	}
	return false
}

// inSnapshot reports whether a Snapshot carries this kind's information, so
// that a snapshot supersedes every older message of the kind. Resource
// samples, peer views and command results are not part of a Snapshot.
func (k kind) inSnapshot() bool {
	switch k {
	case kindSnapshot, kindContainerEvent, kindNetworkSamples, kindNetworkEvent, kindNodeStatus:
		return true
	}
	return false
}

// entry is one message held until the aggregator acknowledges it.
type entry struct {
	kind kind
	// msg is the envelope. Its Seq is 0 until the message is first written
	// to a stream; from then on it keeps that number across resends.
	msg  *vigilv1.AgentMessage
	size int
	// writtenAt is when the message was last written to a stream.
	writtenAt time.Time
}

// pushResult says what push had to do to make room.
type pushResult struct {
	// coalesced: an older unsent message of the same latest-wins kind was
	// replaced.
	coalesced bool
	// dropped is the entry thrown away because the buffer was full (the
	// oldest one, or the new one itself when it was a latest-wins message
	// facing a buffer full of lifecycle messages); nil when none.
	dropped *entry
	// evictedSample: the entry dropped was an older latest-wins message, a
	// newer one of its kind is held, and nothing was lost.
	evictedSample bool
}

// buffer holds the messages not yet acknowledged, oldest first. It is not
// safe for concurrent use: the Uplink guards it with its mutex.
//
// Invariants: entries with a sequence number form a prefix of entries, in
// strictly increasing order; the first cursor entries were written on the
// current stream; len(entries) <= capacity.
//
// Sequence numbers are given out when a message is first written to a
// stream, not when it is queued, so a message coalesced away before it was
// ever sent leaves no gap in the numbers the aggregator sees.
type buffer struct {
	capacity int
	entries  []*entry
	cursor   int
	nextSeq  uint64
	acked    uint64
	// unsent[k] is the newest entry of latest-wins kind k that was never
	// written to any stream, nil when none.
	unsent [numKinds]*entry
	// held[k] counts the entries of kind k, so that a full buffer finds
	// out without a scan whether a stale latest-wins entry exists.
	held [numKinds]int
}

func newBuffer(capacity int) *buffer {
	return &buffer{capacity: capacity, nextSeq: 1}
}

// lastSeq is the highest sequence number given out so far (0 when none).
func (b *buffer) lastSeq() uint64 { return b.nextSeq - 1 }

// push queues e (whose msg.Seq must be 0). A latest-wins message replaces an
// older unsent one of its kind. When the buffer is full it drops the oldest
// held latest-wins message if there is one, else the oldest message, except
// that a new latest-wins message never evicts a lifecycle message: it is
// dropped itself.
func (b *buffer) push(e *entry) pushResult {
	var res pushResult
	if e.kind.latestWins() {
		if old := b.unsent[e.kind]; old != nil {
			b.remove(b.indexOf(old))
			res.coalesced = true
		}
	}
	if len(b.entries) >= b.capacity {
		if i := b.oldestLatestWins(e); i >= 0 {
			res.dropped = b.entries[i]
			res.evictedSample = true
			b.remove(i)
		} else if e.kind.latestWins() {
			res.dropped = e
			return res
		} else {
			res.dropped = b.entries[0]
			b.remove(0)
		}
	}
	b.entries = append(b.entries, e)
	b.held[e.kind]++
	if e.kind.latestWins() {
		b.unsent[e.kind] = e
	}
	return res
}

// oldestLatestWins is the index of the oldest latest-wins entry for which a
// newer message of the same kind is also held or is the incoming one (so
// dropping it loses nothing), or -1.
func (b *buffer) oldestLatestWins(incoming *entry) int {
	stale := false
	for k := range numKinds {
		if k.latestWins() && (b.held[k] > 1 || b.held[k] == 1 && k == incoming.kind) {
			stale = true
		}
	}
	if !stale {
		return -1
	}
	var newest [numKinds]int
	for i := range newest {
		newest[i] = -1
	}
	for i, e := range b.entries {
		if e.kind.latestWins() {
			newest[e.kind] = i
		}
	}
	if incoming.kind.latestWins() {
		newest[incoming.kind] = len(b.entries)
	}
	for i, e := range b.entries {
		if e.kind.latestWins() && newest[e.kind] != i {
			return i
		}
	}
	return -1
}

func (b *buffer) indexOf(e *entry) int {
	for i := len(b.entries) - 1; i >= 0; i-- {
		if b.entries[i] == e {
			return i
		}
	}
	return -1
}

// remove deletes entries[i], keeping the cursor on the same next entry.
func (b *buffer) remove(i int) {
	e := b.entries[i]
	if b.unsent[e.kind] == e {
		b.unsent[e.kind] = nil
	}
	b.held[e.kind]--
	copy(b.entries[i:], b.entries[i+1:])
	b.entries[len(b.entries)-1] = nil
	b.entries = b.entries[:len(b.entries)-1]
	if i < b.cursor {
		b.cursor--
	}
}

// next returns the next entry to write on the current stream and advances
// the cursor, giving the entry its sequence number if it has none; nil when
// every held entry was written.
func (b *buffer) next(now time.Time) *entry {
	if b.cursor >= len(b.entries) {
		return nil
	}
	e := b.entries[b.cursor]
	b.cursor++
	if e.msg.Seq == 0 {
		e.msg.Seq = b.nextSeq
		b.nextSeq++
		if b.unsent[e.kind] == e {
			b.unsent[e.kind] = nil
		}
	}
	e.writtenAt = now
	return e
}

// rewind starts a new stream: every held entry is to be written again.
func (b *buffer) rewind() { b.cursor = 0 }

// ack releases every entry with a sequence number up to seq. It returns the
// number released and the entry carrying seq itself, if it was held (for the
// ack lag). Acks of numbers never given out are the caller's to refuse.
func (b *buffer) ack(seq uint64) (released int, last *entry) {
	if seq > b.acked {
		b.acked = seq
	}
	n := 0
	for n < len(b.entries) && b.entries[n].msg.Seq != 0 && b.entries[n].msg.Seq <= seq {
		if b.entries[n].msg.Seq == seq {
			last = b.entries[n]
		}
		n++
	}
	if n == 0 {
		return 0, last
	}
	for i := 0; i < n; i++ {
		b.held[b.entries[i].kind]--
		b.entries[i] = nil
	}
	b.entries = b.entries[n:]
	b.cursor = max(b.cursor-n, 0)
	return n, last
}

// supersede prepares a snapshot: it drops every held message whose content a
// snapshot carries (those are older than the snapshot and would only move
// the aggregator's state backwards), takes back the sequence numbers of the
// messages it keeps (they are written again after the snapshot, in their
// order), and reserves the snapshot's sequence number. The caller inserts
// the snapshot with insertFront. It returns the reserved number and how many
// messages were dropped.
func (b *buffer) supersede() (seq uint64, dropped int) {
	kept := b.entries[:0]
	for _, e := range b.entries {
		if e.kind.inSnapshot() {
			b.held[e.kind]--
			dropped++
			continue
		}
		kept = append(kept, e)
	}
	for i := len(kept); i < len(b.entries); i++ {
		b.entries[i] = nil
	}
	b.entries = kept
	// Of each latest-wins kind only the newest stays.
	b.unsent = [numKinds]*entry{}
	for i := len(b.entries) - 1; i >= 0; i-- {
		e := b.entries[i]
		if !e.kind.latestWins() {
			continue
		}
		if b.unsent[e.kind] != nil {
			b.remove(i)
			dropped++
			continue
		}
		b.unsent[e.kind] = e
	}
	for _, e := range b.entries {
		// The aggregator may have applied a kept message under its old
		// number: command results, peer views and samples are idempotent,
		// so writing them again under a new number is harmless.
		e.msg.Seq = 0
	}
	b.cursor = 0
	seq = b.nextSeq
	b.nextSeq++
	return seq, dropped
}

// insertFront puts a snapshot entry, already numbered by supersede, before
// every held entry. If the buffer is full it drops the oldest other entry
// and returns it.
func (b *buffer) insertFront(e *entry) (dropped *entry) {
	if len(b.entries) >= b.capacity && len(b.entries) > 0 {
		dropped = b.entries[0]
		b.remove(0)
	}
	b.entries = append(b.entries, nil)
	copy(b.entries[1:], b.entries)
	b.entries[0] = e
	b.held[e.kind]++
	if b.cursor > 0 {
		b.cursor++
	}
	return dropped
}
