package network

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/metrics/expotest"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// newMonitor returns a monitor whose host is the scene's host namespace,
// closed at cleanup.
func newMonitor(t *testing.T, s *scene, mutate ...func(*Config)) *Monitor {
	t.Helper()
	cfg := DefaultConfig()
	cfg.HostNetNSPath = s.hostPath()
	for _, f := range mutate {
		f(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func read(t *testing.T, m *Monitor) *Snapshot {
	t.Helper()
	snap, err := m.Read(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range snap.Errors {
		t.Errorf("read: %v", err)
	}
	return snap
}

func mustNS(t *testing.T, snap *Snapshot, inode uint64) *NamespaceState {
	t.Helper()
	ns := snap.Namespace(inode)
	if ns == nil {
		t.Fatalf("namespace %d missing from the snapshot", inode)
	}
	return ns
}

func mustLink(t *testing.T, ns *NamespaceState, name string) *Link {
	t.Helper()
	l := ns.Link(name)
	if l == nil {
		t.Fatalf("link %s missing from namespace %d", name, ns.Inode)
	}
	return l
}

func findCondition(ns *NamespaceState, typ ConditionType, iface string) *Condition {
	for i := range ns.Conditions {
		if ns.Conditions[i].Type == typ && ns.Conditions[i].Interface == iface {
			return &ns.Conditions[i]
		}
	}
	return nil
}

func TestReadSceneLinksPeersAndCounters(t *testing.T) {
	s := newScene(t)
	a, b := s.addContainer("a"), s.addContainer("b")
	m := newMonitor(t, s)
	refA, refB := container.Key{Namespace: "default", ID: "a"}, container.Key{Namespace: "default", ID: "b"}
	if err := m.Attach(refA, Source{Path: a.path}); err != nil {
		t.Fatal(err)
	}
	if err := m.Attach(refB, Source{Path: b.path, Primary: true}); err != nil {
		t.Fatal(err)
	}

	before := read(t, m)
	if len(before.Namespaces) != 3 {
		t.Fatalf("got %d namespaces, want host + 2", len(before.Namespaces))
	}
	host := before.Host()
	if host == nil || host.Inode != m.HostInode() {
		t.Fatalf("host namespace missing or wrong: %+v", host)
	}
	if br := mustLink(t, host, "br0"); br.Kind != "bridge" || !br.AdminUp || br.Addresses[0] != "10.77.0.1/24" {
		t.Errorf("br0 = %+v, want an up bridge with 10.77.0.1/24", br)
	}
	nsA := mustNS(t, before, a.inode)
	if len(nsA.Containers) != 1 || nsA.Containers[0] != refA {
		t.Errorf("namespace a containers = %v, want [%v]", nsA.Containers, refA)
	}
	if lo := mustLink(t, nsA, "lo"); lo.Kind != "loopback" {
		t.Errorf("lo kind = %q, want loopback", lo.Kind)
	}
	eth0 := mustLink(t, nsA, "eth0")
	if eth0.Kind != "veth" || !eth0.AdminUp || eth0.MAC == "" || eth0.MTU != 1500 {
		t.Errorf("eth0 = %+v, want an up veth with a MAC and MTU 1500", eth0)
	}
	if len(eth0.Addresses) == 0 || eth0.Addresses[0] != a.ip+"/24" {
		t.Errorf("eth0 addresses = %v, want %s/24 first (then IPv6 link-local)", eth0.Addresses, a.ip)
	}
	if !nsA.HasDefaultRoute {
		t.Error("namespace a has a default route, read says none")
	}
	if len(nsA.Conditions) != 0 {
		t.Errorf("healthy namespace a has conditions %+v", nsA.Conditions)
	}
	// The veth pair is matched both ways, and the host end names its pod.
	if eth0.Partner == nil || !eth0.Partner.Host || eth0.Partner.Name != a.host {
		t.Errorf("eth0 peer = %+v, want host link %s", eth0.Partner, a.host)
	}
	hostA := mustLink(t, host, a.host)
	if hostA.Partner == nil || hostA.Partner.NetNSInode != a.inode || hostA.Partner.Owner != refA || hostA.Partner.Name != "eth0" {
		t.Errorf("host %s peer = %+v, want eth0 in %d owned by %v", a.host, hostA.Partner, a.inode, refA)
	}
	if hostB := mustLink(t, host, b.host); hostB.Partner == nil || hostB.Partner.Owner != refB {
		t.Errorf("host %s peer = %+v, want owner %v", b.host, hostB.Partner, refB)
	}

	// Traffic from a to b moves the counters of a's eth0 (tx), b's eth0 (rx)
	// and the host ends on the bridge.
	const n, size = 50, 1000
	sendUDP(t, a.path, b.ip+":9", n, size)
	after := readStatsOnly(t, m)
	txA := mustLink(t, mustNS(t, after, a.inode), "eth0").Counters.TxPackets - eth0.Counters.TxPackets
	txBytesA := mustLink(t, mustNS(t, after, a.inode), "eth0").Counters.TxBytes - eth0.Counters.TxBytes
	rxB := mustLink(t, mustNS(t, after, b.inode), "eth0").Counters.RxPackets -
		mustLink(t, mustNS(t, before, b.inode), "eth0").Counters.RxPackets
	rxHostA := mustLink(t, after.Host(), a.host).Counters.RxPackets - hostA.Counters.RxPackets
	if txA < n || txBytesA < n*size {
		t.Errorf("a eth0 sent %d packets, %d bytes; want at least %d, %d", txA, txBytesA, n, n*size)
	}
	if rxB < n {
		t.Errorf("b eth0 received %d packets, want at least %d", rxB, n)
	}
	if rxHostA < n {
		t.Errorf("host %s received %d packets, want at least %d", a.host, rxHostA, n)
	}

	// The protocol conversion keeps what the agent needs.
	pb := after.Host().Proto()
	var found *vigilv1.Interface
	for _, i := range pb.GetInterfaces() {
		if i.GetName() == a.host {
			found = i
		}
	}
	if found == nil || found.GetOwnerContainerId() != "a" || found.GetNetnsInode() != 0 || found.GetKind() != "veth" {
		t.Errorf("host %s as proto = %v, want owner a, netns 0, kind veth", a.host, found)
	}
}

func TestLinkDownIsAnEventAndAConditionAndLinkUpBringsItBack(t *testing.T) {
	s := newScene(t)
	a := s.addContainer("a")
	m := newMonitor(t, s)
	ref := container.Key{Namespace: "default", ID: "a"}
	if err := m.Attach(ref, Source{Path: a.path}); err != nil {
		t.Fatal(err)
	}
	ctx, _ := runMonitor(t, m)

	// Set it down from this process (no fork in the measured interval).
	h := nsHandle(t, a.path)
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	changed := time.Now()
	if err := h.LinkSetDown(eth0); err != nil {
		t.Fatal(err)
	}
	ev := waitEvent(t, m, func(ev Event) bool {
		return ev.NetNSInode == a.inode && ev.Link.Name == "eth0" && !ev.Link.AdminUp
	})
	if ev.Type != LinkChanged || len(ev.Containers) != 1 || ev.Containers[0] != ref || ev.Host {
		t.Errorf("event = %+v, want a change of eth0 in a's namespace naming %v", ev, ref)
	}
	// Received by the monitor within 100 ms of the change (typically tens
	// of microseconds; the bound leaves room for a loaded machine).
	lat := ev.Time.Sub(changed)
	if lat > 100*time.Millisecond {
		t.Errorf("event received %v after the change, want under 100ms", lat)
	}
	t.Logf("link-down event received %v after the change", lat)

	snap := read(t, m)
	c := findCondition(mustNS(t, snap, a.inode), ConditionLinkDown, "eth0")
	if c == nil || c.Reason != ReasonAdminDown || c.NetNSInode != a.inode || c.Since.IsZero() {
		t.Fatalf("conditions = %+v, want LinkDown/AdminDown on eth0", mustNS(t, snap, a.inode).Conditions)
	}
	// The host end of the pair lost its carrier: a condition on the host too,
	// once the kernel's link watcher has set its operational state, which it
	// does asynchronously (a work queue), so possibly after the read above.
	// Its notification then makes a later cycle read it in full.
	for deadline := time.Now().Add(10 * time.Second); findCondition(snap.Host(), ConditionLinkDown, a.host) == nil && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		snap = read(t, m)
	}
	if hc := findCondition(snap.Host(), ConditionLinkDown, a.host); hc == nil {
		t.Errorf("host conditions = %+v, want LinkDown on %s", snap.Host().Conditions, a.host)
	}
	since := c.Since
	snap = read(t, m)
	if c := findCondition(mustNS(t, snap, a.inode), ConditionLinkDown, "eth0"); c == nil || !c.Since.Equal(since) {
		t.Errorf("condition since = %v on the second cycle, want it kept at %v", c, since)
	}

	if err := m.LinkUp(ctx, a.inode, "eth0"); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, m, func(ev Event) bool {
		return ev.NetNSInode == a.inode && ev.Link.Name == "eth0" && ev.Link.AdminUp
	})
	snap = read(t, m)
	if l := mustLink(t, mustNS(t, snap, a.inode), "eth0"); !l.AdminUp {
		t.Errorf("eth0 after LinkUp = %+v, want admin up", l)
	}
	if c := findCondition(mustNS(t, snap, a.inode), ConditionLinkDown, "eth0"); c != nil {
		t.Errorf("LinkDown still reported after LinkUp: %+v", c)
	}

	// LinkUp's errors speak the error vocabulary.
	if err := m.LinkUp(ctx, a.inode, "nosuch0"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("LinkUp of a missing link: %v, want ErrNotFound", err)
	}
	if err := m.LinkUp(ctx, 12345, "eth0"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("LinkUp in an unknown namespace: %v, want ErrNotFound", err)
	}
	if err := m.LinkUp(ctx, a.inode, "bad/name"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("LinkUp of an invalid name: %v, want ErrInvalid", err)
	}

	// A link added and removed in the container namespace is seen too.
	run(t, "ip", "-n", a.name, "link", "add", "x7", "type", "veth", "peer", "name", "y7")
	waitEvent(t, m, func(ev Event) bool { return ev.Type == LinkAdded && ev.Link.Name == "x7" && ev.Link.Kind == "veth" })
	run(t, "ip", "-n", a.name, "link", "del", "x7")
	waitEvent(t, m, func(ev Event) bool { return ev.Type == LinkRemoved && ev.Link.Name == "x7" })
}

// readStatsOnly reads until a cycle reads every namespace's counters alone
// (RTM_GETSTATS on cached link state), waiting out the notifications of a
// new scene (IPv6 duplicate address detection), and returns that cycle.
func readStatsOnly(t *testing.T, m *Monitor) *Snapshot {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := m.stats.statsDumps.Load()
		snap := read(t, m)
		if m.stats.statsDumps.Load()-before == uint64(len(snap.Namespaces)) {
			return snap
		}
		if time.Now().After(deadline) {
			t.Fatal("no counters-only read cycle within 10s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitEvent returns the first event matching ok, failing after 5 seconds.
func waitEvent(t *testing.T, m *Monitor, ok func(Event) bool) Event {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev, open := <-m.Events():
			if !open {
				t.Fatal("events channel closed")
			}
			if ok(ev) {
				return ev
			}
		case <-timeout:
			t.Fatal("no matching event within 5s")
		}
	}
}

func TestNoDefaultRouteAndMTUMismatch(t *testing.T) {
	s := newScene(t)
	a := s.addContainer("a")
	m := newMonitor(t, s)
	if err := m.Attach(container.Key{Namespace: "default", ID: "a"}, Source{Path: a.path}); err != nil {
		t.Fatal(err)
	}
	if ns := mustNS(t, read(t, m), a.inode); len(ns.Conditions) != 0 {
		t.Fatalf("healthy namespace has conditions %+v", ns.Conditions)
	}

	run(t, "ip", "-n", a.name, "route", "del", "default")
	ns := mustNS(t, read(t, m), a.inode)
	if ns.HasDefaultRoute {
		t.Error("default route deleted, read still sees one")
	}
	if c := findCondition(ns, ConditionNoDefaultRoute, ""); c == nil || c.Reason != ReasonNoDefaultRoute {
		t.Errorf("conditions = %+v, want NoDefaultRoute", ns.Conditions)
	}
	run(t, "ip", "-n", a.name, "route", "add", "default", "via", "10.77.0.1")
	if ns := mustNS(t, read(t, m), a.inode); !ns.HasDefaultRoute || findCondition(ns, ConditionNoDefaultRoute, "") != nil {
		t.Errorf("default route restored, read says has=%t conditions=%+v", ns.HasDefaultRoute, ns.Conditions)
	}

	run(t, "ip", "-n", a.name, "link", "set", "eth0", "mtu", "1400")
	snap := read(t, m)
	ns = mustNS(t, snap, a.inode)
	c := findCondition(ns, ConditionMTUMismatch, "eth0")
	if c == nil || c.Reason != ReasonMTUMismatch || !strings.Contains(c.Message, "1400") || !strings.Contains(c.Message, a.host) {
		t.Errorf("conditions = %+v, want MTUMismatch on eth0 naming 1400 and %s", ns.Conditions, a.host)
	}
	if hc := findCondition(snap.Host(), ConditionMTUMismatch, a.host); hc != nil {
		t.Errorf("the mismatch is reported twice, also on the host: %+v", hc)
	}
	pb := ns.Proto()
	if len(pb.GetConditions()) != 1 || pb.GetConditions()[0].GetType() != vigilv1.ConditionType_CONDITION_TYPE_MTU_MISMATCH ||
		pb.GetConditions()[0].GetNetnsInode() != a.inode {
		t.Errorf("proto conditions = %v, want one MTU mismatch in %d", pb.GetConditions(), a.inode)
	}
}

func TestSharedAndHostNetworkNamespacesAreNotDoubleCounted(t *testing.T) {
	s := newScene(t)
	a := s.addContainer("a")
	m := newMonitor(t, s)
	sandbox, app := container.Key{Namespace: "k8s.io", ID: "sandbox"}, container.Key{Namespace: "k8s.io", ID: "app"}
	hostNet, hostNetByPath := container.Key{Namespace: "default", ID: "hostnet"}, container.Key{Namespace: "default", ID: "hostnet2"}
	if err := m.Attach(app, Source{Path: a.path}); err != nil {
		t.Fatal(err)
	}
	if err := m.Attach(sandbox, Source{Path: a.path, Primary: true}); err != nil {
		t.Fatal(err)
	}
	if err := m.Attach(hostNet, Source{HostNetwork: true}); err != nil {
		t.Fatal(err)
	}
	// A container whose namespace file is the host's is host-network even
	// when not declared so.
	if err := m.Attach(hostNetByPath, Source{Path: s.hostPath()}); err != nil {
		t.Fatal(err)
	}
	if got := m.OpenNamespaces(); got != 2 {
		t.Errorf("open namespaces = %d, want 2 (host and the pod's)", got)
	}
	snap := read(t, m)
	if len(snap.Namespaces) != 2 {
		t.Fatalf("got %d namespaces, want 2", len(snap.Namespaces))
	}
	ns := mustNS(t, snap, a.inode)
	if len(ns.Containers) != 2 || ns.Containers[0] != app || ns.Containers[1] != sandbox {
		t.Errorf("pod namespace containers = %v, want [app sandbox]", ns.Containers)
	}
	if got := snap.Host().Containers; len(got) != 2 || got[0] != hostNet || got[1] != hostNetByPath {
		t.Errorf("host containers = %v, want the two host-network ones", got)
	}
	// The primary container (the sandbox) names the host end.
	if l := mustLink(t, snap.Host(), a.host); l.Partner == nil || l.Partner.Owner != sandbox {
		t.Errorf("host %s peer = %+v, want owner %v", a.host, l.Partner, sandbox)
	}
	// Detaching one of two containers keeps the namespace open.
	m.Detach(sandbox)
	if got := m.OpenNamespaces(); got != 2 {
		t.Errorf("open namespaces after detaching one of two = %d, want 2", got)
	}
}

func TestNamespaceReleasesDescriptors(t *testing.T) {
	s := newScene(t)
	a, b, c := s.addContainer("a"), s.addContainer("b"), s.addContainer("c")
	m := newMonitor(t, s)
	reg := expotest.Gatherer{m.Collector()}

	baseFDs, baseOpen := openFDs(t), m.OpenDescriptors()
	if baseOpen != 4 {
		t.Fatalf("open descriptors with the host only = %d, want 4 (two sockets, the epoll instance and the eventfd)", baseOpen)
	}
	// b is attached by the pid of a process inside it.
	sleeper := exec.Command("ip", "netns", "exec", b.name, "sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sleeper.Process.Kill(); _ = sleeper.Wait() })
	waitNetNS(t, sleeper.Process.Pid, b.inode)

	refA, refB, refC := container.Key{Namespace: "default", ID: "a"}, container.Key{Namespace: "default", ID: "b"}, container.Key{Namespace: "default", ID: "c"}
	for ref, src := range map[container.Key]Source{refA: {Path: a.path}, refB: {PID: uint32(sleeper.Process.Pid)}, refC: {Path: c.path}} {
		if err := m.Attach(ref, src); err != nil {
			t.Fatal(err)
		}
	}
	read(t, m)
	if got := m.OpenDescriptors(); got != baseOpen+6 {
		t.Errorf("open descriptors with 3 namespaces = %d, want %d", got, baseOpen+6)
	}
	if got := openFDs(t); got != baseFDs+6 {
		t.Errorf("/proc/self/fd count = %d, want %d", got, baseFDs+6)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP vigil_agent_network_namespaces_open Network namespaces the agent holds netlink sockets in, the host's included.
# TYPE vigil_agent_network_namespaces_open gauge
vigil_agent_network_namespaces_open 4
# HELP vigil_agent_network_sockets_open Netlink sockets the agent holds for network monitoring (two per open namespace).
# TYPE vigil_agent_network_sockets_open gauge
vigil_agent_network_sockets_open 8
`), "vigil_agent_network_namespaces_open", "vigil_agent_network_sockets_open"); err != nil {
		t.Error(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var cycles uint64
	for _, mf := range mfs {
		if mf.GetName() == "vigil_agent_network_read_duration_seconds" {
			cycles = mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	if cycles == 0 {
		t.Error("vigil_agent_network_read_duration_seconds observed no read cycle")
	}

	// The last container detached.
	m.Detach(refA)
	m.Detach(refA) // idempotent
	if got := m.OpenDescriptors(); got != baseOpen+4 {
		t.Errorf("open descriptors after detaching a = %d, want %d", got, baseOpen+4)
	}
	// The task's process exited.
	_ = sleeper.Process.Kill()
	_ = sleeper.Wait()
	// The namespace deleted.
	run(t, "ip", "netns", "del", c.name)
	snap := read(t, m)
	if len(snap.Namespaces) != 1 {
		t.Errorf("namespaces after they all went = %d, want the host only", len(snap.Namespaces))
	}
	if got := m.OpenDescriptors(); got != baseOpen {
		t.Errorf("open descriptors after they all went = %d, want %d", got, baseOpen)
	}
	if got := openFDs(t); got != baseFDs {
		t.Errorf("/proc/self/fd count after they all went = %d, want %d", got, baseFDs)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if got := openFDs(t); got != baseFDs-2 {
		t.Errorf("/proc/self/fd count after Close = %d, want %d", got, baseFDs-2)
	}
	if _, err := m.Read(context.Background()); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("Read after Close: %v, want ErrUnavailable", err)
	}
	if err := m.Attach(refA, Source{Path: a.path}); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("Attach after Close: %v, want ErrUnavailable", err)
	}
}

// waitNetNS waits until process pid has entered the namespace with inode.
func waitNetNS(t *testing.T, pid int, inode uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if id, err := statNS("/proc/" + strconv.Itoa(pid) + "/ns/net"); err == nil && id.Ino == inode {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("process %d did not enter namespace %d", pid, inode)
}

func TestAttachRejectsBadInput(t *testing.T) {
	s := newScene(t)
	m := newMonitor(t, s)
	cases := []struct {
		name string
		ref  container.Key
		src  Source
		want error
	}{
		{"empty id", container.Key{Namespace: "default", ID: ""}, Source{HostNetwork: true}, errdefs.ErrInvalid},
		{"no source", container.Key{Namespace: "default", ID: "x"}, Source{}, errdefs.ErrInvalid},
		{"missing path", container.Key{Namespace: "default", ID: "x"}, Source{Path: "/var/run/netns/" + s.prefix + "-nosuch"}, errdefs.ErrNotFound},
		{"not a namespace", container.Key{Namespace: "default", ID: "x"}, Source{Path: "/etc/hostname"}, errdefs.ErrInvalid},
	}
	for _, tc := range cases {
		if err := m.Attach(tc.ref, tc.src); !errors.Is(err, tc.want) {
			t.Errorf("%s: Attach = %v, want %v", tc.name, err, tc.want)
		}
	}
	if got := m.OpenNamespaces(); got != 1 {
		t.Errorf("open namespaces after failed attaches = %d, want 1", got)
	}
}

func TestReadsTheRealHostNamespace(t *testing.T) {
	requireIntegration(t)
	// Read-only: the agent's own namespace, nothing changed in it.
	m, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	snap := read(t, m)
	host := snap.Host()
	if host == nil {
		t.Fatal("no host namespace")
	}
	self, err := statNS("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if host.Inode != self.Ino {
		t.Errorf("host inode = %d, want the agent's own %d", host.Inode, self.Ino)
	}
	if lo := host.Link("lo"); lo == nil || lo.Kind != "loopback" || len(lo.Addresses) == 0 {
		t.Errorf("host lo = %+v, want the loopback with addresses", lo)
	}
}

func TestRunOwnsTheMonitor(t *testing.T) {
	s := newScene(t)
	a := s.addContainer("a")
	m := newMonitor(t, s)
	if err := m.Attach(container.Key{Namespace: "default", ID: "a"}, Source{Path: a.path}); err != nil {
		t.Fatal(err)
	}
	ctx, stopRun := runMonitor(t, m)
	// Wait until Run has started, then a second Run is refused.
	deadline := time.Now().Add(5 * time.Second)
	for !m.running.Load() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if err := m.Run(ctx); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("second Run = %v, want ErrConflict", err)
	}
	// Run returns nil on cancellation (stopRun fails the test otherwise).
	stopRun()
	for range m.Events() { // buffered events, then closed
	}
	if got := m.OpenDescriptors(); got != 0 {
		t.Errorf("descriptors held after Run returned = %d, want 0", got)
	}
}

// TestHostIsTheCallersNamespace: with no HostNetNSPath the host namespace
// is the one the calling thread is in, and the host's links are read from
// there. The agent once took /proc/self/ns/net for its own namespace; that
// names the main thread, which a goroutine that exits locked to it leaves in
// whatever namespace it had entered (the agent's tests create namespaces
// that way): a container in that namespace was then read through the
// host's sockets and reported the host's links as its own.
func TestHostIsTheCallersNamespace(t *testing.T) {
	type result struct {
		ino      uint64
		snap     *Snapshot
		err      error
		stranded bool // the thread could not be switched back
	}
	// work runs on a locked thread: it moves the thread to a new namespace
	// with a veth pair, makes a monitor there, reads, and moves it back.
	work := func() (r result) {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			return result{err: err}
		}
		defer orig.Close()
		h, err := netns.New() // this thread only
		if err != nil {
			runtime.UnlockOSThread()
			return result{err: err}
		}
		defer h.Close()
		defer func() {
			if err := netns.Set(orig); err != nil {
				r.err, r.stranded = errors.Join(r.err, err), true
				return // stay locked: the thread must not run anything else
			}
			runtime.UnlockOSThread()
		}()
		var st unix.Stat_t
		if err := unix.Fstat(int(h), &st); err != nil {
			return result{err: err}
		}
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vigil-self0"}, PeerName: "vigil-self1"}); err != nil {
			return result{err: err}
		}
		m, err := New(DefaultConfig())
		if err != nil {
			return result{err: err}
		}
		defer m.Close()
		snap, err := m.Read(context.Background())
		return result{ino: st.Ino, snap: snap, err: err}
	}
	// The main thread must stay in the original namespace while work runs
	// elsewhere (that is the case the old code got wrong): hold it locked
	// if this goroutine got it, so that work's goroutine cannot.
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() != os.Getpid() {
			runtime.UnlockOSThread()
			r := work()
			if r.stranded {
				runtime.LockOSThread() // the goroutine ends locked: its thread goes
			}
			done <- r
			return
		}
		inner := make(chan result, 1)
		go func() {
			r := work()
			if r.stranded {
				runtime.LockOSThread()
			}
			inner <- r
		}()
		r := <-inner
		runtime.UnlockOSThread()
		done <- r
	}()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	for _, ns := range r.snap.Namespaces {
		if !ns.Host {
			continue
		}
		if ns.Inode != r.ino {
			t.Errorf("host namespace inode %d, want the calling thread's %d", ns.Inode, r.ino)
		}
		for _, l := range ns.Links {
			if l.Name == "vigil-self0" {
				return
			}
		}
		t.Fatalf("host links %v: not the calling thread's namespace (no vigil-self0)", ns.Links)
	}
	t.Fatal("no host namespace in the snapshot")
}
