package aggregator

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/store/bolt"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// TestHistoryTwoWriters: two replicas write one node's history (the old
// holder the events still queued when the node moved, the new holder the
// same events sent again by the agent, which the old one had applied but
// not acknowledged; any replica its remediations). A change written by
// both is kept once; two different changes of the same nanosecond are
// both kept; a change the new holder loaded and writes again is counted
// once against the bound, so it is not pruned early; what the old holder
// writes after the new one read the keys is counted historySettle later.
func TestHistoryTwoWriters(t *testing.T) {
	st, err := bolt.Open(filepath.Join(t.TempDir(), "s.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	newReplica := func() *history {
		return newHistory(st, slog.New(slog.DiscardHandler), 3, 0, prometheus.NewCounter(prometheus.CounterOpts{Name: "x"}))
	}
	oldHolder, newHolder := newReplica(), newReplica()
	clock := &testClock{now: time.Now()}
	newHolder.now = clock.Now
	at := time.Now().Add(-time.Minute)
	exit := func(container string, sec int) *vigilv1.WatchEventsResponse {
		return &vigilv1.WatchEventsResponse{Node: "n1", Event: &vigilv1.ContainerEvent{
			Type:      vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED,
			Time:      timestamppb.New(at.Add(time.Duration(sec) * time.Second)),
			Container: &vigilv1.Container{Id: container, Namespace: "default"},
		}}
	}
	ids := func() []string {
		t.Helper()
		got, err := newHolder.since(ctx, at.Add(-time.Hour), "n1", "")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, m := range got {
			out = append(out, m.GetEvent().GetContainer().GetId())
		}
		return out
	}

	// The new holder has written something already (its own sequence, as
	// keys were, would not match the old holder's).
	newHolder.write(ctx, []*vigilv1.WatchEventsResponse{exit("first", 0)})
	// The old holder writes a's exit and b's, of one nanosecond; the new
	// holder, having claimed the node, writes a's again (resent by the
	// agent).
	oldHolder.write(ctx, []*vigilv1.WatchEventsResponse{exit("a", 1), exit("b", 1)})
	newHolder.reload("n1")
	newHolder.write(ctx, []*vigilv1.WatchEventsResponse{exit("a", 1)})
	if got := ids(); len(got) != 3 || got[0] != "first" || !(got[1] == "a" && got[2] == "b" || got[1] == "b" && got[2] == "a") {
		t.Fatalf("history %v, want first, then a and b once each", got)
	}
	// At the bound (3), one change more pushes out the oldest only.
	newHolder.write(ctx, []*vigilv1.WatchEventsResponse{exit("c", 2)})
	if got := ids(); len(got) != 3 || got[2] != "c" || got[0] == "first" {
		t.Fatalf("history %v after one more past the bound of 3, want a, b, c", got)
	}
	// The old holder's last queued event lands after the new holder read
	// the keys: the history is past its bound until the new holder reads
	// them again, historySettle after the claim.
	oldHolder.write(ctx, []*vigilv1.WatchEventsResponse{exit("late", 3)})
	clock.advance(historySettle)
	newHolder.write(ctx, []*vigilv1.WatchEventsResponse{exit("d", 4)})
	if got := ids(); len(got) != 3 || got[0] != "c" || got[1] != "late" || got[2] != "d" {
		t.Fatalf("history %v, want c, late, d (the bound of 3 again)", got)
	}
}
