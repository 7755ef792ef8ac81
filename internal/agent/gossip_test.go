package agent

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/gossip"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

func TestGossipConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		g    GossipConfig
		want string // "" when valid
	}{
		{GossipConfig{Listen: "0.0.0.0:7946", KeyFile: "k"}, ""},
		{GossipConfig{Listen: "127.0.0.1:0", Insecure: true}, ""},
		{GossipConfig{Listen: "[::1]:7946", Advertise: "::1", KeyFile: "k"}, ""},
		{GossipConfig{Listen: "0.0.0.0:7946"}, "gossip needs an encryption key file"},
		{GossipConfig{Listen: "0.0.0.0:7946", KeyFile: "k", Insecure: true}, "both a key file and insecure"},
		{GossipConfig{Listen: "node-a:7946", KeyFile: "k"}, `gossip listen address "node-a:7946": want an IP address`},
		{GossipConfig{Listen: "0.0.0.0:70000", KeyFile: "k"}, `port "70000" is not a number from 0 to 65535`},
		{GossipConfig{Listen: "0.0.0.0", KeyFile: "k"}, `gossip listen address "0.0.0.0"`},
		{GossipConfig{Listen: "0.0.0.0:7946", KeyFile: "k", Advertise: "node-a"}, `gossip advertise address "node-a": want an IP address`},
	} {
		errs := tc.g.validate()
		var got []string
		for _, e := range errs {
			got = append(got, e.Error())
		}
		switch msg := strings.Join(got, "; "); {
		case tc.want == "" && msg != "":
			t.Errorf("%+v: %s, want valid", tc.g, msg)
		case tc.want != "" && !strings.Contains(msg, tc.want):
			t.Errorf("%+v: %q, want it to say %q", tc.g, msg, tc.want)
		case strings.Contains(msg, "--"):
			t.Errorf("%+v: %q names a flag (the main does)", tc.g, msg)
		}
	}
	if _, port, _ := gossipBind("127.0.0.1:0"); port != -1 {
		t.Errorf("port 0 is the member's %d, want -1 (ephemeral)", port)
	}
}

func TestPeerViewProto(t *testing.T) {
	since := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	views := []gossip.View{
		{Name: "a", Addr: netip.MustParseAddrPort("10.0.0.1:7946"), State: gossip.StateAlive, Since: since},
		{Name: "b", State: gossip.StateSuspect, Since: since},
		{Name: "c", State: gossip.StateDead},
		{Name: "d", State: gossip.StateLeft},
		{Name: "e"},
	}
	pv := peerViewProto("me", views, gossip.Isolation{Since: since, Until: since.Add(time.Minute)})
	want := []vigilv1.PeerState{vigilv1.PeerState_PEER_STATE_ALIVE, vigilv1.PeerState_PEER_STATE_SUSPECT,
		vigilv1.PeerState_PEER_STATE_DEAD, vigilv1.PeerState_PEER_STATE_LEFT, vigilv1.PeerState_PEER_STATE_UNSPECIFIED}
	if pv.GetObserver() != "me" || len(pv.GetPeers()) != len(want) {
		t.Fatalf("view = %v", pv)
	}
	for i, p := range pv.GetPeers() {
		if p.GetName() != views[i].Name || p.GetState() != want[i] {
			t.Errorf("peer %d = %v, want %s %v", i, p, views[i].Name, want[i])
		}
	}
	if a := pv.GetPeers()[0]; a.GetAddress() != "10.0.0.1:7946" || !a.GetSince().AsTime().Equal(since) {
		t.Errorf("peer a = %v", a)
	}
	if c := pv.GetPeers()[2]; c.GetAddress() != "" || c.GetSince() != nil {
		t.Errorf("peer c has no address nor since, got %v", c)
	}
	if !pv.GetIsolatedSince().AsTime().Equal(since) || !pv.GetIsolatedUntil().AsTime().Equal(since.Add(time.Minute)) {
		t.Errorf("isolation = %v .. %v", pv.GetIsolatedSince(), pv.GetIsolatedUntil())
	}
	// An isolation under way has no end; none at all, neither field.
	if pv := peerViewProto("me", nil, gossip.Isolation{Since: since}); pv.GetIsolatedSince() == nil || pv.GetIsolatedUntil() != nil {
		t.Errorf("ongoing isolation = %v", pv)
	}
	if pv := peerViewProto("me", nil, gossip.Isolation{}); pv.GetIsolatedSince() != nil || pv.GetIsolatedUntil() != nil {
		t.Errorf("no isolation = %v", pv)
	}
}
