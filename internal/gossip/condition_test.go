package gossip

import (
	"strings"
	"testing"
	"time"
)

func TestAssess(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	fresh := now.Add(-5 * time.Second)
	old := now.Add(-time.Minute)
	rep := func(s State) PeerReport {
		return PeerReport{State: s, Since: now.Add(-8 * time.Second), ReportedAt: fresh}
	}
	staleRep := func(s State) PeerReport { return PeerReport{State: s, ReportedAt: old} }
	lastSeen := now.Add(-12 * time.Second)
	// downRep is the last report of an observer whose own stream ended at
	// ended: sent before that, still fresh.
	downRep := func(s State, ended time.Time) PeerReport {
		r := rep(s)
		r.ObserverDown, r.ObserverLastSeen = true, ended
		return r
	}
	for _, tc := range []struct {
		name     string
		streamUp bool
		lastSeen time.Time
		peers    map[string]PeerReport
		cfg      ConditionConfig
		want     Condition
		reason   []string // substrings of the reason
	}{
		{name: "stream up, no peers", streamUp: true, want: Healthy, reason: []string{"stream up"}},
		{name: "stream up wins over peers that see it dead", streamUp: true,
			peers: map[string]PeerReport{"b": rep(StateDead), "c": rep(StateDead)},
			want:  Healthy, reason: []string{"2 peers see it dead (b, c)", "gossip between them is broken"}},
		{name: "stream down, one peer alive", lastSeen: lastSeen,
			peers: map[string]PeerReport{"b": rep(StateAlive), "c": rep(StateSuspect)},
			want:  AggregatorPartitioned, reason: []string{"last seen 12s ago", "1 peers reach it (b)"}},
		{name: "stream down, alive beats a dead quorum (peers partitioned)",
			peers: map[string]PeerReport{"b": rep(StateAlive), "c": rep(StateDead), "d": rep(StateDead)},
			want:  AggregatorPartitioned, reason: []string{"2 see it dead (c, d)", "peers are partitioned too"}},
		{name: "stream down, two peers see it dead", lastSeen: lastSeen,
			peers: map[string]PeerReport{"b": rep(StateDead), "c": rep(StateDead), "d": rep(StateSuspect)},
			want:  NodeDown, reason: []string{"2 peers see it dead (b, c)"}},
		{name: "stream down, dead and left count together",
			peers: map[string]PeerReport{"b": rep(StateDead), "c": rep(StateLeft)},
			want:  NodeDown, reason: []string{"2 peers see it dead (b, c)"}},
		{name: "stream down, it left",
			peers: map[string]PeerReport{"b": rep(StateLeft), "c": rep(StateLeft)},
			want:  NodeDown, reason: []string{"left (stopped on purpose)"}},
		{name: "stream down, one dead is not a quorum",
			peers: map[string]PeerReport{"b": rep(StateDead), "c": rep(StateSuspect)},
			want:  ConditionUnknown, reason: []string{"1 dead or left, 1 suspect", "needs 2"}},
		{name: "stream down, dead reports stale",
			peers: map[string]PeerReport{"b": staleRep(StateDead), "c": staleRep(StateDead), "d": rep(StateDead)},
			want:  ConditionUnknown, reason: []string{"2 with no report for 30s"}},
		{name: "stream down, a stale alive does not count",
			peers: map[string]PeerReport{"b": staleRep(StateAlive), "c": rep(StateDead), "d": rep(StateDead)},
			want:  NodeDown},
		{name: "stream down, no peers at all", want: ConditionUnknown, reason: []string{"stream down;"}},
		{name: "quorum of three", cfg: ConditionConfig{DeadQuorum: 3},
			peers: map[string]PeerReport{"b": rep(StateDead), "c": rep(StateDead)},
			want:  ConditionUnknown, reason: []string{"needs 3"}},
		{name: "within the stream grace", lastSeen: now.Add(-2 * time.Second), cfg: ConditionConfig{StreamGrace: 5 * time.Second},
			peers: map[string]PeerReport{"b": rep(StateDead), "c": rep(StateDead)},
			want:  Healthy, reason: []string{"within the 5s grace"}},
		{name: "past the stream grace", lastSeen: lastSeen, cfg: ConditionConfig{StreamGrace: 5 * time.Second},
			peers: map[string]PeerReport{"b": rep(StateDead), "c": rep(StateDead)},
			want:  NodeDown},
		// The observer's own stream decides whether its report counts.
		{name: "a dead observer's last alive does not outvote a live dead quorum", lastSeen: now.Add(-5 * time.Second),
			// e stopped (stream down 6 s), c was killed a second later: a
			// and b see c dead, e's last view (from before) still says alive.
			peers: map[string]PeerReport{"a": rep(StateDead), "b": rep(StateDead), "e": downRep(StateAlive, now.Add(-6*time.Second))},
			want:  NodeDown, reason: []string{"2 peers see it dead (a, b)", "not counted: 1 peers whose own stream is down (e)"}},
		{name: "a dead observer's last alive is no partition",
			peers: map[string]PeerReport{"a": rep(StateSuspect), "b": rep(StateSuspect), "e": downRep(StateAlive, now.Add(-6*time.Second))},
			want:  ConditionUnknown, reason: []string{"0 dead or left, 2 suspect", "not counted: 1 peers whose own stream is down (e)"}},
		{name: "a silent observer's last dead still counts: NodeDown does not flap when a witness loses its stream",
			peers: map[string]PeerReport{"a": rep(StateDead), "e": downRep(StateLeft, lastSeen)},
			want:  NodeDown, reason: []string{"2 peers see it"}},
		{name: "a live peer reaching it is a partition, whatever a dead observer said",
			peers: map[string]PeerReport{"a": rep(StateAlive), "b": rep(StateDead), "e": downRep(StateDead, lastSeen)},
			want:  AggregatorPartitioned, reason: []string{"1 peers reach it (a)", "2 see it dead (b, e)"}},
		{name: "a silent observer's last alive is not counted, its suspect neither",
			peers: map[string]PeerReport{"a": rep(StateDead), "e": downRep(StateAlive, lastSeen), "f": downRep(StateSuspect, lastSeen)},
			want:  ConditionUnknown, reason: []string{"1 dead or left", "needs 2", "not counted: 2 peers whose own stream is down (e, f)"}},
		{name: "an observer within its stream grace still counts", cfg: ConditionConfig{StreamGrace: 5 * time.Second},
			lastSeen: lastSeen,
			peers:    map[string]PeerReport{"a": rep(StateDead), "b": rep(StateDead), "e": downRep(StateAlive, now.Add(-2*time.Second))},
			want:     AggregatorPartitioned, reason: []string{"1 peers reach it (e)"}},
		{name: "an observer past its stream grace does not", cfg: ConditionConfig{StreamGrace: 5 * time.Second},
			lastSeen: lastSeen,
			peers:    map[string]PeerReport{"a": rep(StateDead), "b": rep(StateDead), "e": downRep(StateAlive, now.Add(-6*time.Second))},
			want:     NodeDown, reason: []string{"not counted: 1 peers whose own stream is down (e)"}},
		{name: "stream up: Healthy, whatever observers up or down say", streamUp: true,
			peers: map[string]PeerReport{"a": rep(StateDead), "e": downRep(StateDead, lastSeen)},
			want:  Healthy, reason: []string{"stream up"}},
		{name: "many observers named briefly",
			peers: map[string]PeerReport{"p1": rep(StateDead), "p2": rep(StateDead), "p3": rep(StateDead), "p4": rep(StateDead),
				"p5": rep(StateDead), "p6": rep(StateDead), "p7": rep(StateDead)},
			want: NodeDown, reason: []string{"7 peers see it dead (p1, p2, p3, p4, p5 and 2 more)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, reason := Assess(tc.streamUp, tc.lastSeen, tc.peers, now, tc.cfg)
			if got != tc.want {
				t.Errorf("Assess = %v (%s), want %v", got, reason, tc.want)
			}
			for _, s := range tc.reason {
				if !strings.Contains(reason, s) {
					t.Errorf("reason %q lacks %q", reason, s)
				}
			}
		})
	}
}

func TestLocal(t *testing.T) {
	v := func(name string, s State) View { return View{Name: name, State: s} }
	for _, tc := range []struct {
		name     string
		streamUp bool
		views    []View
		answered int
		want     Condition
	}{
		{"stream up, alone", true, nil, -1, Healthy},
		{"stream up, peers dead, none answered", true, []View{v("b", StateDead)}, 0, Healthy},
		{"stream down, a peer alive in the view", false, []View{v("b", StateDead), v("c", StateAlive)}, -1, AggregatorPartitioned},
		{"stream down, peers only suspect or dead", false, []View{v("b", StateSuspect), v("c", StateDead), v("d", StateLeft)}, -1, Isolated},
		{"stream down, no peer known", false, nil, -1, Isolated},
		{"stream down, the view lags but no probe answered", false, []View{v("b", StateAlive), v("c", StateAlive)}, 0, Isolated},
		{"stream down, a probe answered", false, []View{v("b", StateAlive), v("c", StateSuspect)}, 1, AggregatorPartitioned},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, reason := Local(tc.streamUp, tc.views, tc.answered); got != tc.want {
				t.Errorf("Local = %v (%s), want %v", got, reason, tc.want)
			}
		})
	}
}

func TestFleet(t *testing.T) {
	fleet := func(conds ...Condition) map[string]Condition {
		m := map[string]Condition{}
		for i, c := range conds {
			m[string(rune('a'+i))] = c
		}
		return m
	}
	H, P, D, U := Healthy, AggregatorPartitioned, NodeDown, ConditionUnknown
	for _, tc := range []struct {
		name        string
		prev, next  map[string]Condition
		cfg         FleetConfig
		suspectSelf bool
		worse       int
		msg         string
	}{
		{name: "one of five down", prev: fleet(H, H, H, H, H), next: fleet(D, H, H, H, H), worse: 1},
		{name: "half of four is not more than half", prev: fleet(H, H, H, H), next: fleet(D, D, H, H), worse: 2},
		{name: "three of five at once", prev: fleet(H, H, H, H, H), next: fleet(D, P, D, H, H), suspectSelf: true, worse: 3,
			msg: "3 of 5 nodes turned worse at once (Healthy→AggregatorPartitioned 1, Healthy→NodeDown 2)"},
		{name: "all partitioned: the aggregator's network", prev: fleet(H, H, H), next: fleet(P, P, P), suspectSelf: true, worse: 3},
		{name: "mass recovery is not suspicious", prev: fleet(D, D, D, D), next: fleet(H, H, H, H), worse: 0},
		{name: "already down nodes do not count again", prev: fleet(D, D, D, H), next: fleet(D, D, D, P), worse: 1},
		{name: "worsening between bad conditions counts", prev: fleet(P, P, U, H), next: fleet(D, D, D, H), suspectSelf: true, worse: 3},
		{name: "two nodes: below the minimum", prev: fleet(H, H), next: fleet(D, D), worse: 2},
		{name: "minimum lowered", prev: fleet(H, H), next: fleet(D, D), cfg: FleetConfig{MinNodes: 2}, suspectSelf: true, worse: 2},
		{name: "new nodes are not counted", prev: fleet(H), next: fleet(H, D, D, D), worse: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := Fleet(tc.prev, tc.next, tc.cfg)
			if v.SuspectSelf != tc.suspectSelf || v.Worse != tc.worse {
				t.Errorf("Fleet = %+v, want suspect self %v, %d worse", v, tc.suspectSelf, tc.worse)
			}
			if tc.msg != "" && !strings.Contains(v.Message, tc.msg) {
				t.Errorf("message %q lacks %q", v.Message, tc.msg)
			}
			if v.SuspectSelf && !strings.Contains(v.Message, "aggregator's or the network's failure") {
				t.Errorf("message %q does not say whose failure it likely is", v.Message)
			}
		})
	}
}

func TestSuspicionTimeouts(t *testing.T) {
	// The table in tunables.go.
	for _, tc := range []struct {
		n        int
		min, max time.Duration
		k        int
	}{
		{1, 3 * time.Second, 18 * time.Second, 0},
		{3, 3 * time.Second, 18 * time.Second, 1},
		{5, 3 * time.Second, 18 * time.Second, 1},
		{20, 3903 * time.Millisecond, 23418 * time.Millisecond, 1},
		{50, 5094 * time.Millisecond, 30564 * time.Millisecond, 1},
		{1000, 9 * time.Second, 54 * time.Second, 1},
	} {
		s := SuspicionTimeouts(DefaultTunables, tc.n)
		if s.Min != tc.min || s.Max != tc.max || s.K != tc.k {
			t.Errorf("n=%d: %+v, want min %v max %v k %d", tc.n, s, tc.min, tc.max, tc.k)
		}
	}
}

func TestIsolation(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	var iso Isolation
	for _, step := range []struct {
		at           int
		c            Condition
		changed      bool
		since, until int // -1: zero
		ongoing      bool
	}{
		{0, Healthy, false, -1, -1, false},
		{1, AggregatorPartitioned, false, -1, -1, false},
		{2, Isolated, true, 2, -1, true},
		{3, Isolated, false, 2, -1, true},
		{9, AggregatorPartitioned, true, 2, 9, false},
		{10, Healthy, false, 2, 9, false},
		{20, Isolated, true, 20, -1, true},
		{25, Healthy, true, 20, 25, false},
	} {
		if got := iso.Observe(step.c, at(step.at)); got != step.changed {
			t.Errorf("t=%d %v: changed %v, want %v", step.at, step.c, got, step.changed)
		}
		want := func(s int) time.Time {
			if s < 0 {
				return time.Time{}
			}
			return at(s)
		}
		if !iso.Since.Equal(want(step.since)) || !iso.Until.Equal(want(step.until)) || iso.Ongoing() != step.ongoing {
			t.Errorf("t=%d %v: %+v (ongoing %v), want since %d until %d ongoing %v", step.at, step.c, iso, iso.Ongoing(), step.since, step.until, step.ongoing)
		}
	}
}
