package aggregator

import (
	"fmt"
	"slices"
	"testing"
	"time"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// TestGossipSeeds: the hello reply's gossip seeds are the addresses of
// other agents that a recent PeerView shows alive: not the agent's own,
// not a suspect, dead or left one's, not one from a stale view, not one
// that is not host:port; the newest view's address wins; at most
// gossipSeedCount.
func TestGossipSeeds(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	f := NewFleet()
	view := func(observer string, at time.Time, peers ...*vigilv1.PeerStatus) {
		t.Helper()
		f.connect(&vigilv1.Hello{NodeName: observer, InstanceId: "i-" + observer}, "agg", at, false)
		msg := &vigilv1.AgentMessage{Seq: 1, Body: &vigilv1.AgentMessage_PeerView{PeerView: &vigilv1.PeerView{Observer: observer, Peers: peers}}}
		if _, err := f.apply(observer, msg, at, nil); err != nil {
			t.Fatal(err)
		}
	}
	peer := func(name, addr string, st vigilv1.PeerState) *vigilv1.PeerStatus {
		return &vigilv1.PeerStatus{Name: name, Address: addr, State: st}
	}
	alive, dead := vigilv1.PeerState_PEER_STATE_ALIVE, vigilv1.PeerState_PEER_STATE_DEAD

	if got := f.gossipSeeds("x", now); got != nil {
		t.Fatalf("no views: seeds %v, want none", got)
	}
	view("a", now.Add(-5*time.Second),
		peer("b", "10.0.0.2:7946", alive), peer("c", "10.0.0.3:7946", alive),
		peer("d", "10.0.0.4:7946", dead), peer("e", "not an address", alive))
	view("b", now.Add(-2*time.Second),
		peer("a", "10.0.0.1:7946", alive), peer("c", "10.0.0.33:7946", alive)) // c came back with a new address
	view("old", now.Add(-gossipSeedMaxAge-time.Second), peer("f", "10.0.0.6:7946", alive))

	got := f.gossipSeeds("a", now)
	slices.Sort(got)
	if want := []string{"10.0.0.2:7946", "10.0.0.33:7946"}; !slices.Equal(got, want) {
		t.Errorf("seeds for a = %v, want %v", got, want)
	}
	got = f.gossipSeeds("newcomer", now)
	slices.Sort(got)
	if want := []string{"10.0.0.1:7946", "10.0.0.2:7946", "10.0.0.33:7946"}; !slices.Equal(got, want) {
		t.Errorf("seeds for a newcomer = %v, want %v", got, want)
	}
	view("g", now, peer("h", "10.0.0.8:7946", alive), peer("i", "10.0.0.9:7946", alive))
	if got := f.gossipSeeds("newcomer", now); len(got) != gossipSeedCount {
		t.Errorf("seeds from 5 candidates = %v, want %d", got, gossipSeedCount)
	}
}

// TestGossipSeedsBoundedAndSpread: the pool the hello replies draw from
// holds at most seedPoolSize members however large the views; a hello
// costs no pass over the fleet (its allocations do not grow with it); the
// choice still spreads over the fleet: views that all list the same
// members in the same order put many different ones in the pool over time,
// not their first ones, and hellos spread evenly over what the pool holds.
func TestGossipSeedsBoundedAndSpread(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	const members = 200
	peers := make([]*vigilv1.PeerStatus, 0, members)
	for i := range members {
		peers = append(peers, &vigilv1.PeerStatus{
			Name: fmt.Sprintf("m%03d", i), Address: fmt.Sprintf("10.0.%d.%d:7946", i/256, i%256),
			State: vigilv1.PeerState_PEER_STATE_ALIVE,
		})
	}
	f := NewFleet()
	handedOut := map[string]int{}
	for i := range members {
		observer := fmt.Sprintf("m%03d", i)
		at := now.Add(time.Duration(i-members) * time.Millisecond)
		f.connect(&vigilv1.Hello{NodeName: observer, InstanceId: "i"}, "agg", at, false)
		msg := &vigilv1.AgentMessage{Seq: 1, Body: &vigilv1.AgentMessage_PeerView{PeerView: &vigilv1.PeerView{Observer: observer, Peers: peers}}}
		if _, err := f.apply(observer, msg, at, nil); err != nil {
			t.Fatal(err)
		}
		if n := len(f.seeds.entries); n > seedPoolSize {
			t.Fatalf("pool of %d members after %d views, bound %d", n, i+1, seedPoolSize)
		}
		seeds := f.gossipSeeds("newcomer", now)
		if len(seeds) > gossipSeedCount {
			t.Fatalf("%d seeds in a hello reply, bound %d", len(seeds), gossipSeedCount)
		}
		for _, s := range seeds {
			handedOut[s]++
		}
	}
	// With the first members of each view, about seedPoolSize; with a
	// random two of each, most of the fleet.
	if len(handedOut) < members/2 {
		t.Fatalf("hellos after each of %d views handed out %d distinct members, want at least %d", members, len(handedOut), members/2)
	}
	if testing.Verbose() {
		t.Logf("%d distinct members handed out over %d views", len(handedOut), members)
	}

	// Hellos against one pool: each member of the pool is handed out about
	// as often as the others.
	pool := map[string]int{}
	for _, e := range f.seeds.entries {
		pool[e.addr] = 0
	}
	const hellos = 2000
	for range hellos {
		seeds := f.gossipSeeds("newcomer", now)
		if len(seeds) != gossipSeedCount {
			t.Fatalf("%d seeds from a pool of %d, want %d", len(seeds), len(pool), gossipSeedCount)
		}
		for _, s := range seeds {
			if _, ok := pool[s]; !ok {
				t.Fatalf("seed %s is not in the pool", s)
			}
			pool[s]++
		}
	}
	mean := float64(hellos*gossipSeedCount) / float64(len(pool))
	for addr, n := range pool {
		if float64(n) < mean/2 || float64(n) > mean*3/2 {
			t.Errorf("%s handed out %d times in %d hellos, mean %.0f", addr, n, hellos, mean)
		}
	}

	// The cost of a hello does not grow with the fleet.
	if allocs := testing.AllocsPerRun(100, func() { f.gossipSeeds("newcomer", now) }); allocs > 1 {
		t.Fatalf("a hello's seeds cost %v allocations with %d nodes of %d peers each", allocs, members, members)
	}
}
