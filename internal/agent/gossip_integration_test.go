package agent

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/pki"
	"github.com/vigilhq/vigil/internal/testenv"
)

// cutProxy forwards TCP connections from a loopback address to target until
// cut, which closes its listener and every connection through it: the path
// of one agent to the aggregator breaks while the aggregator and every
// other path stay up (a fault the real parts cannot produce on demand in
// one process). mend listens again on the same address.
type cutProxy struct {
	t      testing.TB
	addr   string
	target string

	mu    sync.Mutex
	lis   net.Listener
	conns []net.Conn
}

func newCutProxy(t testing.TB, target string) *cutProxy {
	p := &cutProxy{t: t, addr: freeAddr(t), target: target}
	p.mend()
	t.Cleanup(p.cut)
	return p
}

func (p *cutProxy) mend() {
	p.t.Helper()
	var lis net.Listener
	var err error
	for i := 0; i < 50; i++ { // the old listener's port may take a moment
		if lis, err = net.Listen("tcp", p.addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	p.lis = lis
	p.mu.Unlock()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			if p.lis != lis { // cut meanwhile
				p.mu.Unlock()
				c.Close()
				up.Close()
				return
			}
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); up.Close() }()
			go func() { _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lis != nil {
		p.lis.Close()
		p.lis = nil
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// gossipKeyFile writes a file with one random AES-256 gossip key.
func gossipKeyFile(t testing.TB) string {
	var k [32]byte
	_, _ = rand.Read(k[:])
	path := filepath.Join(t.TempDir(), "gossip.key")
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(k[:])+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// aggregatorSeries returns the value of every series of family on the
// aggregator's /metrics whose labels include all of want (`name="value"`
// items), keyed by its label set.
func aggregatorSeries(addr, family string, want ...string) map[string]string {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := map[string]string{}
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(family) + `\{([^}]*)\} (\S+)$`)
next:
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		for _, w := range want {
			if !strings.Contains(m[1], w) {
				continue next
			}
		}
		out[m[1]] = m[2]
	}
	return out
}

// nodeConditionAt is the node's current gossip condition on the
// aggregator's /metrics (the vigil_node_condition series of Healthy,
// AggregatorPartitioned, NodeDown, Isolated or Unknown whose status="true"
// is 1; RuntimeAvailable, the agent's own, is another matter), "" when
// none.
func nodeConditionAt(addr, node string) string {
	re := regexp.MustCompile(`condition="(Healthy|AggregatorPartitioned|NodeDown|Isolated|Unknown)"`)
	for labels, v := range aggregatorSeries(addr, "vigil_node_condition", `node="`+node+`"`, `status="true"`) {
		if v == "1" {
			if m := re.FindStringSubmatch(labels); m != nil {
				return m[1]
			}
		}
	}
	return ""
}

// TestGossipNodeConditions (issue 25, the agent side): three real agents,
// each on the private containerd with a namespace and node certificate of
// its own, gossip with each other on loopback (encrypted) and stream to one
// real aggregator over mutual TLS; the third reaches the aggregator
// through a proxy the test can cut. At the aggregator:
//   - all three are Healthy and each sees the two others reachable
//     (vigil_node_peer_reachable, fed by their PeerViews);
//   - an agent stopped (its stream ends, its member leaves) is NodeDown,
//     on the two others' word, within 15 s;
//   - the third's path to the aggregator cut, with the second still
//     gossiping with it, is AggregatorPartitioned, and the agent itself
//     is not Isolated (a peer answers its probes);
//   - the second stopped too, the third reaches no one: it is Isolated on
//     its side (and would refuse commands); its path mended, it is
//     Healthy again and no longer isolated.
func TestGossipNodeConditions(t *testing.T) {
	ca, dir, grpcAddr, aggHTTP := gossipAggregator(t)
	proxy := newCutProxy(t, grpcAddr)
	key := gossipKeyFile(t)

	names := []string{"gossip-a", "gossip-b", "gossip-c"}
	gossipAddrs := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	hs := make([]*harness, len(names))
	for i, name := range names {
		files, err := ca.WriteFiles(dir, name, name)
		if err != nil {
			t.Fatal(err)
		}
		var seeds []string
		for j, a := range gossipAddrs {
			if j != i {
				seeds = append(seeds, a)
			}
		}
		aggregator := grpcAddr
		if i == 2 {
			aggregator = proxy.addr
		}
		hs[i] = newHarness(t)
		hs[i].start(func(c *Config) {
			c.NodeName = name
			c.AggregatorAddress = aggregator
			c.TLS = files
			c.TLSServerName = "localhost"
			c.Gossip = GossipConfig{Listen: gossipAddrs[i], Advertise: "127.0.0.1", Seeds: seeds, KeyFile: key}
		})
	}

	waitGossipHealthy(t, aggHTTP, names)

	// Stop gossip-a: its stream ends and its member leaves; b and c say so.
	stopped := time.Now()
	hs[0].stop()
	waitUntil(t, 15*time.Second, "gossip-a NodeDown at the aggregator", func() bool {
		return nodeConditionAt(aggHTTP, "gossip-a") == "NodeDown"
	})
	t.Logf("gossip-a NodeDown %v after it stopped", time.Since(stopped).Round(time.Millisecond))
	if c := nodeConditionAt(aggHTTP, "gossip-b"); c != "Healthy" {
		t.Errorf("gossip-b is %q after gossip-a stopped, want Healthy", c)
	}

	// Cut gossip-c's path to the aggregator: gossip-b still reaches it.
	proxy.cut()
	waitUntil(t, 20*time.Second, "gossip-c AggregatorPartitioned at the aggregator", func() bool {
		return nodeConditionAt(aggHTTP, "gossip-c") == "AggregatorPartitioned"
	})
	if why := hs[2].agent.isolation(); why != "" {
		t.Errorf("gossip-c says it is isolated (%s) while gossip-b answers it", why)
	}

	// Stop gossip-b too: gossip-c reaches no one.
	hs[1].stop()
	waitUntil(t, 20*time.Second, "gossip-c Isolated on its side", func() bool {
		return hs[2].agent.isolation() != ""
	})
	t.Logf("gossip-c: isolated: %s", hs[2].agent.isolation())

	// Mend its path: the stream returns and the isolation ends.
	proxy.mend()
	waitUntil(t, 30*time.Second, "gossip-c Healthy again and no longer isolated", func() bool {
		return nodeConditionAt(aggHTTP, "gossip-c") == "Healthy" && hs[2].agent.isolation() == ""
	})
}

// gossipAggregator starts a real aggregator on loopback with mutual TLS;
// it returns the CA that signed its certificate (and signs the nodes'),
// the directory of the certificates, and its gRPC and HTTP addresses.
func gossipAggregator(t *testing.T) (ca *pki.CA, dir, grpcAddr, aggHTTP string) {
	t.Helper()
	dir = t.TempDir()
	ca, err := pki.NewCA("vigil-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	srvFiles, err := ca.WriteFiles(dir, "aggregator", "aggregator")
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr, aggHTTP = freeAddr(t), freeAddr(t)
	startAggregator(t, srvFiles, grpcAddr, aggHTTP)
	return ca, dir, grpcAddr, aggHTTP
}

// waitGossipHealthy waits until every node of names is Healthy at the
// aggregator and sees every other one reachable.
func waitGossipHealthy(t *testing.T, aggHTTP string, names []string) {
	t.Helper()
	waitUntil(t, 30*time.Second, fmt.Sprintf("all %d Healthy at the aggregator, each seeing the others", len(names)), func() bool {
		for _, n := range names {
			if nodeConditionAt(aggHTTP, n) != "Healthy" {
				return false
			}
			reach := aggregatorSeries(aggHTTP, "vigil_node_peer_reachable", `node="`+n+`"`)
			if len(reach) != len(names)-1 {
				return false
			}
			for _, v := range reach {
				if v != "1" {
					return false
				}
			}
		}
		return true
	})
}

// TestGossipKilledAgentIsNodeDown (issue 25): a killed agent (SIGKILL: no
// leave, no stream goodbye) is NodeDown at the aggregator once its two
// peers' gossip declares it dead, within the suspicion timer (3 s at 3
// members, docs/benchmarks/gossip.md) plus probing and reporting: 20 s
// here, on a loaded machine. Two agents run in the test; the third is the
// release binary in a process of its own, with the flags an operator
// gives it.
func TestGossipKilledAgentIsNodeDown(t *testing.T) {
	ca, dir, grpcAddr, aggHTTP := gossipAggregator(t)
	key := gossipKeyFile(t)
	names := []string{"gossip-a", "gossip-b", "gossip-c"}
	gossipAddrs := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	seedsOf := func(i int) []string {
		var seeds []string
		for j, a := range gossipAddrs {
			if j != i {
				seeds = append(seeds, a)
			}
		}
		return seeds
	}
	for i, name := range names[:2] {
		files, err := ca.WriteFiles(dir, name, name)
		if err != nil {
			t.Fatal(err)
		}
		h := newHarness(t)
		h.start(func(c *Config) {
			c.NodeName = name
			c.AggregatorAddress = grpcAddr
			c.TLS = files
			c.TLSServerName = "localhost"
			c.Gossip = GossipConfig{Listen: gossipAddrs[i], Advertise: "127.0.0.1", Seeds: seedsOf(i), KeyFile: key}
		})
	}

	bin := filepath.Join(t.TempDir(), "vigil-agent")
	testenv.BuildRelease(t, "github.com/vigilhq/vigil/cmd/agent", bin)
	files, err := ca.WriteFiles(dir, "gossip-c", "gossip-c")
	if err != nil {
		t.Fatal(err)
	}
	victim := newHarness(t) // its containerd namespace and state dir
	logPath := filepath.Join(t.TempDir(), "agent.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--node-name=gossip-c", "--state-dir="+victim.stateDir,
		"--containerd="+victim.env.Address, "--namespaces="+victim.ns, "--network=false", "--interval=1s",
		"--aggregator="+grpcAddr, "--tls-cert="+files.Cert, "--tls-key="+files.Key, "--tls-ca="+files.CA,
		"--tls-server-name=localhost",
		"--gossip-listen="+gossipAddrs[2], "--gossip-advertise=127.0.0.1",
		"--gossip-seeds="+strings.Join(seedsOf(2), ","), "--gossip-key-file="+key)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("gossip-c's log:\n%s", b)
		}
	})

	waitGossipHealthy(t, aggHTTP, names)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited
	killed := time.Now()
	waitUntil(t, 20*time.Second, "gossip-c NodeDown at the aggregator", func() bool {
		return nodeConditionAt(aggHTTP, "gossip-c") == "NodeDown"
	})
	t.Logf("gossip-c NodeDown %v after SIGKILL", time.Since(killed).Round(time.Millisecond))
	resp, err := apiGet(t, ca, aggHTTP, "/api/v1/nodes")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "2 peers see it dead (gossip-a, gossip-b)") {
		t.Errorf("gossip-c's condition reason does not say its two peers see it dead:\n%s", body)
	}
	for _, n := range names[:2] {
		if c := nodeConditionAt(aggHTTP, n); c != "Healthy" {
			t.Errorf("%s is %q after gossip-c was killed, want Healthy", n, c)
		}
	}
}

// TestGossipPortTakenStopsTheAgent: an agent whose gossip port is taken
// does not go on without gossip unseen: Run returns the error.
func TestGossipPortTakenStopsTheAgent(t *testing.T) {
	h := newHarness(t)
	taken, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := DefaultConfig()
	cfg.NodeName = "gossip-port-taken"
	cfg.StateDir = h.stateDir
	cfg.ContainerdAddress = h.env.Address
	cfg.Namespaces = []string{h.ns}
	cfg.Network = false
	cfg.Gossip = GossipConfig{Listen: taken.LocalAddr().String(), Insecure: true}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(t.Context()) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "gossip") {
			t.Fatalf("Run = %v, want the gossip member's error", err)
		}
		t.Log(err)
	case <-time.After(30 * time.Second):
		t.Fatal("the agent runs although its gossip port is taken")
	}
}

// TestGossipSeedsFromHello (issue 25): an agent started with gossip on but
// no seeds of its own finds its peers through the aggregator's hello reply
// (HelloAck.gossip_seeds, from the other agents' PeerViews): two agents
// that know each other stream their views; a third, given only the
// aggregator's address, joins them, and all three are Healthy at the
// aggregator, each seeing the two others.
func TestGossipSeedsFromHello(t *testing.T) {
	ca, dir, grpcAddr, aggHTTP := gossipAggregator(t)
	key := gossipKeyFile(t)
	names := []string{"seeded-a", "seeded-b", "seedless-c"}
	gossipAddrs := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	start := func(i int, seeds []string) {
		files, err := ca.WriteFiles(dir, names[i], names[i])
		if err != nil {
			t.Fatal(err)
		}
		h := newHarness(t)
		h.start(func(c *Config) {
			c.NodeName = names[i]
			c.AggregatorAddress = grpcAddr
			c.TLS = files
			c.TLSServerName = "localhost"
			c.Gossip = GossipConfig{Listen: gossipAddrs[i], Advertise: "127.0.0.1", Seeds: seeds, KeyFile: key}
		})
	}
	start(0, []string{gossipAddrs[1]})
	start(1, []string{gossipAddrs[0]})
	waitGossipHealthy(t, aggHTTP, names[:2])
	start(2, nil)
	waitGossipHealthy(t, aggHTTP, names)
}

// TestGossipCrossCheck: the agent's hook of "beyond any peer": with
// CrossCheckPeers set, GossipCrossCheck asks the peer to reach an address
// (a listener here: reached, verdict "node"; closed: "pod"); with it unset,
// no one is asked. The scene where the asker's own path is cut is
// internal/gossip's TestNetnsCrossCheck.
func TestGossipCrossCheck(t *testing.T) {
	key := gossipKeyFile(t)
	addrs := []string{freeAddr(t), freeAddr(t)}
	hs := make([]*harness, 2)
	for i := range hs {
		hs[i] = newHarness(t)
		hs[i].start(func(c *Config) {
			c.NodeName = fmt.Sprintf("cross-%d", i)
			c.Gossip = GossipConfig{Listen: addrs[i], Advertise: "127.0.0.1", Seeds: []string{addrs[1-i]}, KeyFile: key, CrossCheckPeers: 2 * i}
		})
	}
	waitUntil(t, 30*time.Second, "the two members see each other", func() bool {
		for _, h := range hs {
			if v := h.agent.gm.Views(); len(v) != 1 || !v[0].State.Reachable() {
				return false
			}
		}
		return true
	})
	// A pod address stands in: peers refuse to reach loopback (their own
	// host's services).
	lis, err := net.Listen("tcp", net.JoinHostPort(hostAddr(t).String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if _, on := hs[0].agent.GossipCrossCheck(t.Context(), lis.Addr().String()); on {
		t.Error("cross-check ran with CrossCheckPeers 0")
	}
	res, on := hs[1].agent.GossipCrossCheck(t.Context(), lis.Addr().String())
	if !on || res.Asked != 1 || res.Reachable != 1 || res.Verdict() != "node" {
		t.Errorf("listener up: %+v (on %v, %s), want 1 asked, 1 reached: node", res, on, res.Verdict())
	}
	lis.Close()
	res, on = hs[1].agent.GossipCrossCheck(t.Context(), lis.Addr().String())
	if !on || res.Answered != 1 || res.Reachable != 0 || res.Verdict() != "pod" {
		t.Errorf("listener closed: %+v (on %v, %s), want 1 answered, none reached: pod", res, on, res.Verdict())
	}
}
