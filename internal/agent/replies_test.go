package agent

import (
	"fmt"
	"testing"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// TestQueueReplyBounded: replies waiting for the disk are one per command
// (a redelivery's replaces the earlier) and at most maxPendingReplies.
func TestQueueReplyBounded(t *testing.T) {
	var q []durableReply
	for i := range 3 {
		q = queueReply(q, durableReply{mark: uint64(i), r: &vigilv1.CommandResult{CommandId: "c1"}})
	}
	if len(q) != 1 || q[0].mark != 2 {
		t.Fatalf("three replies to one command: %d queued (%+v), want the last one", len(q), q)
	}
	for i := range 2 * maxPendingReplies {
		q = queueReply(q, durableReply{mark: uint64(10 + i), r: &vigilv1.CommandResult{CommandId: fmt.Sprint("d", i)}})
	}
	if len(q) != maxPendingReplies {
		t.Fatalf("%d replies queued, want at most %d", len(q), maxPendingReplies)
	}
	if last := q[len(q)-1].r.GetCommandId(); last != fmt.Sprint("d", 2*maxPendingReplies-1) {
		t.Errorf("newest queued %q: the newest must be kept", last)
	}
}
