package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
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
// one test binary: an Instance with the test helpers on top. Its fields are
// fixed once Containerd returns; its methods are safe for concurrent use by
// parallel tests.
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
	inst    *Instance
	harness *client.Client

	mu      sync.Mutex
	clients []*client.Client
	images  map[string]*imageImport // by namespace and ref
	defs    map[string]imageDef     // images built here, by ref
	// attached counts AttachNetNS calls: the next address to hand out.
	attached int
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

// newEnv starts an Instance in a temp dir and imports the CRI sandbox image.
func newEnv() (env *Env, err error) {
	inst, err := NewInstance(InstanceOptions{})
	if err != nil {
		return nil, err
	}
	e := &Env{
		Address:      inst.Address,
		Root:         inst.Root,
		State:        inst.State,
		Dir:          inst.Dir,
		CgroupRoot:   "/sys/fs/cgroup",
		CgroupParent: inst.CgroupParent,
		Bridge:       inst.Bridge,
		BridgeIP:     inst.BridgeIP,
		Subnet:       inst.Subnet,
		LogPath:      inst.LogPath,
		id:           inst.ID,
		inst:         inst,
		images:       map[string]*imageImport{},
		defs:         map[string]imageDef{},
	}
	defer func() {
		if err != nil {
			if terr := e.teardown(); terr != nil {
				err = fmt.Errorf("%w (and teardown: %v)", err, terr)
			}
		}
	}()
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
	if err := e.importImage(ctx, CRINamespace, pause); err != nil {
		return nil, fmt.Errorf("import sandbox image: %w", err)
	}
	return e, nil
}

func (e *Env) logDir() string { return e.inst.logDir() }

// teardown closes the harness's client and the instance (see
// Instance.Close). Idempotent.
func (e *Env) teardown() error {
	if e.harness != nil {
		e.harness.Close()
	}
	return e.inst.Close()
}

// Kill sends SIGKILL to containerd and waits until it is gone; running
// shims and their tasks keep running. Start brings it back.
func (e *Env) Kill(tb testing.TB) {
	tb.Helper()
	if err := e.inst.Kill(); err != nil {
		tb.Fatalf("testenv: kill containerd: %v", err)
	}
}

// Start starts containerd again on the same root, state and socket after
// Kill, and waits until it and every client from Client answer again.
func (e *Env) Start(tb testing.TB) {
	tb.Helper()
	if err := e.inst.Start(); err != nil {
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
func (e *Env) logTail() string { return e.inst.logTail() }

// ContainerdPID returns the pid of the env's containerd (0 when it is not
// running), for benchmarks that count its CPU.
func (e *Env) ContainerdPID() int { return e.inst.PID() }

func lastLines(b []byte, n int) string {
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.TrimSpace(string(bytes.Join(lines, []byte("\n"))))
}
