package gossip

import (
	"math"
	"time"
)

// The failure detector's defaults, for a LAN (one data centre, RTT well
// under 100 ms), chosen for two goals: a dead node declared dead by its
// peers within 10 s at 50 members, and a member that stops answering for
// less than the suspicion timeout (a SIGSTOP, a long GC or I/O stall, a
// live migration) never declared dead.
//
// memberlist's detector (SWIM with Lifeguard): each member probes one peer
// per ProbeInterval (round robin over a shuffled list), waits ProbeTimeout
// for the ack, then asks IndirectChecks others to probe it (and tries TCP)
// until the end of the interval. A peer that none of them reached becomes
// suspect, and a suspicion timer starts. The timer is
//
//	min = SuspicionMult × max(1, log10(n)) × ProbeInterval
//	max = SuspicionMaxTimeoutMult × min
//
// (memberlist's config.go says log(N+1); suspicion.go uses
// max(1, log10(n)), as here). The timer starts at max and shrinks towards
// min, logarithmically, as k = SuspicionMult-2 other members independently
// confirm the suspicion (k = 0, straight to min, when n-2 < k). If the
// suspect refutes (it receives the suspicion and answers with a higher
// incarnation) before the timer fires, it stays alive; otherwise it is
// declared dead and that is gossiped to all (each receiver marks it dead at
// once, in about GossipInterval × log(n) rounds).
//
// With ProbeInterval 1 s, ProbeTimeout 500 ms, SuspicionMult 3 and
// SuspicionMaxTimeoutMult 6 (SuspicionTimeouts computes these):
//
//	members  log10(n)  k  min (confirmed)  max (unconfirmed)
//	      5    0.70→1  1      3.0 s           18.0 s
//	     20    1.30    1      3.9 s           23.4 s
//	     50    1.70    1      5.1 s           30.6 s
//	  1,000    3.00    1      9.0 s           54.0 s
//
// Time to "dead" after a kill at 50 members: the first probe of the dead
// peer comes within about a second (49 members each probe one peer a
// second), it is suspect at the end of that probe interval (≤ 1 s more),
// one confirmation arrives within a few probe rounds, and the timer fires at
// min: about 1-2 s + 5.1 s ≈ 7 s, then well under a second of gossip. That
// leaves about 3 s of the 10 s for the agents' reports to reach the
// aggregator. memberlist's LAN default SuspicionMult 4 gives 6.8 s of
// timer at 50 members (8-9 s in all): too little margin. SuspicionMult 2
// would make k = 0 (no confirmation asked for) and 3.4 s: one member's
// bad network alone could then declare others dead.
//
// A stopped member is safe while it is stopped for less than min (3-5 s at
// 5-50 members): the timer cannot fire earlier, and once the member runs
// again it reads the suspicion and refutes within a gossip round. Between
// min and max it is safe only while too few peers have confirmed. The
// member's own stalls are further covered by Lifeguard's awareness (its
// probe interval and timeouts stretch up to 8× when it misses acks).
//
// Measured (docs/benchmarks/gossip.md, BenchmarkGossip, a shared 2-core
// machine): a killed member seen dead by two peers in 4.8 s at 5 members,
// 5.3 s at 20, 6.1-7.9 s at 50 (memberlist's SuspicionMult 4: 8.5-11.4 s
// in the same runs). At 1,000 members the same arithmetic gives about
// 10-11 s: over the goal, which is set at 50.
//
// Bandwidth stays small: a probe round is a ping and an ack (about 100
// bytes each with encryption), GossipNodes 3 gossip packets every
// GossipInterval 200 ms only when there is something to gossip, and a
// push/pull full-state sync with one peer every PushPullInterval 30 s
// (about 100 bytes per member of state each way): 1.5-2.5 kbit/s per
// member measured at 5 to 50 members, about 12 kbit/s estimated at 1,000.
const (
	DefaultProbeInterval           = time.Second
	DefaultProbeTimeout            = 500 * time.Millisecond
	DefaultSuspicionMult           = 3
	DefaultSuspicionMaxTimeoutMult = 6
)

// Tunables are the failure detector's parameters that the suspicion
// timeouts depend on.
type Tunables struct {
	ProbeInterval           time.Duration
	SuspicionMult           int
	SuspicionMaxTimeoutMult int
}

// DefaultTunables are the defaults above.
var DefaultTunables = Tunables{
	ProbeInterval:           DefaultProbeInterval,
	SuspicionMult:           DefaultSuspicionMult,
	SuspicionMaxTimeoutMult: DefaultSuspicionMaxTimeoutMult,
}

func (m *Member) tunables() Tunables {
	return Tunables{
		ProbeInterval:           m.cfg.ProbeInterval,
		SuspicionMult:           m.cfg.SuspicionMult,
		SuspicionMaxTimeoutMult: m.cfg.SuspicionMaxTimeoutMult,
	}
}

// Suspicion is memberlist's suspicion timer for a cluster size: Min once
// K independent confirmations have arrived, Max without any.
type Suspicion struct {
	Min, Max time.Duration
	K        int
}

// SuspicionTimeouts computes memberlist's suspicion timer at n members, as
// its suspectNode and suspicionTimeout do.
func SuspicionTimeouts(t Tunables, n int) Suspicion {
	scale := math.Max(1, math.Log10(math.Max(1, float64(n))))
	minT := time.Duration(t.SuspicionMult) * time.Duration(scale*1000) * t.ProbeInterval / 1000
	k := t.SuspicionMult - 2
	if n-2 < k {
		k = 0
	}
	return Suspicion{Min: minT, Max: time.Duration(t.SuspicionMaxTimeoutMult) * minT, K: k}
}
