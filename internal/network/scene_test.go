package network

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vigilhq/vigil/internal/testenv"
)

// Scenes for the integration tests. Every scene lives in network namespaces
// the test creates: a "host" namespace holding a bridge (the monitor is
// pointed at it with Config.HostNetNSPath) and container namespaces joined
// to the bridge by veth pairs. The machine's own interfaces are never
// touched; names are unique so that tests of other packages can run beside.

// requireIntegration skips unless the test can create network namespaces
// (root on Linux); with CI=true it fails instead.
func requireIntegration(tb testing.TB) {
	tb.Helper()
	reason := ""
	switch {
	case testing.Short():
		reason = "integration test skipped in -short mode"
	case runtime.GOOS != "linux":
		reason = "integration test needs Linux"
	case os.Geteuid() != 0:
		reason = "integration test needs root to create network namespaces: run as root"
	default:
		if _, err := exec.LookPath("ip"); err != nil {
			reason = "integration test needs iproute2's ip to build its scenes"
		}
	}
	if reason == "" {
		return
	}
	if os.Getenv("CI") == "true" && !testing.Short() {
		tb.Fatal(reason)
	}
	tb.Skip(reason)
}

// run runs a command that sets a scene up and fails the test on error.
func run(tb testing.TB, args ...string) {
	tb.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		tb.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func randomID(tb testing.TB) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// scene is a fake host namespace with bridge br0 (10.77.0.1/24) and
// container namespaces attached to it.
type scene struct {
	tb      testing.TB
	prefix  string // netns name prefix, unique
	host    string // host netns name
	nextIP  int
	cleanup []string // netns names
}

func newScene(tb testing.TB) *scene {
	tb.Helper()
	requireIntegration(tb)
	s := &scene{tb: tb, prefix: "vgn-" + randomID(tb), nextIP: 2}
	s.host = s.addNetNS("host")
	run(tb, "ip", "-n", s.host, "link", "add", "br0", "type", "bridge")
	run(tb, "ip", "-n", s.host, "addr", "add", "10.77.0.1/24", "dev", "br0")
	run(tb, "ip", "-n", s.host, "link", "set", "br0", "up")
	return s
}

// addNetNS creates a namespace with lo up and registers its removal.
func (s *scene) addNetNS(suffix string) string {
	name := s.prefix + "-" + suffix
	run(s.tb, "ip", "netns", "add", name)
	s.tb.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	run(s.tb, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

func (s *scene) hostPath() string { return "/var/run/netns/" + s.host }

// sceneContainer is a container namespace of a scene.
type sceneContainer struct {
	name  string // netns name
	path  string
	host  string // host-side veth name
	ip    string // eth0's address, without prefix
	inode uint64
}

// addContainer creates a namespace whose eth0 is a veth to the bridge, with
// an address and a default route via the bridge.
func (s *scene) addContainer(suffix string) *sceneContainer {
	s.tb.Helper()
	name := s.addNetNS(suffix)
	c := &sceneContainer{name: name, path: "/var/run/netns/" + name, host: "v" + suffix, ip: fmt.Sprintf("10.77.0.%d", s.nextIP)}
	s.nextIP++
	run(s.tb, "ip", "-n", s.host, "link", "add", c.host, "type", "veth", "peer", "name", "eth0", "netns", name)
	run(s.tb, "ip", "-n", s.host, "link", "set", c.host, "master", "br0", "up")
	run(s.tb, "ip", "-n", name, "addr", "add", c.ip+"/24", "dev", "eth0")
	run(s.tb, "ip", "-n", name, "link", "set", "eth0", "up")
	run(s.tb, "ip", "-n", name, "route", "add", "default", "via", "10.77.0.1")
	id, err := statNS(c.path)
	if err != nil {
		s.tb.Fatal(err)
	}
	c.inode = id.Ino
	return c
}

// sendUDP sends n datagrams of size bytes from inside the namespace at path
// to addr (an address inside the scene).
func sendUDP(tb testing.TB, path, addr string, n, size int) {
	tb.Helper()
	err := testenv.InNetNS(path, func() error {
		// Unconnected, so that the receiver's ICMP port unreachable does not
		// fail later writes.
		conn, err := net.ListenPacket("udp4", ":0")
		if err != nil {
			return err
		}
		defer conn.Close()
		dst, err := net.ResolveUDPAddr("udp4", addr)
		if err != nil {
			return err
		}
		payload := make([]byte, size)
		for range n {
			if _, err := conn.WriteTo(payload, dst); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("send UDP from %s to %s: %v", path, addr, err)
	}
}

// openFDs counts this process's open sockets in /proc/self/fd: the kind of
// descriptor the monitor holds (the runtime, os/exec and the race detector
// open and close files of their own at times).
func openFDs(tb testing.TB) int { return countFDs(tb, "socket:") }

// countFDs counts this process's descriptors whose /proc/self/fd link
// starts with one of prefixes.
func countFDs(tb testing.TB, prefixes ...string) int {
	tb.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue
		}
		for _, p := range prefixes {
			if strings.HasPrefix(target, p) {
				n++
				break
			}
		}
	}
	return n
}
