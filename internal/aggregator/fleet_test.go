package aggregator

import (
	"fmt"
	"slices"
	"testing"
	"time"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// TestCommandResultsKeyedByCommand: a result re-sent (the uplink re-sends
// kept results after a snapshot) replaces the stored one in its place, and
// the oldest commands are dropped past maxCommandResults.
func TestCommandResultsKeyedByCommand(t *testing.T) {
	f := NewFleet()
	f.connect(&vigilv1.Hello{NodeName: "n1", InstanceId: "i"}, "agg", time.Unix(0, 0), false)
	seq := uint64(0)
	result := func(id string, o vigilv1.CommandOutcome) {
		t.Helper()
		seq++
		m := &vigilv1.AgentMessage{Seq: seq, Body: &vigilv1.AgentMessage_CommandResult{CommandResult: &vigilv1.CommandResult{CommandId: id, Outcome: o}}}
		if err := validate(m); err != nil {
			t.Fatal(err)
		}
		if _, err := f.apply("n1", m, time.Unix(int64(seq), 0), nil); err != nil {
			t.Fatal(err)
		}
	}
	ids := func() []string {
		var out []string
		for _, r := range f.CommandResults("n1") {
			out = append(out, r.GetCommandId())
		}
		return out
	}
	result("a", vigilv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED)
	result("b", vigilv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED)
	result("a", vigilv1.CommandOutcome_COMMAND_OUTCOME_FAILED)
	if got := ids(); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("results %v, want [a b]", got)
	}
	if got := f.CommandResults("n1")[0].GetOutcome(); got != vigilv1.CommandOutcome_COMMAND_OUTCOME_FAILED {
		t.Fatalf("re-sent result of a not kept: outcome %v", got)
	}

	for i := range maxCommandResults {
		result(fmt.Sprintf("c%d", i), vigilv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED)
	}
	got := ids()
	if len(got) != maxCommandResults || got[0] != "c0" || got[len(got)-1] != fmt.Sprintf("c%d", maxCommandResults-1) {
		t.Fatalf("after %d more commands: %d results from %s to %s, want c0..c%d", maxCommandResults, len(got), got[0], got[len(got)-1], maxCommandResults-1)
	}
	if f.CommandResults("nobody") != nil {
		t.Fatal("results for an unknown node")
	}
	if err := validate(&vigilv1.AgentMessage{Seq: 1, Body: &vigilv1.AgentMessage_CommandResult{CommandResult: &vigilv1.CommandResult{}}}); err == nil {
		t.Fatal("a command result without command_id was accepted")
	}
}

// A gap asks for a snapshot once until a snapshot arrives; a gap right
// after a new instance's hello (lastSeq 0: the agent resends what it holds)
// is not one; the reconnect after a gap asks for a snapshot too.
func TestFleetSequenceGaps(t *testing.T) {
	f := NewFleet()
	hello := &vigilv1.Hello{NodeName: "n1", InstanceId: "i"}
	if ack := f.connect(hello, "agg", time.Unix(0, 0), false); !ack.GetSnapshotRequired() {
		t.Fatal("a new node is not asked for a snapshot")
	}
	apply := func(seq uint64, snapshot bool) applyResult {
		t.Helper()
		m := &vigilv1.AgentMessage{Seq: seq, Body: &vigilv1.AgentMessage_NodeStatus{NodeStatus: &vigilv1.NodeStatus{}}}
		if snapshot {
			m.Body = &vigilv1.AgentMessage_Snapshot{Snapshot: &vigilv1.Snapshot{}}
		}
		r, err := f.apply("n1", m, time.Unix(int64(seq), 0), nil)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for _, c := range []struct {
		seq      uint64
		snapshot bool
		gap      uint64
		ask      bool
	}{
		{40, true, 0, false}, // first after the hello: no gap
		{41, false, 0, false},
		{44, false, 2, true},
		{47, false, 2, false}, // asked already
		{49, true, 1, false},  // the snapshot: counted, clears the ask
		{52, false, 2, true},
	} {
		if r := apply(c.seq, c.snapshot); r.gap != c.gap || r.askSnapshot != c.ask {
			t.Errorf("seq %d: gap %d ask %v, want %d %v", c.seq, r.gap, r.askSnapshot, c.gap, c.ask)
		}
	}
	if n := f.get("n1"); n.seqGaps != 4 {
		t.Errorf("%d gaps counted, want 4", n.seqGaps)
	}
	if ack := f.connect(hello, "agg", time.Unix(60, 0), false); !ack.GetSnapshotRequired() || ack.GetResumeAfterSeq() != 52 {
		t.Errorf("reconnect after an unanswered gap: %v, want snapshot_required and resume after 52", ack)
	}
}
