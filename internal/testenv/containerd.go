package testenv

import (
	"bytes"
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
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"golang.org/x/sys/unix"
)

const (
	cniBinDir   = "/usr/lib/cni"
	busyboxPath = "/bin/busybox"
	// instancePrefix names the temp dir of every instance; the stale-instance
	// sweep looks for it.
	instancePrefix = "vigil-containerd-"
	// readyTimeout bounds how long containerd may take to answer after start.
	readyTimeout = 20 * time.Second
)

// Env is a private containerd with the CRI plugin, run by this package for
// one test binary. Its fields are fixed once Containerd returns; its methods
// are safe for concurrent use by parallel tests.
type Env struct {
	Address    string // containerd socket path
	Root       string // containerd's root directory
	State      string // containerd's state directory
	Dir        string // the instance's temp dir holding all of the above, logs and configs
	CgroupRoot string // "/sys/fs/cgroup"

	// CgroupParent is the cgroup path (the same in every hierarchy) under
	// which RunContainer and RunPod place their containers, so that teardown
	// can find and remove everything this instance created.
	CgroupParent string
	// Bridge is the name of the CNI bridge on the host; BridgeIP its address
	// and Subnet the pods' private /24 (CIDR notation).
	Bridge, BridgeIP, Subnet string
	// LogPath is containerd's log file.
	LogPath string

	id      string
	config  string
	lock    *os.File // flocked for the instance's lifetime: marks it live for the stale sweep
	harness *client.Client

	mu      sync.Mutex
	proc    *os.Process
	exited  chan struct{} // closed when proc exits
	clients []*client.Client
	images  map[string]*imageImport // by namespace and ref
	defs    map[string]imageDef     // images built here, by ref
	// attached counts AttachNetNS calls: the next address to hand out.
	attached int
	stopped  bool
}

// instanceInfo is written to the instance dir so that a later test binary can
// clean up after one that died without tearing down (a timeout panic).
type instanceInfo struct {
	Address      string `json:"address"`
	Config       string `json:"config"`
	Bridge       string `json:"bridge"`
	CgroupParent string `json:"cgroupParent"`
	PID          int    `json:"pid"`
}

var shared struct {
	once sync.Once
	env  *Env
	err  error
}

// Run runs the package's tests and then tears down the package's containerd
// if a test started one. Use it from TestMain: os.Exit(testenv.Run(m)).
func Run(m *testing.M) int {
	code := m.Run()
	if shared.env != nil {
		if err := shared.env.teardown(); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: teardown: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// Containerd returns the test binary's private containerd, starting it on
// first use (after Require). A failure to start fails the test with
// containerd's log tail. The instance lives until Run tears it down; a test
// binary without testenv.Run in its TestMain leaks it.
func Containerd(tb testing.TB) *Env {
	tb.Helper()
	Require(tb)
	shared.once.Do(func() {
		sweepStale()
		shared.env, shared.err = newEnv()
	})
	if shared.err != nil {
		tb.Fatalf("testenv: start containerd: %v", shared.err)
	}
	return shared.env
}

// newEnv creates the instance dir, network and config, starts containerd and
// imports the CRI sandbox image.
func newEnv() (env *Env, err error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	id := hex.EncodeToString(b[:])
	dir, err := os.MkdirTemp("", instancePrefix)
	if err != nil {
		return nil, err
	}
	e := &Env{
		id:           id,
		Dir:          dir,
		Root:         filepath.Join(dir, "root"),
		State:        filepath.Join(dir, "state"),
		Address:      filepath.Join(dir, "containerd.sock"),
		CgroupRoot:   "/sys/fs/cgroup",
		CgroupParent: "/vigil-test-" + id,
		Bridge:       "vgl" + id,
		LogPath:      filepath.Join(dir, "containerd.log"),
		config:       filepath.Join(dir, "config.toml"),
		images:       map[string]*imageImport{},
		defs:         map[string]imageDef{},
	}
	e.lock, err = os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(e.lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return nil, fmt.Errorf("lock instance dir: %w", err)
	}
	defer func() {
		if err != nil {
			if terr := e.teardown(); terr != nil {
				err = fmt.Errorf("%w (and teardown: %v)", err, terr)
			}
		}
	}()
	for _, d := range []string{e.Root, e.State, e.logDir(), e.cniConfDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	if err := e.writeInfo(0); err != nil {
		return nil, err
	}
	if err := e.setupNetwork(); err != nil {
		return nil, err
	}
	if err := os.WriteFile(e.config, []byte(e.configTOML()), 0o600); err != nil {
		return nil, err
	}
	if err := e.start(); err != nil {
		return nil, err
	}
	e.harness, err = client.New(e.Address, client.WithTimeout(2*time.Second))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pause, err := pauseImage()
	if err != nil {
		return nil, err
	}
	if err := e.importImage(ctx, criNamespace, pause); err != nil {
		return nil, fmt.Errorf("import sandbox image: %w", err)
	}
	return e, nil
}

func (e *Env) logDir() string     { return filepath.Join(e.Dir, "logs") }
func (e *Env) cniConfDir() string { return filepath.Join(e.Dir, "cni", "net.d") }

func (e *Env) writeInfo(pid int) error {
	b, err := json.Marshal(instanceInfo{Address: e.Address, Config: e.config, Bridge: e.Bridge, CgroupParent: e.CgroupParent, PID: pid})
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(e.Dir, "instance.json"), b, 0o600)
}

// configTOML is containerd's configuration (version 2, as 1.6 reads it).
func (e *Env) configTOML() string {
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
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[7]q
    conf_dir = %[8]q
    max_conf_num = 1
`, e.Root, e.State, e.Address, e.Address+".ttrpc", filepath.Join(e.Dir, "opt"), pauseRef, cniBinDir, e.cniConfDir())
}

// start launches containerd and waits until it answers.
func (e *Env) start() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.proc != nil {
		return errors.New("containerd is already running")
	}
	logf, err := os.OpenFile(e.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("containerd", "--config", e.config, "--log-level", "info")
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so that a ^C to the test does not reach it
	// before teardown does.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start containerd: %w", err)
	}
	exited := make(chan struct{})
	go func() { // owned by the process: ends when containerd exits
		_ = cmd.Wait()
		close(exited)
	}()
	e.proc, e.exited = cmd.Process, exited
	if err := e.writeInfo(cmd.Process.Pid); err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	c, err := client.New(e.Address, client.WithTimeout(time.Second))
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
			e.proc = nil
			return fmt.Errorf("containerd exited during startup; log tail:\n%s", e.logTail())
		case <-ctx.Done():
			return fmt.Errorf("containerd did not answer within %v; log tail:\n%s", readyTimeout, e.logTail())
		case <-tick.C:
		}
	}
}

// kill sends SIGKILL to containerd and waits for it to exit. Shims survive.
func (e *Env) kill() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.proc == nil {
		return nil
	}
	if err := e.proc.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	<-e.exited
	e.proc = nil
	return nil
}

// stop asks containerd to exit (SIGTERM), and kills it after 10 s.
func (e *Env) stop() error {
	e.mu.Lock()
	proc, exited := e.proc, e.exited
	e.mu.Unlock()
	if proc == nil {
		return nil
	}
	_ = proc.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		e.mu.Lock()
		e.proc = nil
		e.mu.Unlock()
		return nil
	case <-time.After(10 * time.Second):
		return e.kill()
	}
}

// Kill sends SIGKILL to containerd and waits until it is gone; running
// shims and their tasks keep running. Start brings it back.
func (e *Env) Kill(tb testing.TB) {
	tb.Helper()
	if err := e.kill(); err != nil {
		tb.Fatalf("testenv: kill containerd: %v", err)
	}
}

// Start starts containerd again on the same root, state and socket after
// Kill, and waits until it and every client from Client answer again.
func (e *Env) Start(tb testing.TB) {
	tb.Helper()
	if err := e.start(); err != nil {
		tb.Fatalf("testenv: start containerd: %v", err)
	}
	if err := e.waitClients(); err != nil {
		tb.Fatalf("testenv: clients after restart: %v", err)
	}
}

// Restart is Kill then Start: a crash of containerd that its shims survive.
// The instance is shared by the test binary, so a test that restarts it
// must not run in parallel (t.Parallel) with tests that use it.
func (e *Env) Restart(tb testing.TB) {
	tb.Helper()
	e.Kill(tb)
	e.Start(tb)
}

// waitClients waits until every client of the instance reconnected (grpc
// backs off after the socket went away).
func (e *Env) waitClients() error {
	e.mu.Lock()
	clients := append([]*client.Client{e.harness}, e.clients...)
	e.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	for _, c := range clients {
		if c == nil {
			continue
		}
		for {
			if _, err := c.Version(ctx); err == nil {
				break
			} else if ctx.Err() != nil {
				return fmt.Errorf("client did not reconnect: %w", err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

// Client returns a new containerd client of the instance, closed at the
// end of the test. It has no default namespace: use namespaces.WithNamespace.
func (e *Env) Client(tb testing.TB) *client.Client {
	tb.Helper()
	c, err := client.New(e.Address, client.WithTimeout(2*time.Second))
	if err != nil {
		tb.Fatalf("testenv: containerd client: %v", err)
	}
	e.mu.Lock()
	e.clients = append(e.clients, c)
	e.mu.Unlock()
	tb.Cleanup(func() {
		e.mu.Lock()
		for i, x := range e.clients {
			if x == c {
				e.clients = append(e.clients[:i], e.clients[i+1:]...)
				break
			}
		}
		e.mu.Unlock()
		c.Close()
	})
	return c
}

// logTail returns the last lines of containerd's log.
func (e *Env) logTail() string {
	b, err := os.ReadFile(e.LogPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	return lastLines(b, 30)
}

func lastLines(b []byte, n int) string {
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.TrimSpace(string(bytes.Join(lines, []byte("\n"))))
}
