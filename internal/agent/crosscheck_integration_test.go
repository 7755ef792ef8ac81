package agent

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/testenv"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// hostAddr is an IPv4 address of this host other than loopback, for a
// listener its peers reach and a container's private namespace does not
// (traffic to it stays in this host's kernel).
func hostAddr(t *testing.T) netip.Addr {
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() {
				return p.Addr()
			}
		}
	}
	testenv.Unavailable(t, "no IPv4 address other than loopback on this host: the cross-check needs one its peer can reach")
	return netip.Addr{}
}

// TestCrossCheckBlamesTheNode (issue 25, end to end): two agents gossip;
// the second cross-checks failed probes with its peer. Two containers of
// the second, each in a private network namespace (no route out), probe a
// pod address by TCP: "blamed" probes a listener the peer reaches, so its
// failure is this node's network (verdict node): no restart decision,
// a health event saying so, counted; "broken" probes a closed port, which
// the peer does not reach either (verdict pod): restarted under its
// policy, as without the cross-check.
func TestCrossCheckBlamesTheNode(t *testing.T) {
	ip := hostAddr(t)
	key := gossipKeyFile(t)
	addrs := []string{freeAddr(t), freeAddr(t)}
	hs := make([]*harness, 2)
	for i := range hs {
		hs[i] = newHarness(t)
		hs[i].start(func(c *Config) {
			c.NodeName = fmt.Sprintf("crossnode-%d", i)
			c.Gossip = GossipConfig{Listen: addrs[i], Advertise: "127.0.0.1", Seeds: []string{addrs[1-i]}, KeyFile: key, CrossCheckPeers: i}
		})
	}
	waitUntil(t, 30*time.Second, "the two members see each other", func() bool {
		for _, h := range hs {
			if v := h.agent.gm.Views(); len(v) != 1 || !v[0].State.Reachable() {
				return false
			}
		}
		return true
	})
	lis, err := net.Listen("tcp", netip.AddrPortFrom(ip, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	closed, err := net.Listen("tcp", netip.AddrPortFrom(ip, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	h := hs[1]
	img := h.env.WorkloadImage(t, h.ns)
	for id, target := range map[string]string{"blamed": lis.Addr().String(), "broken": closedAddr} {
		h.env.RunContainer(t, testenv.ContainerSpec{Namespace: h.ns, ID: id, Image: img, Args: []string{"sleep"},
			Labels: map[string]string{
				"vigil.io/restart-policy":  "always",
				"vigil.io/health-tcp":      target,
				"vigil.io/health-interval": "1s",
				"vigil.io/health-timeout":  "1s",
				"vigil.io/health-retries":  "2",
			}})
	}
	blamed := h.waitFor("blamed", "its failed probe blamed on the node's network", 60*time.Second, func(ev *vigilv1.ContainerEvent) bool {
		return ev.GetType() == vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_HEALTH_CHANGED && strings.Contains(ev.GetMessage(), "this node's network is broken")
	})
	if !strings.Contains(blamed.GetMessage(), "1 of 1 peers reach it") {
		t.Errorf("node verdict event %q, want 1 of 1 peers", blamed.GetMessage())
	}
	h.waitFor("broken", "restarted (verdict pod)", 60*time.Second, restarted)
	// The node verdict was applied before its event: by then a counted
	// failure would have decided a restart.
	h.mu.Lock()
	for _, r := range h.events {
		if r.ev.GetContainer().GetId() == "blamed" && (r.ev.GetType() == vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_RESTART_DECISION || r.ev.GetType() == vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_RESTARTED) {
			t.Errorf("blamed: %v %q: restarted for this node's network", r.ev.GetType(), r.ev.GetMessage())
		}
	}
	h.mu.Unlock()
	if c := h.containerState("blamed"); c.GetRestartCount() != 0 {
		t.Errorf("blamed restart count %d, want 0", c.GetRestartCount())
	}
	waitUntil(t, 10*time.Second, "cross-checks counted by verdict", func() bool {
		node, pod := metricValue(t, h, "vigil_agent_health_cross_checks_total", "verdict", "node"), metricValue(t, h, "vigil_agent_health_cross_checks_total", "verdict", "pod")
		return node >= 1 && pod >= 1
	})
}

// metricValue is the value of the agent's own series name with label
// l=v (-1 when absent).
func metricValue(t *testing.T, h *harness, name, l, v string) float64 {
	mfs, err := h.lastRegistry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == l && lp.GetValue() == v {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return -1
}
