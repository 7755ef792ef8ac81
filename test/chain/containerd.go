package chain

// This file runs a containerd of the chain's own for the demo, outside any
// test. It mirrors internal/testenv's settings (the CRI sandbox settings this
// machine needs, a private CNI bridge, the same test images) because testenv
// only offers them through testing.TB. It should shrink to calls into
// testenv once testenv exports non-TB equivalents of its containerd config
// and image archives (see the test/e2e report); the end-to-end test already
// uses testenv itself.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/vigilhq/vigil/internal/testenv"
)

// Image references the chain uses: the harness's own.
const (
	BusyboxRef  = testenv.BusyboxRef
	WorkloadRef = testenv.WorkloadRef
	PauseRef    = "docker.io/vigil/pause:test"
	// CRINamespace is the containerd namespace of the CRI plugin.
	CRINamespace = "k8s.io"
)

// Containerd is a private containerd with the CRI plugin, for the demo: its
// socket, root, state, config and logs all live under Dir, its CRI pods on a
// private bridge, its containers' cgroups under CgroupParent.
type Containerd struct {
	Dir, Address, Root, State, Config, LogPath string
	// Bridge is the CNI bridge for CRI pods, Subnet its private /24 (the
	// bridge holds .1). Pods get no route out of it.
	Bridge, Subnet string
	// CgroupParent is where containers started by the chain put their
	// cgroups (the same path in every hierarchy), so that teardown finds them.
	CgroupParent string

	proc *Process
}

// NewContainerd describes (does not start) a containerd in dir.
func NewContainerd(dir, bridge, subnet, cgroupParent string) *Containerd {
	dir, _ = filepath.Abs(dir)
	cd := filepath.Join(dir, "containerd")
	return &Containerd{
		Dir:          cd,
		Address:      filepath.Join(cd, "containerd.sock"),
		Root:         filepath.Join(cd, "root"),
		State:        filepath.Join(cd, "state"),
		Config:       filepath.Join(cd, "config.toml"),
		LogPath:      filepath.Join(dir, "logs", "containerd.log"),
		Bridge:       bridge,
		Subnet:       subnet,
		CgroupParent: cgroupParent,
	}
}

func (c *Containerd) cniConfDir() string { return filepath.Join(c.Dir, "cni", "net.d") }
func (c *Containerd) runDir() string     { return filepath.Dir(c.Dir) }

// Start creates the bridge and configs, starts containerd as a recorded
// process and waits until it answers.
func (c *Containerd) Start(ctx context.Context) error {
	for _, d := range []string{c.Root, c.State, c.cniConfDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	if err := c.setupBridge(); err != nil {
		return err
	}
	if err := os.WriteFile(c.Config, []byte(c.configTOML()), 0o600); err != nil {
		return err
	}
	p, err := startProcess(c.runDir(), "containerd", "containerd", []string{"--config", c.Config, "--log-level", "info"}, nil, true)
	if err != nil {
		return err
	}
	c.proc = p
	cl, err := client.New(c.Address, client.WithTimeout(time.Second))
	if err != nil {
		return err
	}
	defer cl.Close()
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for {
		if _, err := cl.Version(wctx); err == nil {
			return nil
		}
		if !p.Running() {
			return fmt.Errorf("containerd exited during start-up; see %s", p.LogPath)
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("containerd did not answer on %s within 20s; see %s", c.Address, p.LogPath)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// configTOML is containerd 1.6's configuration, with the CRI settings this
// machine needs (see internal/testenv and ENVIRONMENT.md).
func (c *Containerd) configTOML() string {
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[7]q
    max_conf_num = 1
`, c.Root, c.State, c.Address, c.Address+".ttrpc", filepath.Join(c.Dir, "opt"), PauseRef, c.cniConfDir())
}

// setupBridge creates the pods' bridge with the subnet's .1 and writes the
// CNI config. A subnet already routed on this host is refused.
func (c *Containerd) setupBridge() error {
	_, subnet, err := net.ParseCIDR(c.Subnet)
	if err != nil {
		return fmt.Errorf("subnet %q: %w", c.Subnet, err)
	}
	ip := subnet.IP.To4()
	host := func(last byte) string { return net.IPv4(ip[0], ip[1], ip[2], last).String() }
	if _, err := net.InterfaceByName(c.Bridge); err != nil {
		if used, err := subnetInUse(subnet); err != nil {
			return err
		} else if used {
			return fmt.Errorf("subnet %s is already used on this host: pick another one", c.Subnet)
		}
		for _, args := range [][]string{
			{"link", "add", c.Bridge, "type", "bridge"},
			{"addr", "add", host(1) + "/24", "dev", c.Bridge},
			{"link", "set", c.Bridge, "up"},
		} {
			if err := runCmd("ip", args...); err != nil {
				return err
			}
		}
	}
	conf := fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "vigil-demo",
  "plugins": [{
    "type": "bridge", "bridge": %q, "isGateway": false, "ipMasq": false, "hairpinMode": false,
    "ipam": {"type": "host-local", "dataDir": %q,
             "ranges": [[{"subnet": %q, "rangeStart": %q, "rangeEnd": %q}]]}
  }]
}
`, c.Bridge, filepath.Join(c.Dir, "cni", "ipam"), c.Subnet, host(2), host(254))
	return os.WriteFile(filepath.Join(c.cniConfDir(), "10-vigil-demo.conflist"), []byte(conf), 0o644)
}

// subnetInUse reports whether a host address falls in subnet.
func subnetInUse(subnet *net.IPNet) (bool, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false, err
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && (subnet.Contains(n.IP) || n.Contains(subnet.IP)) {
			return true, nil
		}
	}
	return false, nil
}

// ImportImages imports the busybox and workload images into namespace and
// the CRI namespace, and the pause image into the CRI namespace. workloadBin
// is a static build of test/workload.
func (c *Containerd) ImportImages(ctx context.Context, namespace, workloadBin string) error {
	images, err := buildImages(workloadBin)
	if err != nil {
		return err
	}
	cl, err := client.New(c.Address, client.WithTimeout(2*time.Second))
	if err != nil {
		return err
	}
	defer cl.Close()
	for _, ns := range []string{namespace, CRINamespace} {
		for _, img := range images {
			if img.ref == PauseRef && ns != CRINamespace {
				continue
			}
			if err := importArchive(namespaces.WithNamespace(ctx, ns), cl, img); err != nil {
				return fmt.Errorf("import %s into %s: %w", img.ref, ns, err)
			}
		}
	}
	return nil
}

// Teardown removes everything a containerd of this layout holds or left
// behind: CRI pods, tasks and containers (when it answers), the daemon (by
// its recorded pid), its shims, mounts under its directory, the bridge and
// the cgroups. It keeps going after errors and is safe when nothing runs.
func (c *Containerd) Teardown(ctx context.Context) error {
	var errs []error
	if p, ok, err := LoadProcess(c.runDir(), "containerd"); err != nil {
		errs = append(errs, err)
	} else if ok && p.Running() {
		rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		errs = append(errs, RemovePods(rctx, c.Address), RemoveContainers(rctx, c.Address))
		cancel()
		errs = append(errs, p.Stop(10*time.Second))
	} else if ok {
		_ = os.Remove(p.PIDFile)
	}
	errs = append(errs, killShims(c.Address))
	if c.CgroupParent != "" {
		errs = append(errs, removeCgroupTree(c.CgroupParent))
	}
	errs = append(errs, unmountUnder(c.Dir))
	if _, err := net.InterfaceByName(c.Bridge); err == nil {
		errs = append(errs, runCmd("ip", "link", "del", c.Bridge))
	}
	return errors.Join(errs...)
}

// killShims SIGKILLs the containerd shims serving address.
func killShims(address string) error {
	var pids []int
	for _, pid := range allPIDs() {
		args := cmdline(pid)
		if len(args) == 0 || !strings.Contains(filepath.Base(args[0]), "containerd-shim") {
			continue
		}
		for i, a := range args {
			if (a == "-address" || a == "--address") && i+1 < len(args) && args[i+1] == address {
				pids = append(pids, pid)
			}
		}
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}
