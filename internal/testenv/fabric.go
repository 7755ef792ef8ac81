package testenv

import (
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Fabric is a test's own network: a bridge (br0) in a "switch" namespace,
// and namespaces plugged into it, each with eth0 on the bridge. Tests of
// several hosts (gossip members, agents and an aggregator) run their
// processes in the ports' namespaces and cut links or routes to make
// partitions. Everything goes with the test.
type Fabric struct {
	tb testing.TB
	sw *NetNS // holds br0
}

// Port is a namespace plugged into a Fabric: eth0 in NS holds Addr, its
// veth partner HostVeth is a port of br0 in the switch namespace.
type Port struct {
	NS       *NetNS
	HostVeth string
	Addr     string
}

var fabricVeths atomic.Int64

// NewFabric makes the switch namespace and its bridge.
func NewFabric(tb testing.TB) *Fabric {
	tb.Helper()
	Require(tb)
	f := &Fabric{tb: tb, sw: NewNetNS(tb)}
	h := f.sw.Handle(tb)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := h.LinkAdd(br); err != nil {
		tb.Fatalf("bridge: %v", err)
	}
	if err := h.LinkSetUp(br); err != nil {
		tb.Fatal(err)
	}
	return f
}

// Handle is a netlink handle inside n, closed with the test.
func (n *NetNS) Handle(tb testing.TB) *netlink.Handle {
	tb.Helper()
	nsh, err := netns.GetFromPath(n.Path)
	if err != nil {
		tb.Fatal(err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(h.Close)
	return h
}

// Plug makes a namespace with eth0 on the bridge holding addr/prefix.
func (f *Fabric) Plug(addr string, prefix int) *Port {
	tb := f.tb
	tb.Helper()
	ns := NewNetNS(tb)
	hostVeth := fmt.Sprintf("vgf%d-%d", os.Getpid()%100000, fabricVeths.Add(1))
	peer := hostVeth + "p"
	// The pair is made inside the switch namespace with its partner put
	// straight into ns: the host's namespace never sees it (tests of the
	// host's links run in parallel).
	swh, nsh := f.sw.Handle(tb), ns.Handle(tb)
	target, err := netns.GetFromPath(ns.Path)
	if err != nil {
		tb.Fatal(err)
	}
	err = swh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostVeth}, PeerName: peer, PeerNamespace: netlink.NsFd(int(target))})
	target.Close()
	if err != nil {
		tb.Fatalf("veth %s: %v", hostVeth, err)
	}
	br, err := swh.LinkByName("br0")
	if err != nil {
		tb.Fatal(err)
	}
	hv, err := swh.LinkByName(hostVeth)
	if err == nil {
		err = swh.LinkSetMaster(hv, br)
	}
	if err == nil {
		err = swh.LinkSetUp(hv)
	}
	if err != nil {
		tb.Fatalf("%s on the bridge: %v", hostVeth, err)
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
		tb.Fatalf("eth0 in %s: %v", ns.Name, err)
	}
	return &Port{NS: ns, HostVeth: hostVeth, Addr: addr}
}

// Route adds (or, with del, removes) the on-link route to dst (a CIDR) via
// eth0 in p's namespace.
func (f *Fabric) Route(p *Port, dst string, del bool) {
	f.tb.Helper()
	h := p.NS.Handle(f.tb)
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		f.tb.Fatal(err)
	}
	_, ipnet, err := net.ParseCIDR(dst)
	if err != nil {
		f.tb.Fatal(err)
	}
	r := &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipnet, Scope: netlink.SCOPE_LINK}
	if del {
		err = h.RouteDel(r)
	} else {
		err = h.RouteAdd(r)
	}
	if err != nil {
		f.tb.Fatalf("route %s (delete %v) in %s: %v", dst, del, p.NS.Name, err)
	}
}

// SetLink sets p's port on the bridge up or down: down cuts p off from
// every other port.
func (f *Fabric) SetLink(p *Port, up bool) {
	f.tb.Helper()
	h := f.sw.Handle(f.tb)
	l, err := h.LinkByName(p.HostVeth)
	if err == nil {
		if up {
			err = h.LinkSetUp(l)
		} else {
			err = h.LinkSetDown(l)
		}
	}
	if err != nil {
		f.tb.Fatalf("set %s up=%v: %v", p.HostVeth, up, err)
	}
}
