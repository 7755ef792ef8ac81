package aggregator

import (
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
