package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

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
// policy, as without the cross-check. Upstream, "blamed" is unhealthy with
// its failure blamed on the node's network (Health.blame, which the
// aggregator's series and remediation read); the blame goes when its task
// ends, and when a recheck no longer blames the node (its listener closed:
// the peer is refused too), and it is restarted then.
func TestCrossCheckBlamesTheNode(t *testing.T) {
	ip := hostAddr(t)
	key := gossipKeyFile(t)
	addrs := []string{freeAddr(t), freeAddr(t)}
	hs := make([]*harness, 2)
	for i := range hs {
		hs[i] = newHarness(t)
		hs[i].hook = func(a *Agent) { a.crossRecheck = 2 * time.Second }
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
	tasks := map[string]client.Task{}
	for id, target := range map[string]string{"blamed": lis.Addr().String(), "broken": closedAddr} {
		_, tasks[id] = h.env.RunContainer(t, testenv.ContainerSpec{Namespace: h.ns, ID: id, Image: img, Args: []string{"sleep"},
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
	// Upstream, the container is unhealthy with the failure blamed on the
	// node's network (what the aggregator's series and remediation read).
	if hl := blamed.GetContainer().GetHealth(); hl.GetStatus() != vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY || hl.GetBlame() != vigilv1.HealthBlame_HEALTH_BLAME_NODE_NETWORK {
		t.Errorf("node verdict event's health: %v %v, want UNHEALTHY blamed on NODE_NETWORK", hl.GetStatus(), hl.GetBlame())
	}
	h.waitFor("broken", "restarted (verdict pod)", 60*time.Second, restarted)
	for _, r := range h.eventsFor("broken") {
		if r.ev.GetContainer().GetHealth().GetBlame() != vigilv1.HealthBlame_HEALTH_BLAME_UNSPECIFIED {
			t.Errorf("broken: %v %q sent upstream blamed on the node's network (verdict pod)", r.ev.GetType(), r.ev.GetMessage())
		}
	}
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

	// Its task ends (killed, as an operator's ctr task kill): the verdict
	// was about that task's probe. The exit and the restart go upstream
	// without the blame; the new task's probe is judged afresh.
	if err := tasks["blamed"].Kill(namespaces.WithNamespace(context.Background(), h.ns), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	h.waitFor("blamed", "restarted after the kill", 60*time.Second, restarted)
	after := false
	for _, r := range h.eventsFor("blamed") {
		if r.ev.GetType() == vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED {
			after = true
		}
		if !after {
			continue
		}
		if r.ev.GetType() == vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_HEALTH_CHANGED && strings.Contains(r.ev.GetMessage(), "this node's network is broken") {
			break // the new task blamed again
		}
		if b := r.ev.GetContainer().GetHealth().GetBlame(); b != vigilv1.HealthBlame_HEALTH_BLAME_UNSPECIFIED {
			t.Errorf("blamed, after its task ended: %v %q sent upstream with blame %v", r.ev.GetType(), r.ev.GetMessage(), b)
		}
	}
	if !after {
		t.Errorf("blamed: no exit sent upstream after the kill:\n%s", h.describe("blamed"))
	}

	// The new task's probe fails and is blamed again (rechecked every 2 s
	// here); then its listener closes: the next recheck's peer is refused
	// too (verdict pod), the blame goes upstream cleared, and the policy
	// restarts it.
	since := func(pred func(*vigilv1.ContainerEvent) bool, from func(*vigilv1.ContainerEvent) bool) *vigilv1.ContainerEvent {
		seen := false
		for _, r := range h.eventsFor("blamed") {
			if !seen {
				seen = from(r.ev)
				continue
			}
			if pred(r.ev) {
				return r.ev
			}
		}
		return nil
	}
	isBlame := func(ev *vigilv1.ContainerEvent) bool {
		return ev.GetType() == vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_HEALTH_CHANGED && strings.Contains(ev.GetMessage(), "this node's network is broken")
	}
	waitUntil(t, 60*time.Second, "the new task's failed probe blamed on the node again", func() bool { return since(isBlame, restarted) != nil })
	lis.Close()
	isCleared := func(ev *vigilv1.ContainerEvent) bool {
		return ev.GetType() == vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_HEALTH_CHANGED && strings.Contains(ev.GetMessage(), "no longer blamed on this node's network")
	}
	var cleared *vigilv1.ContainerEvent
	waitUntil(t, 60*time.Second, "a recheck no longer blames the node", func() bool { cleared = since(isCleared, isBlame); return cleared != nil })
	if hl := cleared.GetContainer().GetHealth(); hl.GetStatus() != vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY || hl.GetBlame() != vigilv1.HealthBlame_HEALTH_BLAME_UNSPECIFIED {
		t.Errorf("cleared: health sent upstream %v %v, want UNHEALTHY, not blamed", hl.GetStatus(), hl.GetBlame())
	}
	if !strings.Contains(cleared.GetMessage(), "verdict pod") {
		t.Errorf("cleared: %q, want verdict pod", cleared.GetMessage())
	}
	waitUntil(t, 60*time.Second, "restarted once the failure is the container's", func() bool {
		return since(restarted, isCleared) != nil
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
