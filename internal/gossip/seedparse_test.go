package gossip

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

func TestSplitSeed(t *testing.T) {
	for _, c := range []struct {
		in   string
		host string
		port int
		bad  bool
	}{
		{in: "10.0.0.1", host: "10.0.0.1", port: 7946},
		{in: "10.0.0.1:8000", host: "10.0.0.1", port: 8000},
		{in: "::1", host: "::1", port: 7946},
		{in: "[::1]:8000", host: "::1", port: 8000},
		{in: "[fe80::1%eth0]:8000", host: "fe80::1%eth0", port: 8000},
		{in: "vigil-agent-gossip.vigil.svc.cluster.local", host: "vigil-agent-gossip.vigil.svc.cluster.local", port: 7946},
		{in: "node-1:7000", host: "node-1", port: 7000},
		{in: "node-1.:7000", host: "node-1.", port: 7000},
		{in: "", bad: true},
		{in: "10.0.0.1:", bad: true},
		{in: "10.0.0.1:0", bad: true},
		{in: "10.0.0.1:65536", bad: true},
		{in: "10.0.0.1:http", bad: true},
		{in: ":7946", bad: true},
		{in: "a:b:c", bad: true},
		{in: "[::1", bad: true},
		{in: "::1]:80", bad: true},
		{in: "node 1", bad: true},
		{in: "node..1", bad: true},
		{in: ".node", bad: true},
		{in: "[node-1]:80", bad: true},
		{in: strings.Repeat("a", 64) + ".example", bad: true},
	} {
		host, port, err := splitSeed(c.in, 7946)
		if c.bad {
			if err == nil {
				t.Errorf("splitSeed(%q) = %q, %d, want an error", c.in, host, port)
			}
			continue
		}
		if err != nil || host != c.host || port != c.port {
			t.Errorf("splitSeed(%q) = %q, %d, %v, want %q, %d", c.in, host, port, err, c.host, c.port)
		}
	}
}

// FuzzSplitSeed: a seed from a flag, the aggregator's hello reply or
// AddSeeds is either refused with an error or split into a host that is an
// IP address or a DNS name and a port from 1 to 65535; host and port
// joined again split to the same. Never a panic.
func FuzzSplitSeed(f *testing.F) {
	for _, s := range []string{"10.0.0.1", "10.0.0.1:7946", "[::1]:7946", "::1", "[fe80::1%eth0]:1",
		"name", "name.svc.cluster.local.:7946", "a:b:c", "[::1", ":80", "x:0", "x:99999", "x y", "", "[a]:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		host, port, err := splitSeed(s, 7946)
		if err != nil {
			if host != "" || port != 0 {
				t.Fatalf("splitSeed(%q): error %v with %q, %d", s, err, host, port)
			}
			return
		}
		if port < 1 || port > 65535 {
			t.Fatalf("splitSeed(%q): port %d", s, port)
		}
		if _, perr := netip.ParseAddr(host); perr != nil && !validHostName(host) {
			t.Fatalf("splitSeed(%q): host %q is neither an address nor a name", s, host)
		}
		h2, p2, err := splitSeed(net.JoinHostPort(host, strconv.Itoa(port)), 1)
		if err != nil || h2 != host || p2 != port {
			t.Fatalf("splitSeed(%q) = %q, %d; joined again: %q, %d, %v", s, host, port, h2, p2, err)
		}
	})
}
