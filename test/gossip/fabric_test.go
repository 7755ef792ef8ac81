package gossip

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vigilhq/vigil/internal/testenv"
)

// The test's network: a bridge in a "switch" namespace; every agent's
// namespace has eth0 on it with an address of agentNet (a /24 that exists
// only inside these namespaces) and a host route to the aggregator's
// address, aggIP, which the aggregator's namespace holds on its own eth0
// on the same bridge (a /32 and a route back to agentNet). So an agent's
// path to the aggregator is one route that the test can remove, leaving
// its gossip with the other agents untouched.
const (
	agentNet = "10.251.78"
	aggIP    = "10.251.79.1"
)

type fabric struct {
	t  *testing.T
	sw *testenv.NetNS // holds br0
}

func newFabric(t *testing.T) *fabric {
	t.Helper()
	testenv.Require(t)
	f := &fabric{t: t, sw: testenv.NewNetNS(t)}
	h := f.handle(f.sw)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := h.LinkAdd(br); err != nil {
		t.Fatalf("bridge: %v", err)
	}
	if err := h.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	return f
}

// handle is a netlink handle in ns, closed with the test.
func (f *fabric) handle(ns *testenv.NetNS) *netlink.Handle {
	f.t.Helper()
	nsh, err := netns.GetFromPath(ns.Path)
	if err != nil {
		f.t.Fatal(err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(h.Close)
	return h
}

// port is a namespace on the bridge: eth0 in it, its peer (hostVeth) a
// port of br0 in the switch namespace.
type port struct {
	ns       *testenv.NetNS
	hostVeth string
	addr     string
}

var vethSeq int

// plug makes a namespace with eth0 on the bridge holding addr/prefix.
func (f *fabric) plug(addr string, prefix int) *port {
	t := f.t
	t.Helper()
	ns := testenv.NewNetNS(t)
	vethSeq++
	hostVeth := fmt.Sprintf("vgt%d-%d", os.Getpid()%100000, vethSeq)
	peer := hostVeth + "p"
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostVeth}, PeerName: peer}); err != nil {
		t.Fatalf("veth %s: %v", hostVeth, err)
	}
	move := func(link string, to *testenv.NetNS) {
		l, err := netlink.LinkByName(link)
		if err == nil {
			var h netns.NsHandle
			if h, err = netns.GetFromPath(to.Path); err == nil {
				err = netlink.LinkSetNsFd(l, int(h))
				h.Close()
			}
		}
		if err != nil {
			_ = netlink.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostVeth}})
			t.Fatalf("move %s into %s: %v", link, to.Name, err)
		}
	}
	move(hostVeth, f.sw)
	move(peer, ns)
	swh, nsh := f.handle(f.sw), f.handle(ns)
	br, err := swh.LinkByName("br0")
	if err != nil {
		t.Fatal(err)
	}
	hv, err := swh.LinkByName(hostVeth)
	if err == nil {
		err = swh.LinkSetMaster(hv, br)
	}
	if err == nil {
		err = swh.LinkSetUp(hv)
	}
	if err != nil {
		t.Fatalf("%s on the bridge: %v", hostVeth, err)
	}
	in, err := nsh.LinkByName(peer)
	if err == nil {
		err = nsh.LinkSetName(in, "eth0")
	}
	if err == nil {
		var a *netlink.Addr
		if a, err = netlink.ParseAddr(fmt.Sprintf("%s/%d", addr, prefix)); err == nil {
			err = nsh.AddrAdd(in, a)
		}
	}
	if err == nil {
		err = nsh.LinkSetUp(in)
	}
	if err != nil {
		t.Fatalf("eth0 in %s: %v", ns.Name, err)
	}
	return &port{ns: ns, hostVeth: hostVeth, addr: addr}
}

// route adds (or, del, removes) the on-link route to dst via eth0 in p's
// namespace.
func (f *fabric) route(p *port, dst string, del bool) {
	f.t.Helper()
	h := f.handle(p.ns)
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		f.t.Fatal(err)
	}
	_, ipnet, err := net.ParseCIDR(dst)
	if err != nil {
		f.t.Fatal(err)
	}
	r := &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipnet, Scope: netlink.SCOPE_LINK}
	if del {
		err = h.RouteDel(r)
	} else {
		err = h.RouteAdd(r)
	}
	if err != nil {
		f.t.Fatalf("route %s (delete %v) in %s: %v", dst, del, p.ns.Name, err)
	}
}

// setLink sets p's port on the bridge up or down: down cuts p off from
// everyone.
func (f *fabric) setLink(p *port, up bool) {
	f.t.Helper()
	h := f.handle(f.sw)
	l, err := h.LinkByName(p.hostVeth)
	if err == nil {
		if up {
			err = h.LinkSetUp(l)
		} else {
			err = h.LinkSetDown(l)
		}
	}
	if err != nil {
		f.t.Fatalf("set %s up=%v: %v", p.hostVeth, up, err)
	}
}

// client is an HTTP client whose connections are dialed inside ns (the
// test itself stays in the host's namespace, where none of these
// addresses exist).
func client(ns *testenv.NetNS) *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			var err error
			c, err = (&net.Dialer{Timeout: 3 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
}

// get returns the body of url fetched with c, "" on any error.
func get(c *http.Client, url string) string {
	resp, err := c.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return ""
	}
	return string(b)
}

// startIn starts cmd with its network namespace ns: forked from an OS
// thread switched into ns. cmd's Stdout and Stderr must be files (no
// copying goroutines).
func startIn(ns *testenv.NetNS, cmd *exec.Cmd) error {
	return ns.Do(cmd.Start)
}
