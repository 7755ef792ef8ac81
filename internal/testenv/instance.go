package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"golang.org/x/sys/unix"
)

// InstanceOptions configure NewInstance. The zero value is what Containerd
// uses for a test binary: a new temp dir and a random bridge, subnet and
// cgroup parent.
type InstanceOptions struct {
	// Dir holds the instance: socket, root, state, config, CNI config and
	// IPAM data, pod logs. "" means a new dir under os.TempDir() named
	// vigil-containerd-*, which the next test binary's stale sweep cleans
	// up if its owner died. A given Dir is created if missing.
	Dir string
	// LogPath is containerd's log file; "" means Dir/containerd.log.
	LogPath string
	// Bridge names the CNI bridge; "" means "vgl" and the instance's id.
	// A given bridge that already exists is reused only if it holds the
	// subnet's .1 (an earlier run of the same instance); else it is refused.
	Bridge string
	// Subnet is the pods' private /24 in CIDR notation (the bridge holds
	// .1); "" picks a free one in 10.200-249.x.0/24. A given subnet that a
	// host address or route not on Bridge overlaps is refused.
	Subnet string
	// CgroupParent is where containers started for the instance put their
	// cgroups (the same path in every hierarchy); "" means /vigil-test-<id>.
	// Teardown removes the whole subtree.
	CgroupParent string
	// NetworkName is the CNI network's name, unique on the host (CNI caches
	// results per network and container id); "" means vigil-<id>.
	NetworkName string
}

// Instance is a private containerd 1.6 with the CRI plugin, on its own
// bridge and cgroup parent. Its containerd runs in a session of its own: it
// outlives the program that started it unless Close stops it, and
// TeardownInstance removes it later from its Dir alone. Fields are fixed
// once NewInstance returns; methods are safe for concurrent use.
//
// CRI containers keep their runc state under State/runc. Tasks created
// through the plain containerd API (ctr, client.NewTask) keep theirs in the
// host-wide /run/containerd/runc/<namespace>/<id>, which containerd 1.6 has
// no daemon setting to move (only the unused v1 runtime has runtime_root):
// two instances must not run the same namespace and container id at once.
type Instance struct {
	ID         string // random, 8 hex digits
	Dir        string // everything of the instance but LogPath lives here
	Address    string // containerd's socket
	Root       string // containerd's root directory
	State      string // containerd's state directory
	ConfigPath string // containerd's config.toml
	LogPath    string // containerd's log

	// CgroupParent holds the cgroups of the instance's containers.
	CgroupParent string
	// Bridge is the CNI bridge, BridgeIP its address (the subnet's .1),
	// Subnet the pods' /24, NetworkName the CNI network's name.
	Bridge, BridgeIP, Subnet, NetworkName string

	lock   *os.File // flocked while this process owns the instance
	mu     sync.Mutex
	proc   *os.Process
	exited chan struct{} // closed when proc exits
	closed bool
}

// instanceInfo is written to the instance dir so that another program can
// tear the instance down: `demo down`, or a later test binary after one
// that died without teardown (a timeout panic).
type instanceInfo struct {
	Address      string `json:"address"`
	Config       string `json:"config"`
	Bridge       string `json:"bridge"`
	CgroupParent string `json:"cgroupParent"`
	PID          int    `json:"pid"`
}

// NewInstance creates the instance's dir, bridge and config, starts its
// containerd and waits until it answers (at most 20 s). On error it removes
// what it created. The caller owns the instance: Close, or TeardownInstance
// from another program, removes it.
func NewInstance(opts InstanceOptions) (inst *Instance, err error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	id := hex.EncodeToString(b[:])
	dir := opts.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", instancePrefix); err != nil {
			return nil, err
		}
	} else {
		if dir, err = filepath.Abs(dir); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
	}
	i := &Instance{
		ID:           id,
		Dir:          dir,
		Address:      filepath.Join(dir, "containerd.sock"),
		Root:         filepath.Join(dir, "root"),
		State:        filepath.Join(dir, "state"),
		ConfigPath:   filepath.Join(dir, "config.toml"),
		LogPath:      opts.LogPath,
		CgroupParent: opts.CgroupParent,
		Bridge:       opts.Bridge,
		NetworkName:  opts.NetworkName,
	}
	if i.LogPath == "" {
		i.LogPath = filepath.Join(dir, "containerd.log")
	}
	if i.CgroupParent == "" {
		i.CgroupParent = "/vigil-test-" + id
	}
	if i.Bridge == "" {
		i.Bridge = "vgl" + id
	}
	if i.NetworkName == "" {
		i.NetworkName = "vigil-" + id
	}
	i.lock, err = os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(i.lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		i.lock.Close()
		return nil, fmt.Errorf("lock instance dir %s (another program owns it): %w", dir, err)
	}
	defer func() {
		if err != nil {
			if cerr := i.Close(); cerr != nil {
				err = fmt.Errorf("%w (and teardown: %v)", err, cerr)
			}
		}
	}()
	for _, d := range []string{i.Root, i.State, i.logDir(), i.cniConfDir(), filepath.Dir(i.LogPath)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	if err := i.writeInfo(0); err != nil {
		return nil, err
	}
	if err := i.setupNetwork(opts.Subnet); err != nil {
		return nil, err
	}
	if err := os.WriteFile(i.ConfigPath, []byte(i.configTOML()), 0o600); err != nil {
		return nil, err
	}
	if err := i.Start(); err != nil {
		return nil, err
	}
	return i, nil
}

func (i *Instance) logDir() string      { return filepath.Join(i.Dir, "logs") }
func (i *Instance) cniConfDir() string  { return filepath.Join(i.Dir, "cni", "net.d") }
func (i *Instance) ownRuncRoot() string { return filepath.Join(i.State, "runc") }

func (i *Instance) info(pid int) instanceInfo {
	return instanceInfo{Address: i.Address, Config: i.ConfigPath, Bridge: i.Bridge, CgroupParent: i.CgroupParent, PID: pid}
}

func (i *Instance) writeInfo(pid int) error {
	b, err := json.Marshal(i.info(pid))
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(i.Dir, "instance.json"), b, 0o600)
}

// configTOML is containerd's configuration (version 2, as 1.6 reads it).
func (i *Instance) configTOML() string {
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

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
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_tls_streaming = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = %[9]q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[7]q
    conf_dir = %[8]q
    max_conf_num = 1
`, i.Root, i.State, i.Address, i.Address+".ttrpc", filepath.Join(i.Dir, "opt"), PauseRef, cniBinDir, i.cniConfDir(), i.ownRuncRoot())
}

// PID returns containerd's pid, or 0 when it is not running.
func (i *Instance) PID() int {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.proc == nil {
		return 0
	}
	return i.proc.Pid
}

// Start starts containerd (again, after Kill) on the instance's root, state
// and socket, and waits until it answers. It blocks for at most 20 s.
func (i *Instance) Start() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.proc != nil {
		return errors.New("containerd is already running")
	}
	logf, err := os.OpenFile(i.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("containerd", "--config", i.ConfigPath, "--log-level", "info")
	cmd.Stdout, cmd.Stderr = logf, logf
	// A session of its own: a ^C in the terminal does not reach it before
	// teardown does, and it outlives this program unless stopped.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start containerd: %w", err)
	}
	exited := make(chan struct{})
	go func() { // owned by the process: ends when containerd exits
		_ = cmd.Wait()
		close(exited)
	}()
	i.proc, i.exited = cmd.Process, exited
	if err := i.writeInfo(cmd.Process.Pid); err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	c, err := client.New(i.Address, client.WithTimeout(time.Second))
	if err != nil {
		return err
	}
	defer c.Close()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := c.Version(ctx); err == nil {
			return nil
		}
		select {
		case <-exited:
			i.proc = nil
			return fmt.Errorf("containerd exited during startup; log tail:\n%s", i.logTail())
		case <-ctx.Done():
			return fmt.Errorf("containerd did not answer within %v; log tail:\n%s", readyTimeout, i.logTail())
		case <-tick.C:
		}
	}
}

// Kill sends SIGKILL to containerd and waits until it is gone; running
// shims and their tasks keep running. Start brings it back.
func (i *Instance) Kill() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.proc == nil {
		return nil
	}
	if err := i.proc.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	<-i.exited
	i.proc = nil
	return nil
}

// stop asks containerd to exit (SIGTERM), and kills it after 10 s.
func (i *Instance) stop() error {
	i.mu.Lock()
	proc, exited := i.proc, i.exited
	i.mu.Unlock()
	if proc == nil {
		return nil
	}
	_ = proc.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		i.mu.Lock()
		i.proc = nil
		i.mu.Unlock()
		return nil
	case <-time.After(10 * time.Second):
		return i.Kill()
	}
}

// Close removes everything the instance created: CRI pods, tasks and
// containers in every namespace, containerd itself, leftover shims and
// processes, runc state, mounts, the bridge, the cgroups and Dir (kept when
// a step failed, for a look and for the next sweep). LogPath outside Dir
// stays. It is idempotent and keeps going after errors, returning them
// joined. It blocks for up to about 80 s.
func (i *Instance) Close() error {
	i.mu.Lock()
	if i.closed {
		i.mu.Unlock()
		return nil
	}
	i.closed = true
	running := i.proc != nil
	i.mu.Unlock()

	var errs []error
	if running {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		errs = append(errs, removePods(ctx, i.Address), removeContainers(ctx, i.Address))
		cancel()
	}
	errs = append(errs, i.stop())
	errs = append(errs, cleanupInstance(i.Dir, i.info(0), errors.Join(errs...) == nil))
	if i.lock != nil {
		i.lock.Close()
	}
	return errors.Join(errs...)
}

// TeardownInstance removes the instance in dir that another program (or an
// earlier run of this one) started, whether its containerd still runs or
// died: if the pid recorded in dir still runs containerd with dir's config,
// it removes CRI pods, tasks and containers through it and stops it
// (SIGTERM, SIGKILL after 10 s); then it removes shims, runc state, mounts,
// the bridge, the cgroups and dir, as Close does. A missing dir is not an
// error, so it is safe to call twice. It must not run while another
// program uses the instance.
func TeardownInstance(ctx context.Context, dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	info := instanceInfo{Address: filepath.Join(dir, "containerd.sock"), Config: filepath.Join(dir, "config.toml")}
	if b, err := os.ReadFile(filepath.Join(dir, "instance.json")); err == nil {
		if err := json.Unmarshal(b, &info); err != nil {
			return fmt.Errorf("%s: %w", filepath.Join(dir, "instance.json"), err)
		}
	}
	var errs []error
	if runsContainerd(info.PID, info.Config) {
		rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		errs = append(errs, removePods(rctx, info.Address), removeContainers(rctx, info.Address))
		cancel()
		errs = append(errs, stopPID(info.PID, 10*time.Second))
	}
	errs = append(errs, cleanupInstance(dir, info, errors.Join(errs...) == nil))
	return errors.Join(errs...)
}

// runsContainerd reports whether pid is a live containerd run with config
// (so that a recycled pid is never taken for it).
func runsContainerd(pid int, config string) bool {
	if pid <= 0 || !alive(pid) {
		return false
	}
	args := cmdline(pid)
	return len(args) > 0 && strings.Contains(strings.Join(args, " "), config)
}

// stopPID sends SIGTERM to a process that is not our child, waits up to
// grace, then sends SIGKILL and waits up to 5 s more.
func stopPID(pid int, grace time.Duration) error {
	_ = syscall.Kill(pid, syscall.SIGTERM)
	if waitGone(pid, grace) {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	if waitGone(pid, 5*time.Second) {
		return nil
	}
	return fmt.Errorf("containerd (pid %d) survived SIGKILL", pid)
}

func waitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for alive(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// logTail returns the last lines of containerd's log.
func (i *Instance) logTail() string {
	b, err := os.ReadFile(i.LogPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	return lastLines(b, 30)
}
