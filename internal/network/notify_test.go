package network

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
)

// monitorFDs counts this process's descriptors of the kinds a monitor
// holds: sockets, epoll instances and eventfds. (The Go runtime's own epoll
// instance and eventfd are there from the start and stay.)
func monitorFDs(tb testing.TB) int {
	return countFDs(tb, "socket:", "anon_inode:[eventpoll]", "anon_inode:[eventfd]")
}

// waitGoroutines waits up to 5 seconds for the goroutine count to fall to
// at most max (goroutines that have finished their work take a moment to
// exit) and returns the last count.
func waitGoroutines(max int) int {
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= max || time.Now().After(deadline) {
			return n
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// nsHandle opens a netlink handle in the namespace at path, closed when the
// test ends.
func nsHandle(tb testing.TB, path string) *netlink.Handle {
	tb.Helper()
	nsh, err := netns.GetFromPath(path)
	if err != nil {
		tb.Fatal(err)
	}
	h, err := netlink.NewHandleAt(nsh, unix.NETLINK_ROUTE)
	nsh.Close()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(h.Close)
	return h
}

// nsHandles opens a netlink handle in each namespace of paths and returns
// them with each namespace's eth0 and inode.
func nsHandles(t *testing.T, paths []string) ([]*netlink.Handle, []netlink.Link, []uint64) {
	t.Helper()
	handles := make([]*netlink.Handle, len(paths))
	eth0 := make([]netlink.Link, len(paths))
	inodes := make([]uint64, len(paths))
	for i, p := range paths {
		h := nsHandle(t, p)
		handles[i] = h
		var err error
		if eth0[i], err = h.LinkByName("eth0"); err != nil {
			t.Fatal(err)
		}
		id, err := statNS(p)
		if err != nil {
			t.Fatal(err)
		}
		inodes[i] = id.Ino
	}
	return handles, eth0, inodes
}

// TestManyNamespacesAttachDetachConcurrently attaches 50 namespaces while
// half of them are attached and detached over and over, their links change
// and Read runs, all at once: the notification reader must never receive on
// a socket being closed (the race detector watches), events must keep coming
// from the namespaces still attached and from none of the others, the
// monitor must not keep a goroutine per namespace, and Close must release
// every descriptor and stop the reader.
func TestManyNamespacesAttachDetachConcurrently(t *testing.T) {
	const n = 50
	s := newBenchScene(t, n)
	handles, eth0, inodes := nsHandles(t, s.paths)
	ref := func(i int) container.Key { return container.Key{Namespace: "test", ID: strconv.Itoa(i)} }
	kept := func(i int) bool { return i%2 == 0 }

	t.Run("churn", func(t *testing.T) {
		g0, fds0 := runtime.NumGoroutine(), monitorFDs(t)
		cfg := DefaultConfig()
		cfg.HostNetNSPath = s.hostPath()
		m, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, stopRun := runMonitor(t, m)

		stop := make(chan struct{})
		errs := make(chan error, 4*n)
		var bg sync.WaitGroup
		bg.Add(3)
		go func() { // link changes everywhere
			defer bg.Done()
			for k := 0; ; k++ {
				for i := range n {
					select {
					case <-stop:
						return
					default:
					}
					if err := handles[i].LinkSetMTU(eth0[i], 1300+(k+i)%100); err != nil {
						errs <- fmt.Errorf("set mtu in namespace %d: %w", i, err)
						return
					}
				}
			}
		}()
		go func() { // read cycles
			defer bg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := m.Read(ctx); err != nil {
					errs <- fmt.Errorf("read: %w", err)
					return
				}
			}
		}()
		go func() { // a consumer of the events
			defer bg.Done()
			for {
				select {
				case <-stop:
					return
				case <-m.Events():
				}
			}
		}()
		var attach sync.WaitGroup
		for i := range n {
			attach.Add(1)
			go func() {
				defer attach.Done()
				if kept(i) {
					if err := m.Attach(ref(i), Source{Path: s.paths[i]}); err != nil {
						errs <- err
					}
					return
				}
				for range 5 {
					if err := m.Attach(ref(i), Source{Path: s.paths[i]}); err != nil {
						errs <- err
						return
					}
					time.Sleep(time.Millisecond)
					m.Detach(ref(i))
				}
			}()
		}
		attach.Wait()
		close(stop)
		bg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if t.Failed() {
			t.FailNow()
		}

		open := 1 + n/2
		if got := m.OpenNamespaces(); got != open {
			t.Errorf("open namespaces = %d, want %d", got, open)
		}
		if got := m.OpenDescriptors(); got != 2*open+2 {
			t.Errorf("OpenDescriptors = %d, want %d", got, 2*open+2)
		}
		if got := monitorFDs(t) - fds0; got != 2*open+2 {
			t.Errorf("descriptors held per /proc/self/fd = %d, want %d (two sockets per namespace, epoll, eventfd)", got, 2*open+2)
		}
		// Run and the notification reader; a little slack for goroutines of
		// the runtime and the test framework.
		const slack = 5
		if got := waitGoroutines(g0 + 2 + slack); got > g0+2+slack {
			t.Errorf("goroutines with %d namespaces attached = %d, started with %d: want at most %d more (no goroutine per namespace)",
				open, got, g0, 2+slack)
		} else {
			t.Logf("goroutines with %d namespaces attached: %d more than before New", open, got-g0)
		}

		// The detached namespaces' changes first, then the attached ones':
		// an event from each attached namespace and none from the others.
		const mtu = 1450
		for _, odd := range []bool{true, false} {
			for i := range n {
				if kept(i) == !odd {
					if err := handles[i].LinkSetMTU(eth0[i], mtu); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		want := make(map[uint64]bool)
		detached := make(map[uint64]bool)
		for i := range n {
			if kept(i) {
				want[inodes[i]] = true
			} else {
				detached[inodes[i]] = true
			}
		}
		timeout := time.After(10 * time.Second)
		for len(want) > 0 {
			select {
			case ev := <-m.Events():
				if ev.Link.Name != "eth0" || ev.Link.MTU != mtu {
					continue
				}
				if detached[ev.NetNSInode] {
					t.Errorf("event from detached namespace %d: %+v", ev.NetNSInode, ev)
				}
				if want[ev.NetNSInode] && (ev.Type != LinkChanged || len(ev.Containers) != 1) {
					t.Errorf("event = %+v, want a change naming one container", ev)
				}
				delete(want, ev.NetNSInode)
			case <-timeout:
				t.Fatalf("no MTU event within 10s from %d of the %d attached namespaces", len(want), n/2)
			}
		}

		stopRun()
		for range m.Events() {
		}
		if got := m.OpenDescriptors(); got != 0 {
			t.Errorf("OpenDescriptors after Close = %d, want 0", got)
		}
		if got := monitorFDs(t); got != fds0 {
			t.Errorf("descriptors after Close = %d, want %d as before New", got, fds0)
		}
		if got := waitGoroutines(g0); got > g0 {
			t.Errorf("goroutines after Close = %d, want %d as before New", got, g0)
		}
	})

	t.Run("close while attaching", func(t *testing.T) {
		g0, fds0 := runtime.NumGoroutine(), monitorFDs(t)
		cfg := DefaultConfig()
		cfg.HostNetNSPath = s.hostPath()
		m, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var attached sync.WaitGroup
		attached.Add(5)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := m.Attach(ref(i), Source{Path: s.paths[i]})
				if i < 5 {
					attached.Done()
				}
				if err != nil && !errors.Is(err, errdefs.ErrUnavailable) {
					t.Errorf("Attach: %v, want nil or ErrUnavailable", err)
				}
			}()
		}
		attached.Wait()
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		if got := monitorFDs(t); got != fds0 {
			t.Errorf("descriptors after Close and the attaches = %d, want %d as before New", got, fds0)
		}
		if got := waitGoroutines(g0); got > g0 {
			t.Errorf("goroutines after Close = %d, want %d as before New", got, g0)
		}
	})
}

// execIP returns `ip -n netns -batch -` reading the commands of batch.
func execIP(netns, batch string) *exec.Cmd {
	cmd := exec.Command("ip", "-n", netns, "-batch", "-")
	cmd.Stdin = strings.NewReader(batch)
	return cmd
}

// runMonitor runs m until stop is called or the test ends, whichever comes
// first; stop waits for Run and reports its error. ctx ends with stop.
func runMonitor(t *testing.T, m *Monitor) (ctx context.Context, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- m.Run(ctx) }()
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-runDone; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Cleanup(stop)
	return ctx, stop
}

// TestLostNotificationsResync overflows a namespace's subscription socket
// (smallest receive buffer, the reader held off it, a burst of changes):
// the kernel reports ENOBUFS, and the monitor must deliver a Resync event
// for the namespace and keep delivering its events afterwards.
func TestLostNotificationsResync(t *testing.T) {
	s := newScene(t)
	a := s.addContainer("a")
	m := newMonitor(t, s)
	ref := container.Key{Namespace: "default", ID: "a"}
	if err := m.Attach(ref, Source{Path: a.path}); err != nil {
		t.Fatal(err)
	}
	runMonitor(t, m)
	handles, eth0, _ := nsHandles(t, []string{a.path})
	h, link := handles[0], eth0[0]

	m.mu.Lock()
	ns := m.namespaces[a.inode]
	m.mu.Unlock()
	resyncs := m.stats.resyncs.Load()
	ns.subMu.Lock() // holds the reader off this socket
	if err := unix.SetsockoptInt(ns.sub.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 0); err != nil {
		ns.subMu.Unlock()
		t.Fatal(err)
	}
	for mtu := 1400; mtu < 1460; mtu++ {
		if err := h.LinkSetMTU(link, mtu); err != nil {
			ns.subMu.Unlock()
			t.Fatal(err)
		}
	}
	// Overrun now; a normal buffer again for what follows.
	if err := unix.SetsockoptInt(ns.sub.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 200<<10); err != nil {
		ns.subMu.Unlock()
		t.Fatal(err)
	}
	ns.subMu.Unlock()
	ev := waitEvent(t, m, func(ev Event) bool { return ev.Type == Resync })
	if ev.NetNSInode != a.inode || len(ev.Containers) != 1 || ev.Containers[0] != ref {
		t.Errorf("resync event = %+v, want one for namespace %d naming %v", ev, a.inode, ref)
	}
	if got := m.stats.resyncs.Load() - resyncs; got == 0 {
		t.Error("resyncs counter did not move")
	}
	if err := h.LinkSetMTU(link, 1500); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, m, func(ev Event) bool {
		return ev.NetNSInode == a.inode && ev.Link.Name == "eth0" && ev.Link.MTU == 1500
	})
}

// TestTruncatedNotificationResyncs makes a link notification longer than
// the reader's buffer (alternative names make a link message grow): the
// monitor cannot know what changed and must deliver a Resync event, then
// read the namespace in full.
func TestTruncatedNotificationResyncs(t *testing.T) {
	s := newScene(t)
	a := s.addContainer("a")
	m := newMonitor(t, s)
	if err := m.Attach(container.Key{Namespace: "default", ID: "a"}, Source{Path: a.path}); err != nil {
		t.Fatal(err)
	}
	runMonitor(t, m)
	read(t, m)
	var batch strings.Builder
	for i := range 100 { // 100 names of 100 bytes: a link message over 10 KiB
		fmt.Fprintf(&batch, "link property add dev eth0 altname a%03d%s\n", i, strings.Repeat("x", 96))
	}
	cmd := execIP(a.name, batch.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("add altnames: %v\n%s", err, out)
	}
	ev := waitEvent(t, m, func(ev Event) bool { return ev.Type == Resync })
	if ev.NetNSInode != a.inode {
		t.Errorf("resync event = %+v, want one for namespace %d", ev, a.inode)
	}
	if l := mustLink(t, mustNS(t, read(t, m), a.inode), "eth0"); !l.AdminUp {
		t.Errorf("eth0 after the resync = %+v, want it read, up", l)
	}
}
