package chain

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vigilhq/vigil/internal/testenv"
)

// Image references the chain uses: the harness's own.
const (
	BusyboxRef  = testenv.BusyboxRef
	WorkloadRef = testenv.WorkloadRef
	PauseRef    = testenv.PauseRef
	// CRINamespace is the containerd namespace of the CRI plugin.
	CRINamespace = testenv.CRINamespace
)

// NameContainerd is the name under which the chain records its containerd
// in Dir/run.
const NameContainerd = "containerd"

// Containerd is a private containerd with the CRI plugin for the demo, a
// testenv.Instance that outlives the program that started it: its socket,
// root, state and config live under Dir, its log in the run dir's logs, its
// CRI pods on a private bridge, its containers' cgroups under CgroupParent.
// Its pid is recorded like the chain's other processes.
type Containerd struct {
	Dir, Address, LogPath string
	// Bridge is the CNI bridge for CRI pods, Subnet its private /24 (the
	// bridge holds .1). Pods get no route out of it.
	Bridge, Subnet string
	// CgroupParent is where containers started by the chain put their
	// cgroups (the same path in every hierarchy), so that teardown finds them.
	CgroupParent string

	runDir string
}

// NewContainerd describes (does not start) a containerd in dir/containerd,
// logging to dir/logs/containerd.log.
func NewContainerd(dir, bridge, subnet, cgroupParent string) *Containerd {
	dir, _ = filepath.Abs(dir)
	cd := filepath.Join(dir, "containerd")
	return &Containerd{
		Dir:          cd,
		Address:      filepath.Join(cd, "containerd.sock"),
		LogPath:      filepath.Join(dir, "logs", "containerd.log"),
		Bridge:       bridge,
		Subnet:       subnet,
		CgroupParent: cgroupParent,
		runDir:       dir,
	}
}

// Start creates the bridge and configs, starts containerd, waits until it
// answers and records its pid in the run dir.
func (c *Containerd) Start(ctx context.Context) error {
	inst, err := testenv.NewInstance(testenv.InstanceOptions{
		Dir:          c.Dir,
		LogPath:      c.LogPath,
		Bridge:       c.Bridge,
		Subnet:       c.Subnet,
		CgroupParent: c.CgroupParent,
		NetworkName:  c.Bridge, // unique on the host, as link names are
	})
	if err != nil {
		return err
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", inst.PID()))
	if err == nil {
		err = recordProcess(c.runDir, NameContainerd, inst.PID(), exe)
	}
	if err != nil {
		return errors.Join(err, inst.Close())
	}
	return nil
}

// ImportImages imports the busybox and workload images into namespace and
// the CRI namespace, and the pause image into the CRI namespace. It builds
// test/workload (cached), so it must run inside the repository.
func (c *Containerd) ImportImages(ctx context.Context, namespace string) error {
	if err := testenv.ImportImages(ctx, c.Address, namespace, BusyboxRef, WorkloadRef); err != nil {
		return err
	}
	return testenv.ImportImages(ctx, c.Address, CRINamespace, BusyboxRef, WorkloadRef, PauseRef)
}

// Teardown removes everything a containerd of this layout holds or left
// behind (testenv.TeardownInstance: CRI pods, tasks and containers when it
// answers, the daemon, its shims, runc state, mounts under its directory,
// the bridge, the cgroups and the directory) and its pid record. It keeps
// going after errors and is safe when nothing runs.
func (c *Containerd) Teardown(ctx context.Context) error {
	err := testenv.TeardownInstance(ctx, c.Dir)
	if err == nil {
		err = os.Remove(filepath.Join(c.runDir, "run", NameContainerd+".pid"))
		if errors.Is(err, os.ErrNotExist) {
			err = nil
		}
	}
	return err
}
