package testenv

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	vnetns "github.com/vigilhq/vigil/internal/netns"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// setupNetwork creates the instance's bridge with the subnet's .1 (a given
// subnet, or a private /24 no one on the host uses) and writes the CNI
// config for the CRI plugin. Pods get no route beyond the subnet and the
// host does not forward for them: their traffic stays on the bridge.
func (i *Instance) setupNetwork(given string) error {
	if given != "" {
		return i.setupGivenNetwork(given)
	}
	lastErr := errors.New("every subnet tried is in use")
	for range 20 {
		subnet, gw, err := randomSubnet()
		if err != nil {
			return err
		}
		if used, err := subnetInUse(subnet, ""); err != nil {
			return err
		} else if used {
			continue
		}
		if err := i.createBridge(gw); err != nil {
			return err
		}
		// Another test binary may have picked the same subnet just now.
		if used, err := subnetInUse(subnet, i.Bridge); err != nil || used {
			lastErr = fmt.Errorf("subnet %v taken concurrently", subnet)
			if derr := deleteLink(i.Bridge); derr != nil {
				return derr
			}
			continue
		}
		i.Subnet, i.BridgeIP = subnet.String(), gw.IP.String()
		return i.writeCNIConfig(subnet)
	}
	return fmt.Errorf("no free private subnet for the CNI bridge: %w", lastErr)
}

// setupGivenNetwork uses the subnet the caller chose: it creates the bridge
// unless it exists with the subnet's .1 already (a rerun after a failure).
func (i *Instance) setupGivenNetwork(cidr string) error {
	_, subnet, err := net.ParseCIDR(cidr)
	if err != nil || subnet.IP.To4() == nil {
		return fmt.Errorf("subnet %q: want an IPv4 /24 such as 10.199.74.0/24", cidr)
	}
	if ones, _ := subnet.Mask.Size(); ones != 24 {
		return fmt.Errorf("subnet %q: want a /24", cidr)
	}
	ip := subnet.IP.To4()
	gw := &net.IPNet{IP: net.IPv4(ip[0], ip[1], ip[2], 1).To4(), Mask: subnet.Mask}
	if link, err := netlink.LinkByName(i.Bridge); err == nil {
		addrs, _ := netlink.AddrList(link, netlink.FAMILY_V4)
		found := false
		for _, a := range addrs {
			found = found || a.IPNet.String() == gw.String()
		}
		if !found {
			return fmt.Errorf("link %s exists without %s: another program uses it; delete it or pick another bridge name", i.Bridge, gw)
		}
	} else {
		if used, err := subnetInUse(subnet, i.Bridge); err != nil {
			return err
		} else if used {
			return fmt.Errorf("subnet %s is already used on this host: pick another one", subnet)
		}
		if err := i.createBridge(gw); err != nil {
			return err
		}
	}
	i.Subnet, i.BridgeIP = subnet.String(), gw.IP.String()
	return i.writeCNIConfig(subnet)
}

// randomSubnet returns 10.N.M.0/24 with N in 200..249, and its .1 address.
func randomSubnet() (*net.IPNet, *net.IPNet, error) {
	n, err := rand.Int(rand.Reader, big.NewInt(50*256))
	if err != nil {
		return nil, nil, err
	}
	v := int(n.Int64())
	ip := net.IPv4(10, byte(200+v/256), byte(v%256), 0).To4()
	subnet := &net.IPNet{IP: ip, Mask: net.CIDRMask(24, 32)}
	gw := &net.IPNet{IP: net.IPv4(10, ip[1], ip[2], 1).To4(), Mask: subnet.Mask}
	return subnet, gw, nil
}

// dumpTries bounds the attempts of a netlink dump that a concurrent change
// interrupted (NLM_F_DUMP_INTR: other tests add and remove links and
// routes on this host all the time).
const dumpTries = 5

// retryDump calls list until its dump is not interrupted, at most dumpTries
// times; the last error is returned.
func retryDump[T any](list func() (T, error)) (T, error) {
	var v T
	var err error
	for range dumpTries {
		if v, err = list(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

// subnetInUse reports whether a host address or route other than on the link
// named except overlaps subnet.
func subnetInUse(subnet *net.IPNet, except string) (bool, error) {
	links, err := retryDump(netlink.LinkList)
	if err != nil {
		return false, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		if except != "" && l.Attrs().Name == except {
			continue
		}
		addrs, err := retryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(l, netlink.FAMILY_V4) })
		if err != nil {
			continue // the link went away meanwhile
		}
		for _, a := range addrs {
			if subnet.Contains(a.IP) || a.IPNet.Contains(subnet.IP) {
				return true, nil
			}
		}
	}
	routes, err := retryDump(func() ([]netlink.Route, error) { return netlink.RouteList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return false, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		if ones, _ := r.Dst.Mask.Size(); ones == 0 { // a default route overlaps everything, but says nothing
			continue
		}
		if link, err := netlink.LinkByIndex(r.LinkIndex); err == nil && link.Attrs().Name == except {
			continue
		}
		if r.Dst.Contains(subnet.IP) || subnet.Contains(r.Dst.IP) {
			return true, nil
		}
	}
	return false, nil
}

func (i *Instance) createBridge(gw *net.IPNet) error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: i.Bridge}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("create bridge %s: %w", i.Bridge, err)
	}
	if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: gw}); err != nil {
		return errors.Join(fmt.Errorf("address bridge %s: %w", i.Bridge, err), deleteLink(i.Bridge))
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return errors.Join(fmt.Errorf("set bridge %s up: %w", i.Bridge, err), deleteLink(i.Bridge))
	}
	return nil
}

// writeCNIConfig writes the bridge network for the CRI plugin. The CRI
// plugin brings up each pod's lo itself with the loopback plugin binary.
func (i *Instance) writeCNIConfig(subnet *net.IPNet) error {
	ip := subnet.IP.To4()
	host := func(last byte) string { return net.IPv4(ip[0], ip[1], ip[2], last).String() }
	conf := map[string]any{
		"cniVersion": "0.4.0",
		"name":       i.NetworkName,
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      i.Bridge,
				"isGateway":   false, // the bridge already has .1; true would also turn on ip_forward
				"ipMasq":      false,
				"hairpinMode": false,
				"ipam": map[string]any{
					"type":    "host-local",
					"dataDir": filepath.Join(i.Dir, "cni", "ipam"),
					"ranges": []any{[]any{map[string]any{
						"subnet":     subnet.String(),
						"rangeStart": host(2),
						"rangeEnd":   host(attachFirst - 1), // the rest is AttachNetNS's
					}}},
				},
			},
		},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(i.cniConfDir(), "10-vigil.conflist"), b, 0o600)
}

// attachFirst is the first host number of the subnet that AttachNetNS
// hands out; CRI pods get the numbers below it.
const attachFirst = 128

// AttachNetNS connects n to the instance's bridge: a veth pair whose host
// end joins the bridge and whose other end is eth0 in n, up, with the next
// free address of the subnet's upper half (returned, without prefix length).
// Only the subnet is routed: traffic reaches pods, the host (e.BridgeIP) and
// other attached namespaces, nothing beyond. The veth goes with n.
func (e *Env) AttachNetNS(tb testing.TB, n *NetNS) string {
	tb.Helper()
	e.mu.Lock()
	hostNum := attachFirst + e.attached
	e.attached++
	e.mu.Unlock()
	if hostNum > 254 {
		tb.Fatalf("testenv: AttachNetNS: the subnet's %d addresses for namespaces are used up", 255-attachFirst)
	}
	_, subnet, err := net.ParseCIDR(e.Subnet)
	if err != nil {
		tb.Fatalf("testenv: AttachNetNS: subnet %q: %v", e.Subnet, err)
	}
	ip := net.IPv4(subnet.IP[0], subnet.IP[1], subnet.IP[2], byte(hostNum)).To4()
	hostName := fmt.Sprintf("vgh%s%02x", e.id[:6], hostNum)
	if err := attachVeth(e.Bridge, hostName, n.Path, &net.IPNet{IP: ip, Mask: subnet.Mask}); err != nil {
		tb.Fatalf("testenv: AttachNetNS %s: %v", n.Name, err)
	}
	tb.Cleanup(func() { _ = deleteLink(hostName) }) // usually gone with the netns already
	return ip.String()
}

func attachVeth(bridge, hostName, nsPath string, addr *net.IPNet) error {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", bridge, err)
	}
	target, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("open netns: %w", err)
	}
	defer target.Close()
	peerName := hostName + "p"
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostName, MasterIndex: br.Attrs().Index}, PeerName: peerName}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", hostName, err)
	}
	fail := func(err error) error { return errors.Join(err, deleteLink(hostName)) }
	peer, err := netlink.LinkByName(peerName)
	if err != nil {
		return fail(err)
	}
	if err := netlink.LinkSetNsFd(peer, int(target)); err != nil {
		return fail(fmt.Errorf("move %s into the netns: %w", peerName, err))
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		return fail(err)
	}
	h, err := netlink.NewHandleAt(target)
	if err != nil {
		return fail(fmt.Errorf("netlink in the netns: %w", err))
	}
	defer h.Close()
	inner, err := h.LinkByName(peerName)
	if err == nil {
		err = h.LinkSetName(inner, "eth0")
	}
	if err == nil {
		err = h.AddrAdd(inner, &netlink.Addr{IPNet: addr})
	}
	if err == nil {
		err = h.LinkSetUp(inner)
	}
	if err != nil {
		return fail(fmt.Errorf("set up eth0 in the netns: %w", err))
	}
	return nil
}

// deleteLink removes a link by name; a missing link is not an error.
func deleteLink(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

// NetNS is a named network namespace made for a test.
type NetNS struct {
	Name string // name under /run/netns, as `ip netns` shows it
	Path string // the bind-mounted file: join it with setns or an OCI spec
}

const netnsDir = "/run/netns"

var netnsSeq atomic.Int64

// NewNetNS creates a network namespace with lo up and nothing else, and
// removes it when the test ends. Containers that join it (ContainerSpec
// NetNSPath) keep their network across task restarts, unlike the private
// namespace a new task gets. It calls Require first.
func NewNetNS(tb testing.TB) *NetNS {
	tb.Helper()
	Require(tb)
	name := fmt.Sprintf("vigiltest-%d-%d", os.Getpid(), netnsSeq.Add(1))
	if err := createNetNS(name); err != nil {
		tb.Fatalf("testenv: create netns: %v", err)
	}
	n := &NetNS{Name: name, Path: filepath.Join(netnsDir, name)}
	tb.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil {
			tb.Errorf("testenv: delete netns %s: %v", name, err)
		}
	})
	return n
}

// createNetNS makes the namespace on a thread of its own that dies with the
// goroutine (it never unlocks), so that no other goroutine ever runs in it.
func createNetNS(name string) error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		h, err := netns.NewNamed(name)
		if err != nil {
			errc <- fmt.Errorf("create %s: %w", name, err)
			return
		}
		defer h.Close()
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			errc <- errors.Join(fmt.Errorf("set lo up in %s: %w", name, err), netns.DeleteNamed(name))
			return
		}
		errc <- nil
	}()
	return <-errc
}

// Do runs fn on an OS thread inside the namespace; see InNetNS.
func (n *NetNS) Do(fn func() error) error { return InNetNS(n.Path, fn) }

// InNetNS runs fn on a locked OS thread switched into the network namespace
// at path (a /run/netns file or /proc/PID/ns/net), and switches back after.
// Sockets fn creates belong to that namespace and stay there, so a net.Conn
// dialed inside can be used from any goroutine afterwards. fn must not start
// goroutines that expect the namespace. Blocks until fn returns.
func InNetNS(path string, fn func() error) error {
	return vnetns.Do(path, fn) // the agent's own way in (internal/netns)
}

// sweepStaleNetNS removes namespaces NewNetNS made in test binaries that
// are gone.
func sweepStaleNetNS() {
	ents, _ := os.ReadDir(netnsDir)
	for _, ent := range ents {
		rest, ok := strings.CutPrefix(ent.Name(), "vigiltest-")
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); err == nil || errors.Is(err, syscall.EPERM) {
			continue // alive
		}
		_ = netns.DeleteNamed(ent.Name())
	}
}
