package gossip

import (
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// cross asks the child to cross-check addr with k peers.
func (c *child) cross(t *testing.T, addr string, k int) CrossResult {
	t.Helper()
	if _, err := io.WriteString(c.stdin, fmt.Sprintf("cross %s %d\n", addr, k)); err != nil {
		t.Fatalf("%s: %v", c.name, err)
	}
	select {
	case r := <-c.crossed:
		return r
	case <-time.After(15 * time.Second):
		t.Fatalf("%s did not answer a cross-check request within 15s", c.name)
		return CrossResult{}
	}
}

// TestNetnsCrossCheck: three members in their namespaces and a "pod" (a
// TCP listener in a namespace of its own on the same bridge). The first
// member's path to the pod is cut (a blackhole route to it in its
// namespace): its own connection fails, its two peers reach the pod, so
// the verdict is "node" (this node's network is broken). With the pod's
// listener closed, the peers answer that they cannot reach it either:
// "pod".
func TestNetnsCrossCheck(t *testing.T) {
	t.Parallel()
	c := newNetnsCluster(t, 3)
	c.waitAllAlive(t)

	podAddr := netnsSubnet + ".60"
	podNS := c.f.Plug(podAddr, 24).NS
	var lis net.Listener
	if err := podNS.Do(func() error {
		var err error
		lis, err = net.Listen("tcp", podAddr+":8080")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	target := podAddr + ":8080"
	// Precondition: every member reaches the pod (its port on the bridge
	// is new: neighbours are resolved on the first packets).
	for _, m := range c.children {
		waitFor(t, 20*time.Second, m.name+" reaches the pod", func() bool {
			return m.ns.Do(func() error {
				conn, err := net.DialTimeout("tcp", target, time.Second)
				if err == nil {
					conn.Close()
				}
				return err
			}) == nil
		})
	}

	asker := c.children[0]
	h := asker.ns.Handle(t)
	_, dst, _ := net.ParseCIDR(podAddr + "/32")
	if err := h.RouteAdd(&netlink.Route{Dst: dst, Type: unix.RTN_BLACKHOLE}); err != nil {
		t.Fatalf("blackhole route in %s: %v", asker.ns.Name, err)
	}
	// The asker's own probe fails (as the agent's health probe would).
	if err := asker.ns.Do(func() error {
		conn, err := net.DialTimeout("tcp", target, time.Second)
		if err == nil {
			conn.Close()
			return errors.New("connected")
		}
		return nil
	}); err != nil {
		t.Fatalf("the asker reaches the pod despite the blackhole route: %v", err)
	}

	r := asker.cross(t, target, 2)
	t.Logf("pod up, the asker's path cut: %+v -> %s", r, r.Verdict())
	if r.Asked != 2 || r.Answered != 2 || r.Reachable != 2 || r.Verdict() != "node" {
		t.Errorf("cross-check with the pod up = %+v (%s), want 2 asked, 2 answered, 2 reached: node", r, r.Verdict())
	}

	lis.Close()
	r = asker.cross(t, target, 2)
	t.Logf("pod down: %+v -> %s", r, r.Verdict())
	if r.Asked != 2 || r.Answered != 2 || r.Reachable != 0 || r.Verdict() != "pod" {
		t.Errorf("cross-check with the pod down = %+v (%s), want 2 asked, 2 answered, 0 reached: pod", r, r.Verdict())
	}
}

// FuzzDecodeCross: a user message from a peer decodes to a request with
// its sender and an IP:port, to an answer, or to an error; never a panic.
func FuzzDecodeCross(f *testing.F) {
	f.Add(encodeCross(crossRequest, crossMsg{ID: 1, From: "m0", Addr: "10.0.0.1:80"}))
	f.Add(encodeCross(crossResponse, crossMsg{ID: 1, OK: true}))
	f.Add(encodeCross(crossResponse, crossMsg{ID: 2, Err: "connection refused"}))
	f.Add([]byte("q{}"))
	f.Add([]byte("x{\"id\":1}"))
	f.Add(encodeCross(crossRequest, crossMsg{ID: 3, From: "m0", Addr: "127.0.0.1:10250"}))
	f.Add(encodeCross(crossRequest, crossMsg{ID: 4, From: "m0", Addr: "[::ffff:169.254.169.254]:80"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		kind, m, err := decodeCross(b)
		if err != nil {
			return
		}
		if len(b) > crossMaxMessage {
			t.Fatalf("a message of %d bytes accepted", len(b))
		}
		if kind == crossRequest {
			if m.From == "" {
				t.Fatal("a request without its sender accepted")
			}
			a, err := net.ResolveTCPAddr("tcp", m.Addr)
			if err != nil {
				t.Fatalf("a request for %q accepted: %v", m.Addr, err)
			}
			if ip := a.IP; ip.IsLoopback() || ip.IsUnspecified() || ip.IsLinkLocalUnicast() || ip.IsMulticast() {
				t.Fatalf("a request for %q accepted: an address of the member's own host", m.Addr)
			}
		}
		// What decodes encodes back to a message that decodes the same.
		k2, m2, err := decodeCross(encodeCross(kind, m))
		if len(encodeCross(kind, m)) <= crossMaxMessage && (err != nil || k2 != kind || m2 != m) {
			t.Fatalf("round trip of %+v: %+v, %v", m, m2, err)
		}
	})
}

// TestCrossTargetRefusesOwnHost: a peer is never asked to reach its own
// host's services (a kubelet on loopback, a cloud's metadata address).
func TestCrossTargetRefusesOwnHost(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:10250", "[::1]:80", "0.0.0.0:80", "169.254.169.254:80", "[::ffff:127.0.0.1]:80", "[fe80::1]:80", "224.0.0.1:80"} {
		if err := crossTarget(addr); err == nil {
			t.Errorf("crossTarget(%q) accepted", addr)
		}
	}
	for _, addr := range []string{"10.0.0.7:8080", "[2001:db8::1]:443"} {
		if err := crossTarget(addr); err != nil {
			t.Errorf("crossTarget(%q): %v", addr, err)
		}
	}
}
