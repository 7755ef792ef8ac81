package network

import (
	"slices"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/container"
)

func TestRatePerSecond(t *testing.T) {
	cases := []struct {
		name      string
		prev, cur uint64
		dt        time.Duration
		want      float64
		ok        bool
	}{
		{"steady", 100, 100, time.Second, 0, true},
		{"ten per second", 100, 200, 10 * time.Second, 10, true},
		{"half second", 0, 5, 500 * time.Millisecond, 10, true},
		{"counter reset", 200, 100, time.Second, 0, false},
		{"no interval", 1, 2, 0, 0, false},
		{"negative interval", 1, 2, -time.Second, 0, false},
	}
	for _, tc := range cases {
		got, ok := ratePerSecond(tc.prev, tc.cur, tc.dt)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%s: ratePerSecond = %v, %v; want %v, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

func TestLinkDownReason(t *testing.T) {
	cases := []struct {
		name   string
		link   Link
		host   bool
		reason string
	}{
		{"container up", Link{Name: "eth0", Kind: "veth", AdminUp: true, OperState: OperUp}, false, ""},
		{"container oper unknown counts as up", Link{Name: "eth0", Kind: "ipvlan", AdminUp: true, OperState: OperUnknown}, false, ""},
		{"container admin down", Link{Name: "eth0", Kind: "veth", OperState: OperDown}, false, ReasonAdminDown},
		{"container oper down", Link{Name: "eth0", Kind: "veth", AdminUp: true, OperState: OperDown}, false, ReasonOperDown},
		{"container peer down", Link{Name: "eth0", Kind: "macvlan", AdminUp: true, OperState: OperLowerLayerDown}, false, ReasonLowerLayerDown},
		{"container loopback down ignored", Link{Name: "lo", Kind: "loopback"}, false, ""},
		{"container fallback tunnel ignored", Link{Name: "tunl0", Kind: "ipip"}, false, ""},
		{"host admin down ignored", Link{Name: "eno2", Kind: "device", OperState: OperDown}, true, ""},
		{"host no carrier", Link{Name: "eno1", Kind: "device", AdminUp: true, OperState: OperDown}, true, ReasonOperDown},
		{"host not present", Link{Name: "eno1", Kind: "device", AdminUp: true, OperState: OperNotPresent}, true, ReasonOperDown},
		{"host bridge without ports up", Link{Name: "cni0", Kind: "bridge", AdminUp: true, OperState: OperDown}, true, ""},
		{"container bridge admin down", Link{Name: "br1", Kind: "bridge", OperState: OperDown}, false, ReasonAdminDown},
		{"host veth whose pod end is down", Link{Name: "veth1", Kind: "veth", AdminUp: true, OperState: OperLowerLayerDown}, true, ReasonLowerLayerDown},
	}
	for _, tc := range cases {
		reason, ok := linkDownReason(&tc.link, tc.host)
		if reason != tc.reason || ok != (tc.reason != "") {
			t.Errorf("%s: linkDownReason = %q, %v; want %q", tc.name, reason, ok, tc.reason)
		}
	}
}

func TestDeriveConditions(t *testing.T) {
	t0 := time.Unix(1000, 0)
	up := func(name, kind string) Link {
		return Link{Index: 2, Name: name, Kind: kind, AdminUp: true, OperState: OperUp, MTU: 1500}
	}
	lo := Link{Index: 1, Name: "lo", Kind: "loopback", AdminUp: true, OperState: OperUnknown}
	withPartner := func(l Link, peer LinkPartner) Link { l.Partner = &peer; return l }
	withCounters := func(l Link, c Counters) Link { l.Counters = c; return l }
	type want struct {
		typ    ConditionType
		iface  string
		reason string
	}
	lim := Limits{ErrorsPerSecond: 1, DropsPerSecond: 10}
	cases := []struct {
		name string
		ns   NamespaceState
		prev map[int32]counterSample
		lim  Limits
		want []want
	}{
		{
			name: "healthy container",
			ns:   NamespaceState{Inode: 9, Links: []Link{lo, up("eth0", "veth")}, HasDefaultRoute: true},
			lim:  lim,
		},
		{
			name: "container without default route",
			ns:   NamespaceState{Inode: 9, Links: []Link{lo, up("eth0", "veth")}},
			lim:  lim,
			want: []want{{ConditionNoDefaultRoute, "", ReasonNoDefaultRoute}},
		},
		{
			name: "loopback-only container needs no route",
			ns:   NamespaceState{Inode: 9, Links: []Link{lo}},
			lim:  lim,
		},
		{
			name: "host without default route is fine",
			ns:   NamespaceState{Inode: 1, Host: true, Links: []Link{lo, up("eno1", "device")}},
			lim:  lim,
		},
		{
			name: "mtu mismatch reported on the container end",
			ns: NamespaceState{Inode: 9, HasDefaultRoute: true, Links: []Link{
				withPartner(up("eth0", "veth"), LinkPartner{Host: true, NetNSInode: 1, Index: 12, Name: "veth12", MTU: 1450}),
			}},
			lim:  lim,
			want: []want{{ConditionMTUMismatch, "eth0", ReasonMTUMismatch}},
		},
		{
			name: "mtu mismatch not repeated on the host end",
			ns: NamespaceState{Inode: 1, Host: true, Links: []Link{
				withPartner(up("veth12", "veth"), LinkPartner{NetNSInode: 9, Index: 2, Name: "eth0", MTU: 1450}),
			}},
			lim: lim,
		},
		{
			name: "same-namespace pair reported once",
			ns: NamespaceState{Inode: 1, Host: true, Links: []Link{
				{Index: 3, Name: "a", Kind: "veth", AdminUp: true, MTU: 1500, Partner: &LinkPartner{NetNSInode: 1, Host: true, Index: 4, Name: "b", MTU: 9000}},
				{Index: 4, Name: "b", Kind: "veth", AdminUp: true, MTU: 9000, Partner: &LinkPartner{NetNSInode: 1, Host: true, Index: 3, Name: "a", MTU: 1500}},
			}},
			lim:  lim,
			want: []want{{ConditionMTUMismatch, "a", ReasonMTUMismatch}},
		},
		{
			name: "matching mtu",
			ns: NamespaceState{Inode: 9, HasDefaultRoute: true, Links: []Link{
				withPartner(up("eth0", "veth"), LinkPartner{Host: true, NetNSInode: 1, Index: 12, Name: "veth12", MTU: 1500}),
			}},
			lim: lim,
		},
		{
			name: "errors and drops rising",
			ns: NamespaceState{Inode: 9, HasDefaultRoute: true, Time: t0.Add(10 * time.Second), Links: []Link{
				withCounters(up("eth0", "veth"), Counters{RxErrors: 15, TxErrors: 10, RxDropped: 150, TxDropped: 0}),
			}},
			prev: map[int32]counterSample{2: {at: t0, errors: 5, drops: 40}}, // 2 errors/s, 11 drops/s
			lim:  lim,
			want: []want{{ConditionErrorsRising, "eth0", ReasonErrorsRising}, {ConditionDropsRising, "eth0", ReasonDropsRising}},
		},
		{
			name: "rates at the limit do not count",
			ns: NamespaceState{Inode: 9, HasDefaultRoute: true, Time: t0.Add(10 * time.Second), Links: []Link{
				withCounters(up("eth0", "veth"), Counters{RxErrors: 15, RxDropped: 140}),
			}},
			prev: map[int32]counterSample{2: {at: t0, errors: 5, drops: 40}}, // exactly 1/s and 10/s
			lim:  lim,
		},
		{
			name: "disabled limits",
			ns: NamespaceState{Inode: 9, HasDefaultRoute: true, Time: t0.Add(time.Second), Links: []Link{
				withCounters(up("eth0", "veth"), Counters{RxErrors: 1e6, RxDropped: 1e6}),
			}},
			prev: map[int32]counterSample{2: {at: t0}},
			lim:  Limits{ErrorsPerSecond: -1, DropsPerSecond: -1},
		},
		{
			name: "first cycle has no rate",
			ns: NamespaceState{Inode: 9, HasDefaultRoute: true, Time: t0, Links: []Link{
				withCounters(up("eth0", "veth"), Counters{RxErrors: 1e6}),
			}},
			lim: lim,
		},
		{
			name: "counter reset has no rate",
			ns: NamespaceState{Inode: 9, HasDefaultRoute: true, Time: t0.Add(time.Second), Links: []Link{
				withCounters(up("eth0", "veth"), Counters{RxErrors: 3}),
			}},
			prev: map[int32]counterSample{2: {at: t0, errors: 500}},
			lim:  lim,
		},
		{
			name: "down container link",
			ns: NamespaceState{Inode: 9, HasDefaultRoute: true, Links: []Link{
				lo, {Index: 2, Name: "eth0", Kind: "veth", OperState: OperDown, MTU: 1500},
			}},
			lim:  lim,
			want: []want{{ConditionLinkDown, "eth0", ReasonAdminDown}},
		},
	}
	for _, tc := range cases {
		got := deriveConditions(&tc.ns, tc.prev, tc.lim)
		var gotW []want
		for _, c := range got {
			gotW = append(gotW, want{c.Type, c.Interface, c.Reason})
			if c.NetNSInode != tc.ns.Inode || c.Message == "" {
				t.Errorf("%s: condition %+v lacks its namespace or message", tc.name, c)
			}
		}
		if !slices.Equal(gotW, tc.want) {
			t.Errorf("%s: conditions = %v, want %v", tc.name, gotW, tc.want)
		}
	}
}

func TestStampSince(t *testing.T) {
	t0, t1, t2 := time.Unix(100, 0), time.Unix(110, 0), time.Unix(120, 0)
	since := map[conditionKey]time.Time{}
	down := Condition{Type: ConditionLinkDown, Interface: "eth0"}
	noRoute := Condition{Type: ConditionNoDefaultRoute}

	c1 := []Condition{down}
	stampSince(c1, since, t0)
	c2 := []Condition{down, noRoute}
	stampSince(c2, since, t1)
	if !c1[0].Since.Equal(t0) || !c2[0].Since.Equal(t0) || !c2[1].Since.Equal(t1) {
		t.Errorf("since = %v, %v, %v; want t0, t0, t1", c1[0].Since, c2[0].Since, c2[1].Since)
	}
	// eth0 recovers, then goes down again: a new since.
	stampSince([]Condition{noRoute}, since, t2)
	c4 := []Condition{down}
	stampSince(c4, since, t2)
	if !c4[0].Since.Equal(t2) {
		t.Errorf("a condition that cleared and came back has since %v, want %v", c4[0].Since, t2)
	}
	if _, ok := since[conditionKey{ConditionNoDefaultRoute, ""}]; ok {
		t.Error("a cleared condition is still remembered")
	}
}

func TestMatchPartners(t *testing.T) {
	veth := func(index int32, name string, peer int32, nsid int32, mtu uint32) Link {
		return Link{Index: index, Name: name, Kind: "veth", LinkIndex: peer, LinkNetNSID: nsid, MTU: mtu}
	}
	podA, podB := container.Key{Namespace: "k8s.io", ID: "sandbox-a"}, container.Key{Namespace: "k8s.io", ID: "sandbox-b"}
	snap := &Snapshot{Namespaces: []NamespaceState{
		{Inode: 1, Host: true, Links: []Link{
			{Index: 1, Name: "lo", Kind: "loopback"},
			veth(10, "vethA", 2, 0, 1500),
			veth(11, "vethB", 2, 1, 1500),
			veth(12, "vethX", 5, 2, 1500), // peer in a namespace not read
			veth(20, "inner1", 21, -1, 1500),
			veth(21, "inner2", 20, -1, 9000),
			{Index: 30, Name: "vlan30", Kind: "vlan", LinkIndex: 10, LinkNetNSID: -1},
		}},
		{Inode: 100, Links: []Link{{Index: 1, Name: "lo", Kind: "loopback"}, veth(2, "eth0", 10, 0, 1450)}},
		{Inode: 200, Links: []Link{{Index: 1, Name: "lo", Kind: "loopback"}, veth(2, "eth0", 11, 0, 1500)}},
		// Index collision: its eth0 (2) names host 10 as peer, but its peer is elsewhere
		// (vethA's peer is namespace 100's eth0). Two claims on vethA: neither matched.
		{Inode: 300, Links: []Link{veth(2, "eth0", 10, 3, 1500)}},
	}}
	matchPartners(snap, map[uint64]container.Key{100: podA, 200: podB})
	host := snap.Host()
	check := func(ns *NamespaceState, name string, want *LinkPartner) {
		t.Helper()
		l := ns.Link(name)
		switch {
		case want == nil && l.Partner != nil:
			t.Errorf("ns %d %s: peer %+v, want none", ns.Inode, name, l.Partner)
		case want != nil && (l.Partner == nil || *l.Partner != *want):
			t.Errorf("ns %d %s: peer %+v, want %+v", ns.Inode, name, l.Partner, want)
		}
	}
	check(host, "vethA", nil) // claimed by namespaces 100 and 300
	check(snap.Namespace(100), "eth0", nil)
	check(snap.Namespace(300), "eth0", nil)
	check(host, "vethB", &LinkPartner{NetNSInode: 200, Index: 2, Name: "eth0", MTU: 1500, Owner: podB})
	check(snap.Namespace(200), "eth0", &LinkPartner{NetNSInode: 1, Host: true, Index: 11, Name: "vethB", MTU: 1500})
	check(host, "vethX", nil)
	check(host, "inner1", &LinkPartner{NetNSInode: 1, Host: true, Index: 21, Name: "inner2", MTU: 9000})
	check(host, "inner2", &LinkPartner{NetNSInode: 1, Host: true, Index: 20, Name: "inner1", MTU: 1500})
	check(host, "vlan30", nil)

	// Without the colliding namespace, vethA pairs with namespace 100.
	snap.Namespaces = snap.Namespaces[:3]
	for i := range snap.Namespaces {
		for j := range snap.Namespaces[i].Links {
			snap.Namespaces[i].Links[j].Partner = nil
		}
	}
	matchPartners(snap, map[uint64]container.Key{100: podA, 200: podB})
	check(host, "vethA", &LinkPartner{NetNSInode: 100, Index: 2, Name: "eth0", MTU: 1450, Owner: podA})
	check(snap.Namespace(100), "eth0", &LinkPartner{NetNSInode: 1, Host: true, Index: 10, Name: "vethA", MTU: 1500})
}

// TestEventsCoalesceAndDrop checks the pending-event queue behind the
// Events channel: events of one link merge, and beyond the bound new links'
// events are dropped, never blocking the producer.
func TestEventsCoalesceAndDrop(t *testing.T) {
	m := &Monitor{
		cfg:     Config{MaxPendingEvents: 2},
		pending: make(map[eventKey]*Event),
		wake:    make(chan struct{}, 1),
	}
	ev := func(typ EventType, index int32, mtu uint32) Event {
		return Event{Type: typ, NetNSInode: 7, Link: Link{Index: index, MTU: mtu}}
	}
	m.push(ev(LinkAdded, 2, 1500))
	m.push(ev(LinkChanged, 2, 1400)) // stays an addition, with the latest state
	m.push(ev(LinkChanged, 3, 1500))
	m.push(ev(LinkRemoved, 3, 1500)) // becomes a removal
	m.push(ev(LinkChanged, 4, 1500)) // a third link: dropped
	if got := m.stats.coalesced.Load(); got != 2 {
		t.Errorf("coalesced = %d, want 2", got)
	}
	if got := m.stats.dropped.Load(); got != 1 {
		t.Errorf("dropped = %d, want 1", got)
	}
	var got []Event
	for {
		e, ok := m.pop()
		if !ok {
			break
		}
		got = append(got, e)
	}
	if len(got) != 2 || got[0].Type != LinkAdded || got[0].Link.MTU != 1400 || got[1].Type != LinkRemoved || got[1].Link.Index != 3 {
		t.Errorf("delivered %+v, want link 2 added (MTU 1400) then link 3 removed", got)
	}
	m.push(ev(LinkChanged, 4, 1500)) // room again
	if e, ok := m.pop(); !ok || e.Link.Index != 4 {
		t.Errorf("after draining, pop = %+v %v, want link 4", e, ok)
	}
}
