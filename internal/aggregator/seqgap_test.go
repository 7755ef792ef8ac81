package aggregator_test

import (
	"strings"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/aggregator"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// TestSequenceGapAsksForSnapshot (issue 21): a message whose seq skips
// numbers is applied, counted in vigil_aggregator_sequence_gaps_total{node}
// (0 from when the node connects) and answered with a SnapshotRequest on
// the stream naming the last seq applied before it; the snapshot that
// follows clears the request, so a later gap asks again; the node's series
// goes when the node is forgotten.
func TestSequenceGapAsksForSnapshot(t *testing.T) {
	h := startAggregator(t, func(c *aggregator.Config) {
		c.StaleAfter = 300 * time.Millisecond
		c.ForgetAfter = 600 * time.Millisecond
	})
	web := plainContainer("web", vigilv1.ContainerState_CONTAINER_STATE_RUNNING, 0)
	a := h.mustConnect("n1", "i1")
	a.send(1, snapshotMsg(web))
	a.send(2, eventMsg(vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_UPDATED, web))
	a.waitAck(2)
	gaps := func() []string { return seriesLines(scrape(t, h, ""), "vigil_aggregator_sequence_gaps_total") }
	if g := gaps(); len(g) != 1 || g[0] != `vigil_aggregator_sequence_gaps_total{node="n1"} 0` {
		t.Fatalf("gaps without a gap: %v, want n1 at 0", g)
	}
	// awaitRequest reads the stream until a SnapshotRequest.
	awaitRequest := func() *vigilv1.SnapshotRequest {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case m := <-a.msgs:
				if r := m.GetSnapshotRequest(); r != nil {
					return r
				}
			case err := <-a.err:
				t.Fatalf("stream ended awaiting a snapshot request: %v", err)
			case <-deadline:
				t.Fatal("no snapshot request within 10s of a sequence gap")
			}
		}
	}

	a.send(5, eventMsg(vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_UPDATED, web)) // 3 and 4 lost
	if r := awaitRequest(); r.GetAfterSeq() != 2 || !strings.Contains(r.GetReason(), "gap") {
		t.Fatalf("snapshot request %v, want after_seq 2 and a reason naming the gap", r)
	}
	waitFor(t, 10*time.Second, "one gap counted for n1", func() bool {
		g := gaps()
		return len(g) == 1 && g[0] == `vigil_aggregator_sequence_gaps_total{node="n1"} 1`
	})
	// The snapshot (itself after a gap: counted, not asked for again)
	// clears the request; the next gap asks again.
	a.send(7, snapshotMsg(web))
	a.send(10, eventMsg(vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_UPDATED, web))
	if r := awaitRequest(); r.GetAfterSeq() != 7 {
		t.Fatalf("second snapshot request %v, want after_seq 7", r)
	}
	waitFor(t, 10*time.Second, "three gaps counted for n1", func() bool {
		g := gaps()
		return len(g) == 1 && g[0] == `vigil_aggregator_sequence_gaps_total{node="n1"} 3`
	})

	a.close()
	waitFor(t, 10*time.Second, "n1's gap series gone with the node", func() bool { return len(gaps()) == 0 && len(h.agg.Fleet().Nodes()) == 0 })
}
