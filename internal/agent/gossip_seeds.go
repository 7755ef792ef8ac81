package agent

import (
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// gossipSeedsFromHello joins the gossip addresses the aggregator's hello
// reply carries (a few agents their peers see alive,
// HelloAck.gossip_seeds) when this agent has no seeds of its own: neither
// --gossip-seeds nor --gossip-seed-dns. So an agent needs only the
// aggregator's address to find its peers. The member tries them at once if
// it has no alive peer, and keeps them for later rejoins; seeds it already
// holds are ignored. Called by the uplink on each HelloAck; it does not
// block.
func (a *Agent) gossipSeedsFromHello(ack *vigilv1.HelloAck) {
	seeds := ack.GetGossipSeeds()
	if a.gm == nil || len(seeds) == 0 || len(a.cfg.Gossip.Seeds) > 0 || a.cfg.Gossip.SeedDNS != "" {
		return
	}
	if err := a.gm.AddSeeds(seeds...); err != nil {
		// The valid ones were added.
		a.log.Warn("gossip: seeds from the aggregator's hello reply", "err", err)
	}
}
