package etcdtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/vigilhq/vigil/internal/pki"
	"github.com/vigilhq/vigil/internal/testenv"
)

// Timing of the test clusters: heartbeats and elections five times faster
// than etcd's defaults (100 ms, 1 s) so that a lost leader is replaced
// within a second, yet slow enough not to flap on a loaded 2-core machine.
// The minimum lease TTL follows from them: 1.5 election timeouts, rounded
// up to 1 s.
const (
	HeartbeatInterval = 50 * time.Millisecond
	ElectionTimeout   = 500 * time.Millisecond
)

// healthTimeout bounds the wait for a member to serve.
const healthTimeout = 30 * time.Second

// Cluster is a running etcd cluster of real processes. Its methods are
// safe for concurrent use; they fail the test on error.
type Cluster struct {
	t       testing.TB
	bin     string
	tls     *tls.Config // the health check's, when clients speak TLS
	members []*member
}

// Option changes the cluster StartCluster starts.
type Option func(*options)

type options struct {
	server pki.Files
	client *tls.Config
}

// WithClientTLS makes the members serve clients over TLS only, with
// server's certificate, and require a client certificate signed by
// server.CA. client is the configuration the health check connects with.
// (Members talk to each other in plain HTTP on loopback.)
func WithClientTLS(server pki.Files, client *tls.Config) Option {
	return func(o *options) { o.server, o.client = server, client }
}

type member struct {
	name      string
	clientURL string
	args      []string
	logPath   string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// StartCluster starts an etcd cluster of n members on loopback and waits
// until each member serves linearizable reads. It skips the test where
// integration tests cannot run (testenv.Require) and stops every member
// when the test ends, showing each member's log if the test failed.
func StartCluster(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	testenv.Require(t)
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	scheme := "http"
	if o.client != nil {
		scheme = "https"
	}
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Fatalf("etcd not found (scripts/install-prereqs.sh installs Debian's etcd-server): %v", err)
	}
	ports := freePorts(t, 2*n)
	dir := t.TempDir()
	var initial []string
	for i := range n {
		initial = append(initial, fmt.Sprintf("m%d=http://127.0.0.1:%d", i, ports[2*i+1]))
	}
	c := &Cluster{t: t, bin: bin, tls: o.client}
	for i := range n {
		name := fmt.Sprintf("m%d", i)
		clientURL := fmt.Sprintf("%s://127.0.0.1:%d", scheme, ports[2*i])
		peerURL := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1])
		c.members = append(c.members, &member{
			name:      name,
			clientURL: clientURL,
			logPath:   filepath.Join(dir, name+".log"),
			args: []string{
				"--name", name,
				"--data-dir", filepath.Join(dir, name),
				"--listen-client-urls", clientURL,
				"--advertise-client-urls", clientURL,
				"--listen-peer-urls", peerURL,
				"--initial-advertise-peer-urls", peerURL,
				"--initial-cluster", strings.Join(initial, ","),
				"--initial-cluster-state", "new",
				"--initial-cluster-token", filepath.Base(dir),
				"--heartbeat-interval", fmt.Sprint(HeartbeatInterval.Milliseconds()),
				"--election-timeout", fmt.Sprint(ElectionTimeout.Milliseconds()),
				"--logger", "zap",
				"--log-level", "info",
			},
		})
		if o.client != nil {
			m := c.members[i]
			m.args = append(m.args, "--cert-file", o.server.Cert, "--key-file", o.server.Key,
				"--client-cert-auth", "--trusted-ca-file", o.server.CA)
		}
	}
	t.Cleanup(func() {
		for i := range c.members {
			c.stop(i)
		}
		if t.Failed() {
			for _, m := range c.members {
				t.Logf("etcd member %s log (last 40 lines):\n%s", m.name, tail(m.logPath, 40))
			}
		}
	})
	for i := range c.members {
		c.start(i)
	}
	for i := range c.members {
		c.WaitServing(i)
	}
	return c
}

// freePorts finds n distinct free TCP ports on 127.0.0.1. (Another
// process may take one before etcd binds it; the member then fails to
// start, and its log says so.)
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// Endpoints are every member's client URL.
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.clientURL)
	}
	return eps
}

// Endpoint is member i's client URL.
func (c *Cluster) Endpoint(i int) string { return c.members[i].clientURL }

// Size is the number of members.
func (c *Cluster) Size() int { return len(c.members) }

func (c *Cluster) start(i int) {
	c.t.Helper()
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		c.t.Fatalf("etcd member %s is already running", m.name)
	}
	logf, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(c.bin, m.args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// A test binary that dies does not leave the member behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start etcd member %s: %v", m.name, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	m.cmd, m.exited = cmd, exited
}

// stop kills member i if it runs and waits for it to exit.
func (c *Cluster) stop(i int) {
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Kill()
	<-m.exited
	m.cmd, m.exited = nil, nil
}

// Kill stops member i with SIGKILL, as a crash would, and waits for it to
// exit. Its data dir is kept for Restart.
func (c *Cluster) Kill(i int) {
	c.t.Helper()
	m := c.members[i]
	m.mu.Lock()
	running := m.cmd != nil
	m.mu.Unlock()
	if !running {
		c.t.Fatalf("etcd member %s is not running", m.name)
	}
	c.stop(i)
}

// Restart starts a killed member again on its data dir. It does not wait
// for it to serve (a member alone cannot, without quorum): WaitServing.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.start(i)
}

// WaitServing waits until member i answers a linearizable read, which
// needs it to run and the cluster to have a leader; it fails the test after
// 30 s with the member's log.
func (c *Cluster) WaitServing(i int) {
	c.t.Helper()
	m := c.members[i]
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.clientURL}, TLS: c.tls, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		c.t.Fatal(err)
	}
	defer cli.Close()
	deadline := time.Now().Add(healthTimeout)
	var lastErr error
	for time.Now().Before(deadline) {
		m.mu.Lock()
		exited := m.exited
		m.mu.Unlock()
		if exited != nil {
			select {
			case <-exited:
				c.t.Fatalf("etcd member %s exited; its log:\n%s", m.name, tail(m.logPath, 40))
			default:
			}
		}
		ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(context.Background()), time.Second)
		_, lastErr = cli.Get(ctx, "etcdtest-health")
		cancel()
		if lastErr == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatalf("etcd member %s not serving after %v: %v; its log:\n%s", m.name, healthTimeout, lastErr, tail(m.logPath, 40))
}

// Log is member i's log so far.
func (c *Cluster) Log(i int) string { return tail(c.members[i].logPath, 0) }

// tail is the last n lines of the file at path (all of it for n 0).
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if n > 0 && len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
