package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/gossip"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// GossipConfig turns on the agent's gossip member (internal/gossip): the
// agents of a fleet watch each other, so that the aggregator can tell a
// dead node (NodeDown) from one that only lost its stream
// (AggregatorPartitioned), and an agent that reaches no one knows it is
// Isolated. The zero value is gossip off.
type GossipConfig struct {
	// Listen is the address and port gossip binds (UDP and TCP), an IP
	// literal: "0.0.0.0:7946". Empty: gossip is off. Port 0 takes an
	// ephemeral port (tests).
	Listen string
	// Advertise is the address peers should use to reach this agent (the
	// node's address); empty: the bind address, or the first private
	// address when that is 0.0.0.0.
	Advertise string
	// Seeds are peers to join, "host:port" or "host" (the Listen port).
	Seeds []string
	// SeedDNS is a DNS name ("name" or "name:port") whose addresses are
	// seeds: the agents' headless Service.
	SeedDNS string
	// KeyFile holds the gossip encryption keys (one base64 AES key per
	// line, the first one used to encrypt; see internal/gossip). Required
	// unless Insecure.
	KeyFile string
	// Insecure allows gossip without encryption: anyone who can reach the
	// port can join and forge views (test clusters only).
	Insecure bool

	// CrossCheckPeers, when above 0, turns on "beyond any peer" (opt-in):
	// before a failed network probe makes a container unhealthy, the
	// health code asks this many peers to reach the same address
	// (GossipCrossCheck) and reports whether the pod or this node's
	// network is broken. 0: off.
	CrossCheckPeers int

	// Tune, when set, adjusts the member's configuration before it is
	// built (tests: shorter timers). nil: the gossip package's defaults.
	Tune func(*gossip.Config)
}

// enabled reports whether gossip is on.
func (g GossipConfig) enabled() bool { return g.Listen != "" }

// validate says what is wrong with an enabled gossip config.
func (g GossipConfig) validate() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if _, _, err := gossipBind(g.Listen); err != nil {
		bad("gossip listen address %q: %v", g.Listen, err)
	}
	if g.Advertise != "" {
		if _, err := netip.ParseAddr(g.Advertise); err != nil {
			bad("gossip advertise address %q: want an IP address: %v", g.Advertise, err)
		}
	}
	if g.CrossCheckPeers < 0 {
		bad("gossip cross-check peers %d: want 0 (off) or more", g.CrossCheckPeers)
	}
	switch {
	case g.KeyFile == "" && !g.Insecure:
		bad("gossip needs an encryption key file (or insecure gossip, allowed explicitly, for a test cluster)")
	case g.KeyFile != "" && g.Insecure:
		bad("gossip has both a key file and insecure set: choose one")
	}
	return errs
}

// gossipBind splits "IP:port" into the member's bind address and port
// (-1 for port 0: an ephemeral port).
func gossipBind(listen string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return "", 0, err
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return "", 0, fmt.Errorf("want an IP address, not %q", host)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("port %q is not a number from 0 to 65535", portStr)
	}
	if port == 0 {
		port = -1
	}
	return host, port, nil
}

// newGossip builds the member for cfg.Gossip (which is enabled and valid).
func newGossip(cfg Config) (*gossip.Member, error) {
	host, port, err := gossipBind(cfg.Gossip.Listen)
	if err != nil {
		return nil, err
	}
	gc := gossip.Config{
		Name:          cfg.NodeName,
		AgentVersion:  cfg.Version,
		BindAddr:      host,
		BindPort:      port,
		AdvertiseAddr: cfg.Gossip.Advertise,
		Seeds:         cfg.Gossip.Seeds,
		SeedDNS:       cfg.Gossip.SeedDNS,
		KeyFile:       cfg.Gossip.KeyFile,
		Logger:        cfg.Logger, // the member names itself
	}
	if cfg.Gossip.Tune != nil {
		cfg.Gossip.Tune(&gc)
	}
	return gossip.New(gc)
}

// gossipPoll is how often the gossip loop looks at the stream's and
// containerd's state (neither tells of its changes) and, while the stream
// is down, probes peers to tell Isolated from AggregatorPartitioned; also
// the least time between two reports of the view that changed.
const gossipPoll = time.Second

// gossipStartGrace is how long after start a stream that is not up yet is
// taken for one still connecting, not for one down: the agent judges its
// own condition (Isolated or not) only after it.
const gossipStartGrace = 5 * time.Second

// gossipLoop owns the agent's side of gossip, beside the member's own Run:
// it keeps the member's metadata (stream up, containerd's health) current,
// reports the member's view upstream, and decides whether the agent is
// Isolated (stream down and no peer answering), which makes it refuse
// remote commands (onCommand). It runs until ctx ends.
//
// The view is sent as a PeerView when it changed (at most once per
// gossipPoll: the uplink's buffer keeps only the newest unsent PeerView
// anyway) and at least every SampleInterval, changed or not: the
// aggregator counts a peer's report for 30 s only
// (gossip.ConditionConfig.ReportMaxAge), and a node whose stream drops is
// judged on the reports its peers sent most recently.
func (a *Agent) gossipLoop(ctx context.Context) error {
	select {
	case <-a.gm.Ready():
	case <-ctx.Done():
		return nil
	}
	poll := time.NewTicker(gossipPoll)
	defer poll.Stop()
	var (
		started  = a.now()
		changed  = true
		lastSent time.Time
		iso      gossip.Isolation
		cond     = gossip.ConditionUnknown
	)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.gm.Changed():
			changed = true
		case <-poll.C:
		}
		now := a.now()
		streamUp := a.up != nil && a.up.Connected()
		health := gossip.HealthUnavailable
		if a.rt.Available() {
			health = gossip.HealthOK
		}
		a.gm.SetLocalState(gossip.LocalState{StreamUp: streamUp, Containerd: health})
		if a.up == nil {
			continue // standalone: nobody to report to, no remote commands to refuse
		}

		next, reason := gossip.Healthy, "stream up"
		switch {
		case streamUp:
		case now.Sub(started) < gossipStartGrace && cond == gossip.ConditionUnknown:
			next, reason = cond, "stream connecting"
		default:
			next, reason = gossip.Local(false, a.gm.Views(), a.gm.ProbePeers(3))
		}
		if next != cond {
			a.log.Info("gossip: this node's own condition changed", "from", cond.String(), "to", next.String(), "reason", reason)
			cond = next
		}
		if iso.Observe(next, now) {
			changed = true
			if iso.Ongoing() {
				a.log.Warn("isolated: neither the aggregator nor any gossip peer answers; remote commands are refused until one does", "reason", reason)
			} else {
				a.log.Info("no longer isolated; remote commands are accepted again", "isolated_for", iso.Until.Sub(iso.Since).Round(time.Second))
			}
		}
		if iso.Ongoing() {
			r := reason
			a.isolated.Store(&r)
		} else {
			a.isolated.Store(nil)
		}
		a.gm.SetIsolated(iso.Ongoing())

		if (changed && now.Sub(lastSent) >= gossipPoll) || now.Sub(lastSent) >= a.cfg.SampleInterval {
			if err := a.up.SendPeerView(peerViewProto(a.cfg.NodeName, a.gm.Views(), iso)); err != nil {
				a.log.Warn("gossip view not sent upstream", "err", err)
			}
			changed, lastSent = false, now
		}
	}
}

// ReloadGossipKeys reads the gossip key file again at once (the member
// also does every 10 s); the main calls it on SIGHUP. A file that cannot
// be read or parsed changes nothing and its error is returned. Without
// gossip, or without a key file, it does nothing.
func (a *Agent) ReloadGossipKeys() error {
	if a.gm == nil {
		return nil
	}
	return a.gm.ReloadKeys()
}

// isolation returns why the agent is isolated, "" when it is not.
func (a *Agent) isolation() string {
	if r := a.isolated.Load(); r != nil {
		return *r
	}
	return ""
}

// peerViewProto is the member's view as the protocol carries it.
func peerViewProto(observer string, views []gossip.View, iso gossip.Isolation) *vigilv1.PeerView {
	pv := &vigilv1.PeerView{Observer: observer, Peers: make([]*vigilv1.PeerStatus, 0, len(views))}
	for _, v := range views {
		p := &vigilv1.PeerStatus{Name: v.Name, State: peerStateProto(v.State)}
		if v.Addr.IsValid() {
			p.Address = v.Addr.String()
		}
		if !v.Since.IsZero() {
			p.Since = timestamppb.New(v.Since)
		}
		pv.Peers = append(pv.Peers, p)
	}
	if !iso.Since.IsZero() {
		pv.IsolatedSince = timestamppb.New(iso.Since)
		if !iso.Until.IsZero() {
			pv.IsolatedUntil = timestamppb.New(iso.Until)
		}
	}
	return pv
}

// peerStateProto maps a gossip state onto the protocol's.
func peerStateProto(s gossip.State) vigilv1.PeerState {
	switch s {
	case gossip.StateAlive:
		return vigilv1.PeerState_PEER_STATE_ALIVE
	case gossip.StateSuspect:
		return vigilv1.PeerState_PEER_STATE_SUSPECT
	case gossip.StateDead:
		return vigilv1.PeerState_PEER_STATE_DEAD
	case gossip.StateLeft:
		return vigilv1.PeerState_PEER_STATE_LEFT
	}
	return vigilv1.PeerState_PEER_STATE_UNSPECIFIED
}
