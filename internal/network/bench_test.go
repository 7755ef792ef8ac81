package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vigilhq/vigil/internal/container"
)

// BenchmarkReadCycle measures one full read of N container namespaces (one
// veth each, peers on a bridge in a scene "host" namespace) three ways in
// the same run:
//
//   - monitor: Monitor.Read (sockets kept per namespace, counters dumped
//     every cycle with RTM_GETSTATS, links, addresses and routes only after
//     notifications), and monitor-fulldump, the same after a link
//     notification in every namespace (links and routes dumped in full);
//   - netlink-kept: a vishvananda/netlink Handle kept per namespace,
//     LinkList + AddrList + RouteList every cycle;
//   - netlink-setns: the naive way, a fresh Handle per namespace per cycle
//     (setns on a locked thread, sockets opened and closed), LinkList only.
//
// It reports CPU time per cycle from getrusage (user + system of the whole
// process, so the kernel's work for the dumps counts), and descriptors held
// (for the monitor its sockets, epoll instance and eventfd).
// Run it with: go test -run '^$' -bench ReadCycle ./internal/network/
func BenchmarkReadCycle(b *testing.B) {
	for _, n := range []int{100, 500} {
		b.Run(fmt.Sprintf("ns=%d", n), func(b *testing.B) {
			runBenchScene(b, n)
		})
	}
}

func runBenchScene(b *testing.B, n int) {
	s := newBenchScene(b, n)
	for _, full := range []bool{false, true} {
		name := "monitor"
		if full {
			name = "monitor-fulldump"
		}
		b.Run(name, func(b *testing.B) { benchMonitor(b, s, n, full) })
	}
	b.Run("netlink-kept", func(b *testing.B) {
		fds0 := openFDs(b)
		handles := make([]*netlink.Handle, 0, n+1)
		defer func() {
			for _, h := range handles {
				h.Close()
			}
		}()
		for _, p := range append([]string{s.hostPath()}, s.paths...) {
			ns, err := netns.GetFromPath(p)
			if err != nil {
				b.Fatal(err)
			}
			h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
			ns.Close()
			if err != nil {
				b.Fatal(err)
			}
			handles = append(handles, h)
		}
		fds := openFDs(b) - fds0
		measure(b, fds, func() {
			for _, h := range handles {
				links, err := h.LinkList()
				if ignoreInterrupted(err) != nil || len(links) < 2 {
					b.Fatalf("link list: %v (%d links)", err, len(links))
				}
				if _, err := h.AddrList(nil, netlink.FAMILY_ALL); ignoreInterrupted(err) != nil {
					b.Fatal(err)
				}
				if _, err := h.RouteList(nil, netlink.FAMILY_ALL); ignoreInterrupted(err) != nil {
					b.Fatal(err)
				}
			}
		})
	})
	b.Run("netlink-setns", func(b *testing.B) {
		paths := append([]string{s.hostPath()}, s.paths...)
		measure(b, 0, func() {
			for _, p := range paths {
				ns, err := netns.GetFromPath(p)
				if err != nil {
					b.Fatal(err)
				}
				h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
				if err != nil {
					b.Fatal(err)
				}
				links, err := h.LinkList()
				h.Close()
				ns.Close()
				if ignoreInterrupted(err) != nil || len(links) < 2 {
					b.Fatalf("link list: %v (%d links)", err, len(links))
				}
			}
		})
	})
}

// benchMonitor measures Monitor.Read. With fullDump every cycle dumps links
// (RTM_GETLINK) and routes in full, as a link notification in every
// namespace since the last cycle makes it (linkNotification marks both):
// what the monitor costs under link churn everywhere, and without the
// counters-only path. (Addresses are re-dumped only after an address
// notification, so even this is not every dump in every namespace.)
func benchMonitor(b *testing.B, s *benchScene, n int, fullDump bool) {
	cfg := DefaultConfig()
	cfg.HostNetNSPath = s.hostPath()
	fds0 := monitorFDs(b) // sockets, epoll instances, eventfds
	m, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	for i, p := range s.paths {
		if err := m.Attach(container.Key{Namespace: "bench", ID: fmt.Sprint(i)}, Source{Path: p}); err != nil {
			b.Fatal(err)
		}
	}
	fds := monitorFDs(b) - fds0
	if _, err := m.Read(context.Background()); err != nil { // the first cycle reads addresses and routes too
		b.Fatal(err)
	}
	var all []*namespace
	m.mu.Lock()
	all = append(all, m.host)
	for _, ns := range m.namespaces {
		all = append(all, ns)
	}
	m.mu.Unlock()
	full0 := m.stats.linkDumps.Load()
	measure(b, fds, func() {
		if fullDump {
			for _, ns := range all {
				ns.linksDirty.Store(true) // as linkNotification does
				ns.routesDirty.Store(true)
			}
		}
		snap, err := m.Read(context.Background())
		if err != nil || len(snap.Namespaces) != n+1 || len(snap.Errors) != 0 {
			b.Fatalf("read: %v, %d namespaces, errors %v", err, len(snap.Namespaces), snap.Errors)
		}
	})
	b.ReportMetric(float64(m.stats.linkDumps.Load()-full0)/float64(b.N), "full-dumps/cycle")
}

func ignoreInterrupted(err error) error {
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil
	}
	return err
}

// measure runs cycle b.N times and reports CPU per cycle (user and system,
// from getrusage) and the descriptors the approach holds between cycles.
func measure(b *testing.B, fds int, cycle func()) {
	b.ReportAllocs()
	var before, after syscall.Rusage
	b.ResetTimer()
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &before); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		cycle()
	}
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &after); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	user := time.Duration(after.Utime.Nano() - before.Utime.Nano())
	sys := time.Duration(after.Stime.Nano() - before.Stime.Nano())
	per := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / float64(b.N) }
	b.ReportMetric(per(user+sys), "cpu-ms/cycle")
	b.ReportMetric(per(sys), "sys-ms/cycle")
	b.ReportMetric(float64(fds), "fds")
}

// benchScene is a scene of n container namespaces built in bulk: namespaces
// with `ip -batch`, links with netlink (thousands of `ip` runs would take
// minutes).
type benchScene struct {
	*scene
	paths []string
}

func newBenchScene(b testing.TB, n int) *benchScene {
	b.Helper()
	start := time.Now()
	s := &benchScene{scene: newScene(b)}
	names := make([]string, n)
	var batch strings.Builder
	for i := range names {
		names[i] = fmt.Sprintf("%s-c%d", s.prefix, i)
		fmt.Fprintf(&batch, "netns add %s\n", names[i])
	}
	b.Cleanup(func() {
		var del strings.Builder
		for _, name := range names {
			fmt.Fprintf(&del, "netns del %s\n", name)
		}
		cmd := exec.Command("ip", "-force", "-batch", "-")
		cmd.Stdin = strings.NewReader(del.String())
		_ = cmd.Run()
	})
	cmd := exec.Command("ip", "-batch", "-")
	cmd.Stdin = strings.NewReader(batch.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("create namespaces: %v\n%s", err, out)
	}

	hostNS, err := netns.GetFromPath(s.hostPath())
	if err != nil {
		b.Fatal(err)
	}
	defer hostNS.Close()
	host, err := netlink.NewHandleAt(hostNS, unix.NETLINK_ROUTE)
	if err != nil {
		b.Fatal(err)
	}
	defer host.Close()
	br, err := host.LinkByName("br0")
	if err != nil {
		b.Fatal(err)
	}
	for i, name := range names {
		path := "/var/run/netns/" + name
		if err := configureBenchNS(host, br, path, i); err != nil {
			b.Fatalf("namespace %s: %v", name, err)
		}
		s.paths = append(s.paths, path)
	}
	b.Logf("scene of %d namespaces built in %v", n, time.Since(start).Round(time.Millisecond))
	// Let IPv6 duplicate address detection finish: until then address and
	// route notifications keep coming and make every cycle a full one.
	time.Sleep(3 * time.Second)
	return s
}

// configureBenchNS creates veth "h<i>" on the bridge with its peer as eth0
// in the namespace at path, up, with an address and a default route.
func configureBenchNS(host *netlink.Handle, br netlink.Link, path string, i int) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer ns.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: fmt.Sprintf("h%d", i), MasterIndex: br.Attrs().Index},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(ns),
	}
	if err := host.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth: %w", err)
	}
	if err := host.LinkSetUp(veth); err != nil {
		return err
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer h.Close()
	for _, name := range []string{"lo", "eth0"} {
		l, err := h.LinkByName(name)
		if err != nil {
			return err
		}
		if err := h.LinkSetUp(l); err != nil {
			return err
		}
		if name == "eth0" {
			ip := net.IPv4(10, 78, byte(i/250), byte(2+i%250))
			if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(16, 32)}}); err != nil {
				return err
			}
			gw := net.IPv4(10, 78, 255, 1)
			if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw, Flags: int(netlink.FLAG_ONLINK)}); err != nil {
				return fmt.Errorf("default route: %w", err)
			}
		}
	}
	return nil
}

// BenchmarkAttachMemory measures what attaching N container namespaces
// costs in memory: a monitor is created, N namespaces are attached (one
// container each), and the differences from before New are reported, after
// a GC, while the monitor is open:
//
//   - goroutines: goroutines the monitor keeps running;
//   - heap-KiB: heap in use (HeapInuse), the monitor's live buffers and state;
//   - stack-KiB: goroutine stacks in use (StackInuse);
//   - alloc-KiB: bytes allocated while attaching (the start-up garbage the
//     GC has to collect, live state included).
//
// Run it with: go test -run '^$' -bench AttachMemory ./internal/network/
func BenchmarkAttachMemory(b *testing.B) {
	for _, n := range []int{100, 500} {
		b.Run(fmt.Sprintf("ns=%d", n), func(b *testing.B) {
			s := newBenchScene(b, n)
			cfg := DefaultConfig()
			cfg.HostNetNSPath = s.hostPath()
			var goroutines, heap, stack, alloc float64
			for b.Loop() {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				g0 := runtime.NumGoroutine()
				m, err := New(cfg)
				if err != nil {
					b.Fatal(err)
				}
				for i, p := range s.paths {
					if err := m.Attach(container.Key{Namespace: "bench", ID: fmt.Sprint(i)}, Source{Path: p}); err != nil {
						b.Fatal(err)
					}
				}
				runtime.ReadMemStats(&after) // before the GC: TotalAlloc is cumulative anyway
				alloc += float64(after.TotalAlloc - before.TotalAlloc)
				runtime.GC()
				runtime.ReadMemStats(&after)
				goroutines += float64(runtime.NumGoroutine() - g0)
				heap += float64(int64(after.HeapInuse) - int64(before.HeapInuse))
				stack += float64(int64(after.StackInuse) - int64(before.StackInuse))
				runtime.KeepAlive(m)
				if err := m.Close(); err != nil {
					b.Fatal(err)
				}
			}
			per := float64(b.N)
			b.ReportMetric(goroutines/per, "goroutines")
			b.ReportMetric(heap/per/1024, "heap-KiB")
			b.ReportMetric(stack/per/1024, "stack-KiB")
			b.ReportMetric(alloc/per/1024, "alloc-KiB")
		})
	}
}
