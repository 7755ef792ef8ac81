package agent

import (
	"context"

	"github.com/vigilhq/vigil/internal/gossip"
)

// GossipCrossCheck is the hook of "beyond any peer" (issue 25) for the
// health decision: call it when a network probe of a container (TCP or
// HTTP to the pod's IP:port) failed, before declaring the container
// unhealthy. It asks GossipConfig.CrossCheckPeers peers to open a TCP
// connection to addr from their side (gossip.Member.CrossCheck, encrypted
// with the gossip key) and returns their answers; on reports
// whether it asked anyone (gossip on, the option set, a peer alive).
//
// Reading the result (CrossResult.Verdict): "node" (a peer reaches the
// pod) means this node's network is what is broken: the container should
// not be restarted for it, and the probe's failure reported as the
// node's; "pod" (peers answered, none reaches it) confirms the failure;
// "unknown" (no peer answered) leaves the decision to the probe alone. It
// blocks for at most gossip.CrossProbeTimeout plus a second.
func (a *Agent) GossipCrossCheck(ctx context.Context, addr string) (res gossip.CrossResult, on bool) {
	k := a.cfg.Gossip.CrossCheckPeers
	if a.gm == nil || k <= 0 {
		return res, false
	}
	res, err := a.gm.CrossCheck(ctx, addr, k)
	if err != nil {
		a.log.Debug("gossip: cross-check", "addr", addr, "err", err)
		return res, false
	}
	if res.Asked == 0 {
		return res, false
	}
	a.log.Info("gossip: peers cross-checked a failed probe", "addr", addr, "asked", res.Asked,
		"answered", res.Answered, "reached", res.Reachable, "verdict", res.Verdict())
	return res, true
}
