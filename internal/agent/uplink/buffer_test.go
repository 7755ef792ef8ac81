package uplink

import (
	"fmt"
	"strings"
	"testing"
	"time"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

func newEntry(k kind, name string) *entry {
	// The name rides in CommandResult.Message whatever the kind: the
	// buffer never looks inside a body.
	return &entry{kind: k, msg: &vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_CommandResult{
		CommandResult: &vigilv1.CommandResult{Message: name}}}}
}

func names(b *buffer) string {
	var s []string
	for i, e := range b.entries {
		n := e.msg.GetCommandResult().GetMessage()
		if e.msg.Seq != 0 {
			n = fmt.Sprintf("%s#%d", n, e.msg.Seq)
		}
		if i == b.cursor {
			n = "|" + n
		}
		s = append(s, n)
	}
	return strings.Join(s, " ")
}

func TestBufferCoalescesOnlyUnsentSamples(t *testing.T) {
	b := newBuffer(10)
	b.push(newEntry(kindResourceSamples, "r1"))
	b.next(time.Now()) // r1 is written: it keeps its number
	b.push(newEntry(kindContainerEvent, "e1"))
	b.push(newEntry(kindResourceSamples, "r2"))
	if res := b.push(newEntry(kindResourceSamples, "r3")); !res.coalesced {
		t.Error("r3 did not replace the unsent r2")
	}
	b.push(newEntry(kindNetworkSamples, "n1"))
	if got, want := names(b), "r1#1 |e1 r3 n1"; got != want {
		t.Errorf("buffer = %q, want %q", got, want)
	}
}

func TestBufferFullPrefersDroppingStaleSamples(t *testing.T) {
	b := newBuffer(4)
	b.push(newEntry(kindContainerEvent, "e1"))
	b.push(newEntry(kindResourceSamples, "r1"))
	b.next(time.Now())
	b.next(time.Now()) // e1 and r1 written, unacknowledged
	b.push(newEntry(kindContainerEvent, "e2"))
	b.push(newEntry(kindContainerEvent, "e3"))
	// Full: the written r1 is stale once r2 arrives, so it goes first.
	res := b.push(newEntry(kindResourceSamples, "r2"))
	if res.dropped == nil || !res.evictedSample || names(b) != "e1#1 |e2 e3 r2" {
		t.Fatalf("push(r2) into a full buffer: %+v, buffer %q; want r1 evicted", res, names(b))
	}
	// Full of lifecycle plus one sample: a new event drops the oldest event.
	res = b.push(newEntry(kindContainerEvent, "e4"))
	if res.dropped == nil || res.evictedSample || res.dropped.msg.GetCommandResult().GetMessage() != "e1" {
		t.Fatalf("push(e4): %+v, want e1 dropped", res)
	}
	if got, want := names(b), "|e2 e3 r2 e4"; got != want {
		t.Errorf("buffer = %q, want %q", got, want)
	}
	// A network sample facing a buffer with no stale sample is dropped
	// itself rather than evict an event.
	res = b.push(newEntry(kindNetworkSamples, "n1"))
	if res.dropped == nil || res.dropped.msg.GetCommandResult().GetMessage() != "n1" || names(b) != "|e2 e3 r2 e4" {
		t.Errorf("push(n1) into a full buffer: %+v, buffer %q; want n1 refused", res, names(b))
	}
}

func TestBufferAckResumeAndSupersede(t *testing.T) {
	b := newBuffer(10)
	for _, n := range []string{"e1", "e2", "e3"} {
		b.push(newEntry(kindContainerEvent, n))
	}
	b.push(newEntry(kindCommandResult, "c1"))
	b.push(newEntry(kindPeerView, "p1"))
	for range 5 {
		b.next(time.Now())
	}
	if n, last := b.ack(2); n != 2 || last == nil || last.msg.Seq != 2 {
		t.Fatalf("ack(2) released %d (last %v), want 2", n, last)
	}
	if got, want := names(b), "e3#3 c1#4 p1#5"; got != want {
		t.Fatalf("after ack(2): %q, want %q", got, want)
	}
	b.rewind()
	if got, want := names(b), "|e3#3 c1#4 p1#5"; got != want {
		t.Fatalf("after rewind: %q, want %q", got, want)
	}
	b.push(newEntry(kindPeerView, "p2"))
	seq, dropped := b.supersede()
	if seq != 6 || dropped != 2 {
		t.Fatalf("supersede = seq %d dropped %d; want seq 6, e3 and the stale p1 dropped", seq, dropped)
	}
	b.insertFront(&entry{kind: kindSnapshot, msg: &vigilv1.AgentMessage{Seq: seq, Body: &vigilv1.AgentMessage_CommandResult{
		CommandResult: &vigilv1.CommandResult{Message: "snap"}}}})
	if got, want := names(b), "|snap#6 c1 p2"; got != want {
		t.Fatalf("after the snapshot: %q, want %q", got, want)
	}
	for range 3 {
		b.next(time.Now())
	}
	if got, want := names(b), "snap#6 c1#7 p2#8"; got != want {
		t.Fatalf("after writing: %q, want %q", got, want)
	}
}

// FuzzBuffer drives the buffer with arbitrary operations, acks of any
// number included (the aggregator's input), and checks its invariants and
// that no message disappears without being counted.
func FuzzBuffer(f *testing.F) {
	f.Add([]byte{0, 1, 0, 2, 1, 1, 5, 3, 4, 1})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 3, 4})
	f.Add([]byte{0, 2, 0, 2, 0, 6, 1, 1, 1, 2, 250, 3, 1, 4, 5})
	f.Fuzz(func(t *testing.T, ops []byte) {
		b := newBuffer(5)
		held := 0 // what the buffer should hold, by counting
		var lastWritten uint64
		for i := 0; i < len(ops); i++ {
			op := ops[i] % 6
			arg := byte(0)
			if i+1 < len(ops) {
				arg = ops[i+1]
			}
			switch op {
			case 0:
				i++
				k := kind(1 + int(arg)%(int(numKinds)-1))
				res := b.push(newEntry(k, "m"))
				held++
				if res.coalesced {
					held--
				}
				if res.dropped != nil {
					held--
				}
			case 1:
				if e := b.next(time.Now()); e != nil {
					if e.msg.Seq <= b.acked {
						t.Fatalf("wrote seq %d, already acknowledged (%d)", e.msg.Seq, b.acked)
					}
					if e.msg.Seq > lastWritten && e.msg.Seq != b.lastSeq() {
						t.Fatalf("new seq %d is not the next number (last given %d)", e.msg.Seq, b.lastSeq())
					}
					lastWritten = max(lastWritten, e.msg.Seq)
				}
			case 2:
				i++
				seq := b.lastSeq() - min(uint64(arg%4), b.lastSeq())
				n, _ := b.ack(seq)
				held -= n
			case 3:
				b.rewind()
			case 4:
				seq, dropped := b.supersede()
				held -= dropped
				if seq != b.lastSeq() {
					t.Fatalf("supersede reserved %d, last given %d", seq, b.lastSeq())
				}
				snap := &entry{kind: kindSnapshot, msg: &vigilv1.AgentMessage{Seq: seq}}
				held++
				if b.insertFront(snap) != nil {
					held--
				}
			case 5:
				n, _ := b.ack(b.lastSeq())
				held -= n
			}
			checkBuffer(t, b)
			if len(b.entries) != held {
				t.Fatalf("after op %d the buffer holds %d, the count says %d: a message vanished uncounted", op, len(b.entries), held)
			}
		}
	})
}

func checkBuffer(t *testing.T, b *buffer) {
	t.Helper()
	if len(b.entries) > b.capacity {
		t.Fatalf("holds %d, capacity %d", len(b.entries), b.capacity)
	}
	if b.cursor < 0 || b.cursor > len(b.entries) {
		t.Fatalf("cursor %d outside [0, %d]", b.cursor, len(b.entries))
	}
	var counts [numKinds]int
	for _, e := range b.entries {
		counts[e.kind]++
	}
	if counts != b.held {
		t.Fatalf("held counts %v, entries hold %v", b.held, counts)
	}
	var prev uint64
	sequenced := true
	unsentSeen := [numKinds]int{}
	for i, e := range b.entries {
		if e.msg.Seq == 0 {
			sequenced = false
			if i < b.cursor {
				t.Fatalf("entry %d before the cursor has no sequence number", i)
			}
			if e.kind.latestWins() {
				unsentSeen[e.kind]++
				if b.unsent[e.kind] != e {
					t.Fatalf("unsent %s entry %d is not the one tracked", e.kind, i)
				}
			}
			continue
		}
		if !sequenced {
			t.Fatalf("entry %d has seq %d after an unsequenced entry", i, e.msg.Seq)
		}
		if e.msg.Seq <= prev || e.msg.Seq > b.lastSeq() || e.msg.Seq <= b.acked {
			t.Fatalf("entry %d seq %d: previous %d, last given %d, acked %d", i, e.msg.Seq, prev, b.lastSeq(), b.acked)
		}
		prev = e.msg.Seq
	}
	for k, n := range unsentSeen {
		if n > 1 {
			t.Fatalf("%d unsent %s entries, want at most one", n, kind(k))
		}
		if n == 0 && b.unsent[k] != nil {
			t.Fatalf("tracked unsent %s entry is not held unsent", kind(k))
		}
	}
}
