package testenv

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	cerrdefs "github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// removePods stops and removes every CRI pod sandbox of the containerd at
// address (and with it its containers and network namespace).
func removePods(ctx context.Context, address string) error {
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	list, err := rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("list pods: %w", err)
	}
	var errs []error
	for _, p := range list.Items {
		if _, err := rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			errs = append(errs, fmt.Errorf("stop pod %s: %w", p.Id, err))
		}
		if _, err := rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			errs = append(errs, fmt.Errorf("remove pod %s: %w", p.Id, err))
		}
	}
	return errors.Join(errs...)
}

// removeContainers kills and deletes every task and container in every
// namespace of the containerd at address.
func removeContainers(ctx context.Context, address string) error {
	c, err := client.New(address, client.WithTimeout(2*time.Second))
	if err != nil {
		return err
	}
	defer c.Close()
	nss, err := c.NamespaceService().List(ctx)
	if err != nil {
		return fmt.Errorf("list namespaces: %w", err)
	}
	var errs []error
	for _, ns := range nss {
		nctx := namespaces.WithNamespace(ctx, ns)
		ctrs, err := c.Containers(nctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("list containers in %s: %w", ns, err))
			continue
		}
		for _, ctr := range ctrs {
			if err := deleteContainer(nctx, ctr); err != nil {
				errs = append(errs, fmt.Errorf("%s/%s: %w", ns, ctr.ID(), err))
			}
		}
	}
	return errors.Join(errs...)
}

// deleteContainer kills the container's task, deletes it, and deletes the
// container with its snapshot. Missing pieces are not errors.
func deleteContainer(ctx context.Context, ctr client.Container) error {
	// containerd's restart monitor would start a new task for a container
	// labelled to run once its task is gone; take the labels off first.
	labels, err := ctr.Labels(ctx)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return fmt.Errorf("labels: %w", err)
	}
	if _, restart := splitRestartLabels(labels); len(restart) > 0 {
		if err := ctr.Update(ctx, withoutRestartLabels); err != nil && !isNotFound(err) {
			return fmt.Errorf("remove restart labels: %w", err)
		}
	}
	task, err := ctr.Task(ctx, nil)
	if err == nil {
		if _, err := task.Delete(ctx, client.WithProcessKill); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete task: %w", err)
		}
	} else if !isNotFound(err) {
		return fmt.Errorf("load task: %w", err)
	}
	if err := ctr.Delete(ctx, client.WithSnapshotCleanup); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete container: %w", err)
	}
	return nil
}

// withoutRestartLabels removes the containerd.io/restart.* labels.
func withoutRestartLabels(_ context.Context, _ *client.Client, c *containers.Container) error {
	for k := range c.Labels {
		if strings.HasPrefix(k, restartLabelPrefix) {
			delete(c.Labels, k)
		}
	}
	return nil
}

// cleanupInstance removes what an instance leaves on the host once its
// containerd is gone: shims and processes, mounts, bridge, cgroups, and dir
// if removeDir and nothing failed.
func cleanupInstance(dir string, info instanceInfo, removeDir bool) error {
	var errs []error
	errs = append(errs, killShims(info.Address))
	errs = append(errs, cleanupRuncState(filepath.Join(dir, "state"), info.Address))
	if info.CgroupParent != "" {
		errs = append(errs, removeCgroupTree(info.CgroupParent))
	}
	errs = append(errs, unmountUnder(dir))
	if info.Bridge != "" {
		errs = append(errs, deleteLink(info.Bridge))
	}
	if err := errors.Join(errs...); err != nil || !removeDir {
		return err
	}
	return os.RemoveAll(dir)
}

// killShims SIGKILLs every containerd shim serving the containerd at
// address, and waits (briefly) for them to go.
func killShims(address string) error {
	if address == "" {
		return nil
	}
	pids := shimPIDs(address)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if left := shimPIDs(address); len(left) > 0 {
		return fmt.Errorf("shims still running: %v", left)
	}
	return nil
}

// shimPIDs lists processes whose command line names containerd-shim and the
// given containerd address.
func shimPIDs(address string) []int {
	var pids []int
	for _, pid := range allPIDs() {
		args := cmdline(pid)
		if len(args) == 0 || !strings.Contains(filepath.Base(args[0]), "containerd-shim") {
			continue
		}
		for i, a := range args {
			if (a == "-address" || a == "--address") && i+1 < len(args) && args[i+1] == address {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// alive reports whether pid is a process that has not exited (a zombie
// waiting for its parent to reap it has).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ...: comm may hold spaces and parens, so look after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] != 'Z' && b[i+2] != 'X'
}

func allPIDs() []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, ent := range ents {
		if pid, err := strconv.Atoi(ent.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

func cmdline(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// runcRoot is where containerd's runc shim keeps runc's state, one root per
// namespace, shared by every containerd on the host; shimSocketDir holds the
// shims' sockets.
const (
	runcRoot      = "/run/containerd/runc"
	shimSocketDir = "/run/containerd/s"
)

// cleanupRuncState removes what killed shims leave behind: runc's state of
// each task whose bundle is still in the instance's state dir (in the
// instance's own runc root, where CRI tasks keep it, or the host-wide one),
// and the shim's socket. It then removes host-wide runc roots of namespaces
// the instance used that are now empty (except the well-known shared ones).
func cleanupRuncState(state, address string) error {
	var errs []error
	taskDir := filepath.Join(state, "io.containerd.runtime.v2.task")
	nss, _ := os.ReadDir(taskDir)
	for _, ns := range nss {
		ids, _ := os.ReadDir(filepath.Join(taskDir, ns.Name()))
		root := filepath.Join(runcRoot, ns.Name())
		for _, id := range ids {
			for _, r := range []string{filepath.Join(state, "runc", ns.Name()), root} {
				if _, err := os.Stat(filepath.Join(r, id.Name())); err != nil {
					continue
				}
				out, err := exec.Command("runc", "--root", r, "delete", "--force", id.Name()).CombinedOutput()
				if err != nil {
					errs = append(errs, fmt.Errorf("runc delete %s/%s: %w: %s", ns.Name(), id.Name(), err, strings.TrimSpace(string(out))))
				}
			}
			sum := sha256.Sum256([]byte(filepath.Join(address, ns.Name(), id.Name())))
			_ = os.Remove(filepath.Join(shimSocketDir, hex.EncodeToString(sum[:])))
		}
		switch ns.Name() {
		case "default", "k8s.io", "moby":
		default:
			_ = os.Remove(root) // only if empty: another instance may use the namespace
		}
	}
	return errors.Join(errs...)
}

// removeCgroupTree kills every process left in the cgroup subtree (in every
// mounted hierarchy) and removes its directories, deepest first.
func removeCgroupTree(parent string) error {
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*")
	hierarchies = append(hierarchies, "/sys/fs/cgroup")
	var errs []error
	for _, h := range hierarchies {
		root := filepath.Join(h, parent)
		if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
			continue
		}
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			if err := rmdirCgroup(d); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// rmdirCgroup kills the processes of one cgroup and removes it, retrying
// while the kernel still counts dying processes.
func rmdirCgroup(dir string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err == nil {
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup %s: %w", dir, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// unmountUnder detaches every mount at or below dir, deepest first.
func unmountUnder(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	prefix := filepath.Clean(dir) + "/"
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		p := unescapeMountPath(fields[4])
		if strings.HasPrefix(p, prefix) || p == filepath.Clean(dir) {
			points = append(points, p)
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// sweepStale cleans up instances of test binaries that died without
// teardown (a test timeout panics past deferred calls): an instance whose
// lock file nobody holds is stale.
func sweepStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), instancePrefix+"*"))
	for _, dir := range dirs {
		lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR, 0)
		if err != nil {
			continue
		}
		if unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
			lock.Close() // live
			continue
		}
		var info instanceInfo
		if b, err := os.ReadFile(filepath.Join(dir, "instance.json")); err == nil {
			_ = json.Unmarshal(b, &info)
		} else if st, err := os.Stat(dir); err != nil || time.Since(st.ModTime()) < time.Minute {
			// Without instance.json it may be an instance being born that
			// has not taken its lock yet: leave it alone for a while.
			lock.Close()
			continue
		}
		if info.PID > 0 {
			if args := cmdline(info.PID); len(args) > 0 && strings.Contains(strings.Join(args, " "), info.Config) {
				_ = syscall.Kill(info.PID, syscall.SIGKILL)
			}
		}
		if err := cleanupInstance(dir, info, true); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: cleaning up stale instance %s: %v\n", dir, err)
		}
		lock.Close()
	}
	sweepStaleNetNS()
}

func isNotFound(err error) bool { return cerrdefs.IsNotFound(err) }
