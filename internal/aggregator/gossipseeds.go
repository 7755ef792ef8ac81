package aggregator

import (
	"cmp"
	"math/rand/v2"
	"net"
	"slices"
	"time"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// Gossip seeds in the HelloAck (issue 25): the aggregator knows the agents'
// gossip addresses from their PeerViews (each lists its peers with their
// addresses), so an agent started without seeds of its own (no
// --gossip-seeds, no --gossip-seed-dns) can join through those it gets in
// its hello reply.

// gossipSeedCount is how many addresses a HelloAck carries at most: one
// that answers is enough to join; a few cover members gone since.
const gossipSeedCount = 3

// gossipSeedMaxAge is how old a PeerView may be and still give seeds: as
// long as the aggregator counts a peer's report for node conditions
// (gossip.ConditionConfig.ReportMaxAge's default).
const gossipSeedMaxAge = 30 * time.Second

// gossipSeeds returns up to gossipSeedCount gossip addresses ("host:port")
// of agents other than exclude that a recent PeerView shows alive, in a
// random order (so that joins spread over the fleet). When observers
// disagree on a member's address (a node back with a new one), the most
// recent view wins.
func (f *Fleet) gossipSeeds(exclude string, now time.Time) []string {
	type seen struct {
		addr string
		at   time.Time
	}
	byName := map[string]seen{}
	for _, n := range f.list() {
		n.mu.Lock()
		view, at := n.peers, n.peersAt
		n.mu.Unlock()
		if view == nil || now.Sub(at) > gossipSeedMaxAge {
			continue
		}
		for _, p := range view.GetPeers() {
			name, addr := p.GetName(), p.GetAddress()
			if name == "" || name == exclude || name == n.name || p.GetState() != vigilv1.PeerState_PEER_STATE_ALIVE {
				continue
			}
			if _, _, err := net.SplitHostPort(addr); err != nil {
				continue // not host:port: nothing an agent could join
			}
			if s, ok := byName[name]; !ok || at.After(s.at) {
				byName[name] = seen{addr, at}
			}
		}
	}
	if len(byName) == 0 {
		return nil
	}
	out := make([]string, 0, len(byName))
	for _, s := range byName {
		out = append(out, s.addr)
	}
	slices.SortFunc(out, cmp.Compare[string]) // map order is not random enough to rely on
	out = slices.Compact(out)
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out[:min(len(out), gossipSeedCount)]
}
