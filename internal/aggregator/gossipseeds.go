package aggregator

import (
	"math/rand/v2"
	"net"
	"sync"
	"time"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// Gossip seeds in the HelloAck (issue 25): the aggregator knows the agents'
// gossip addresses from their PeerViews (each lists its peers with their
// addresses), so an agent started without seeds of its own (no
// --gossip-seeds, no --gossip-seed-dns) can join through those it gets in
// its hello reply.
//
// A hello must not cost a pass over every node's view: after a failover
// thousands of agents say hello at once, and a pass over N views of N
// members each per hello is quadratic in the fleet. The candidates are
// kept instead in a small pool that each PeerView refreshes as it arrives
// (at a cost in the view's size, which applying it pays anyway), and a
// hello picks among them.

// gossipSeedCount is how many addresses a HelloAck carries at most: one
// that answers is enough to join; a few cover members gone since.
const gossipSeedCount = 3

// gossipSeedMaxAge is how old a PeerView may be and still give seeds: as
// long as the aggregator counts a peer's report for node conditions
// (gossip.ConditionConfig.ReportMaxAge's default).
const gossipSeedMaxAge = 30 * time.Second

// seedPoolSize bounds the candidates kept: as many as an agent keeps from
// hello replies (gossip.MaxAddedSeeds).
const seedPoolSize = 16

// seedsPerView is how many members of one PeerView enter the pool at most,
// chosen at random among those it reports alive: the pool then holds
// members reported by the last several views, spread over the fleet, not
// the first members of the last view.
const seedsPerView = 2

// seedPool holds up to seedPoolSize gossip addresses of agents that a
// recent PeerView shows alive. Safe for concurrent use; its lock is taken
// under no other and takes none.
type seedPool struct {
	mu      sync.Mutex
	entries []seedEntry
	byName  map[string]int // name → index in entries
	next    int            // the slot a full pool replaces next
}

type seedEntry struct {
	name, addr string
	at         time.Time // arrival of the view that last reported it
}

// observe takes the PeerView observer sent, arrived at: members of the
// pool that it reports get its address when alive (a member back with a new
// address) and leave the pool otherwise, unless the pool knows of a newer
// report; then up to seedsPerView members it reports alive, at random,
// enter the pool, replacing entries in turn once it is full. A member
// that is the observer itself, unnamed, or whose address is not host:port
// (nothing an agent could join) is passed over. O(members of the view).
func (p *seedPool) observe(observer string, view *vigilv1.PeerView, at time.Time) {
	var pick [seedsPerView]*vigilv1.PeerStatus
	seen := 0
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range view.GetPeers() {
		name := m.GetName()
		if name == "" || name == observer {
			continue
		}
		alive := m.GetState() == vigilv1.PeerState_PEER_STATE_ALIVE
		if alive {
			if _, _, err := net.SplitHostPort(m.GetAddress()); err != nil {
				alive = false
			}
		}
		if i, ok := p.byName[name]; ok && !at.Before(p.entries[i].at) {
			if alive {
				p.entries[i].addr, p.entries[i].at = m.GetAddress(), at
			} else {
				p.remove(i)
			}
		}
		if !alive {
			continue
		}
		// Reservoir sampling: each alive member ends up in pick with the
		// same chance, in one pass.
		if seen < seedsPerView {
			pick[seen] = m
		} else if j := rand.IntN(seen + 1); j < seedsPerView {
			pick[j] = m
		}
		seen++
	}
	for _, m := range pick[:min(seen, seedsPerView)] {
		p.add(seedEntry{name: m.GetName(), addr: m.GetAddress(), at: at})
	}
}

// add puts e in the pool (replacing the entry of its name, or one in turn
// when full); p.mu is held.
func (p *seedPool) add(e seedEntry) {
	if p.byName == nil {
		p.byName = make(map[string]int, seedPoolSize)
	}
	if i, ok := p.byName[e.name]; ok {
		if !e.at.Before(p.entries[i].at) {
			p.entries[i] = e
		}
		return
	}
	if len(p.entries) < seedPoolSize {
		p.byName[e.name] = len(p.entries)
		p.entries = append(p.entries, e)
		return
	}
	// Full: the slots are replaced in turn, so an entry stays for about
	// seedPoolSize/seedsPerView views. (Not by age: every view refreshes
	// the entries it reports alive, so most have the same.)
	i := p.next % len(p.entries)
	p.next = i + 1
	delete(p.byName, p.entries[i].name)
	p.entries[i] = e
	p.byName[e.name] = i
}

// remove drops entry i; p.mu is held.
func (p *seedPool) remove(i int) {
	delete(p.byName, p.entries[i].name)
	last := len(p.entries) - 1
	if i != last {
		p.entries[i] = p.entries[last]
		p.byName[p.entries[i].name] = i
	}
	p.entries = p.entries[:last]
}

// pick returns up to gossipSeedCount distinct addresses of the pool in a
// random order, none of exclude's and none reported longer than
// gossipSeedMaxAge before now. O(seedPoolSize).
func (p *seedPool) pick(exclude string, now time.Time) []string {
	var cand [seedPoolSize]string
	n := 0
	p.mu.Lock()
	for _, e := range p.entries {
		if e.name != exclude && now.Sub(e.at) <= gossipSeedMaxAge {
			cand[n] = e.addr
			n++
		}
	}
	p.mu.Unlock()
	if n == 0 {
		return nil
	}
	out := make([]string, 0, min(n, gossipSeedCount))
	// A partial Fisher-Yates shuffle: the first picks are uniform.
	for i := 0; i < n && len(out) < gossipSeedCount; i++ {
		j := i + rand.IntN(n-i)
		cand[i], cand[j] = cand[j], cand[i]
		dup := false
		for _, a := range out {
			dup = dup || a == cand[i]
		}
		if !dup {
			out = append(out, cand[i])
		}
	}
	return out
}

// gossipSeeds returns up to gossipSeedCount gossip addresses ("host:port")
// of agents other than exclude that a recent PeerView shows alive, in a
// random order (so that joins spread over the fleet), from the pool the
// views keep. When observers disagree on a member's address (a node back
// with a new one), the most recent view wins.
func (f *Fleet) gossipSeeds(exclude string, now time.Time) []string {
	return f.seeds.pick(exclude, now)
}
