package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vishvananda/netlink"
)

// TestInstanceTornDownFromItsDir runs an Instance the way the demo does
// (given dir, bridge, subnet and cgroup parent; images and a pod through the
// non-TB API), lets its owner "exit", and tears it down from its dir alone,
// twice.
func TestInstanceTornDownFromItsDir(t *testing.T) {
	t.Parallel()
	Require(t)
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	id := hex.EncodeToString(b[:])
	subnet := freeSubnet(t)
	dir := filepath.Join(t.TempDir(), "containerd")
	opts := InstanceOptions{
		Dir:          dir,
		LogPath:      filepath.Join(filepath.Dir(dir), "logs", "containerd.log"),
		Bridge:       "vgi" + id,
		Subnet:       subnet,
		CgroupParent: "/vigil-test-inst-" + id,
	}
	inst, err := NewInstance(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = inst.Close() }) // a no-op when the test got through
	if inst.Subnet != subnet || inst.BridgeIP == "" || inst.PID() == 0 {
		t.Fatalf("instance: subnet %q (want %q), bridge IP %q, pid %d", inst.Subnet, subnet, inst.BridgeIP, inst.PID())
	}
	if _, err := NewInstance(opts); err == nil {
		t.Fatal("a second instance in the same dir started")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := ImportImages(ctx, inst.Address, "other", "docker.io/library/nginx:latest"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("ImportImages of an unknown ref: %v, want ErrInvalid", err)
	}
	if err := ImportImages(ctx, inst.Address, CRINamespace, WorkloadRef, PauseRef); err != nil {
		t.Fatal(err)
	}
	pod, err := RunPod(ctx, inst.Address, PodSpec{
		Namespace:    "shop",
		Name:         "frontend",
		CgroupParent: inst.CgroupParent + "/pod-frontend",
		LogDir:       filepath.Join(filepath.Dir(dir), "logs", "pod-frontend"),
		Containers:   []PodContainer{{Name: "web", Image: WorkloadRef, Args: []string{"serve", "--http", ":8080"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if pod.IP == "" || pod.UID == "" {
		t.Fatalf("pod: %+v", pod)
	}
	ctrID := pod.ContainerIDs["web"]
	if _, err := os.Stat(filepath.Join(inst.State, "runc", CRINamespace, ctrID)); err != nil {
		t.Errorf("CRI container's runc state is not in the instance's runc root: %v", err)
	}
	if _, err := os.Stat(filepath.Join(runcRoot, CRINamespace, ctrID)); err == nil {
		t.Errorf("CRI container's runc state is in the host-wide root %s", runcRoot)
	}
	shims := shimPIDs(inst.Address)
	if len(shims) == 0 {
		t.Fatal("no shim for the pod")
	}

	// The owning program exits: its lock goes, containerd stays.
	inst.lock.Close()
	for i := range 2 {
		if err := TeardownInstance(ctx, dir); err != nil {
			t.Fatalf("teardown %d: %v", i+1, err)
		}
	}
	select {
	case <-inst.exited:
	case <-time.After(5 * time.Second):
		t.Error("containerd survived the teardown")
	}
	for _, pid := range shims {
		if alive(pid) {
			t.Errorf("shim %d survived the teardown", pid)
		}
	}
	for _, p := range []string{dir, pod.NetNSPath} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s survived the teardown (stat: %v)", p, err)
		}
	}
	if _, err := os.Stat(opts.LogPath); err != nil {
		t.Errorf("the log outside the dir is gone: %v", err)
	}
	if _, err := netlink.LinkByName(opts.Bridge); err == nil {
		t.Errorf("bridge %s survived the teardown", opts.Bridge)
	}
	if left, _ := filepath.Glob("/sys/fs/cgroup/*" + opts.CgroupParent); len(left) > 0 {
		t.Errorf("cgroups survived the teardown: %v", left)
	}
}

// freeSubnet returns a /24 no host address or route uses.
func freeSubnet(t *testing.T) string {
	t.Helper()
	for range 20 {
		subnet, _, err := randomSubnet()
		if err != nil {
			t.Fatal(err)
		}
		if used, err := subnetInUse(subnet, ""); err != nil {
			t.Fatal(err)
		} else if !used {
			return subnet.String()
		}
	}
	t.Fatal("no free subnet")
	return ""
}
