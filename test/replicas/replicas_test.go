// Package replicas runs aggregator replicas as processes on a real 3-member
// etcd, with a real agent on the private containerd (issue 27).
package replicas

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/vigilhq/vigil/internal/store/etcd/etcdtest"
	"github.com/vigilhq/vigil/internal/testenv"
	"github.com/vigilhq/vigil/test/chain"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

const (
	leaseTTL   = 3 * time.Second
	containers = 10
	runs       = 10 // each container runs 10 times under on-failure:9: 100 exits
)

// replicaProc is one vigil-aggregator process of the replica set; its
// chain.Chain only starts and stops it.
type replicaProc struct {
	id         string
	grpc, http string
	c          *chain.Chain
}

// TestReplicaKilledDuringExits: three aggregator processes share a real
// 3-member etcd; the agent is given all three addresses. While ten
// containers exit 100 times in all (restarted by the agent under
// on-failure:9), the replica holding the agent's stream is SIGKILLed. Another
// replica serves the agent within the lease TTL plus the agent's backoff,
// and it counts exactly 100 exits, each one once, as the containers' own
// logs do; the dead replica's node is held by one replica only.
func TestReplicaKilledDuringExits(t *testing.T) {
	env := testenv.Containerd(t)
	cluster := etcdtest.StartCluster(t, 3)
	ns := fmt.Sprintf("replicas-%d", os.Getpid())
	img := env.WorkloadImage(t, ns)
	bin := t.TempDir()
	var wg sync.WaitGroup
	for _, b := range []struct{ name, pkg string }{{"vigil-agent", "cmd/agent"}, {"vigil-aggregator", "cmd/aggregator"}} {
		wg.Go(func() { testenv.BuildRelease(t, "github.com/vigilhq/vigil/"+b.pkg, filepath.Join(bin, b.name)) })
	}
	wg.Wait()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	free := func() string {
		a, err := chain.FreeAddr()
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	newChain := func(name, grpcAddr, httpAddr string, aggArgs, agentArgs []string) *chain.Chain {
		c, err := chain.New(chain.Config{
			Dir: filepath.Join(dir, name), BinDir: bin, ContainerdAddress: env.Address, NodeName: "replicas-node",
			AggregatorGRPC: grpcAddr, AggregatorHTTP: httpAddr, AgentMetrics: free(),
			// Prometheus is not started: its settings are only required.
			Prometheus: free(), PrometheusConfig: "unused",
			Interval: time.Second, BackoffInitial: 100 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
			AggregatorArgs: aggArgs, AgentArgs: agentArgs,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := c.Stop(); err != nil {
				t.Errorf("stop %s: %v", name, err)
			}
			if t.Failed() {
				for _, p := range []string{"aggregator", "agent"} {
					if tail := chain.LogTail(filepath.Join(dir, name, "logs", p+".log"), 40); tail != "" {
						t.Logf("log tail of %s/%s:\n%s", name, p, tail)
					}
				}
			}
		})
		return c
	}
	var reps []*replicaProc
	var grpcAddrs []string
	for i := range 3 {
		r := &replicaProc{id: fmt.Sprintf("r%d", i), grpc: free(), http: free()}
		r.c = newChain(r.id, r.grpc, r.http, []string{
			"--etcd-endpoints", strings.Join(cluster.Endpoints(), ","), "--etcd-prefix", fmt.Sprintf("/vigil-%d/", os.Getpid()),
			"--replica-id", r.id, "--lease-ttl", leaseTTL.String(),
		}, nil)
		if err := r.c.StartAggregator(ctx); err != nil {
			t.Fatal(err)
		}
		reps = append(reps, r)
		grpcAddrs = append(grpcAddrs, r.grpc)
	}
	agent := newChain("agent", strings.Join(grpcAddrs, ","), free(), nil,
		[]string{"--namespaces", ns, "--network=false", "--stop-window", "0s"})
	if err := agent.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}

	holder := waitHolder(ctx, t, reps, nil)
	t.Logf("the agent is held by %s", holder.id)

	ids := make([]string, containers)
	for i := range ids {
		ids[i] = fmt.Sprintf("c%02d", i)
		wg.Go(func() {
			env.RunContainer(t, testenv.ContainerSpec{
				Namespace: ns, ID: ids[i], Image: img,
				Args:   []string{"exit", "1", "--after", "400ms"},
				Labels: map[string]string{"vigil.io/restart-policy": fmt.Sprintf("on-failure:%d", runs-1)},
			})
		})
	}
	wg.Wait()

	// Kill the holder in the middle of the burst.
	for exitsOn(holder) < 20 {
		if ctx.Err() != nil {
			t.Fatalf("the holder never counted 20 exits (it counts %d)", exitsOn(holder))
		}
		time.Sleep(50 * time.Millisecond)
	}
	killedAt := time.Now()
	if err := holder.c.Aggregator.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGKILLed %s with %d exits counted", holder.id, totalRuns(env, ns, ids))
	next := waitHolder(ctx, t, reps, holder)
	took := time.Since(killedAt)
	t.Logf("the agent is held by %s %v after the kill (lease TTL %v)", next.id, took.Round(10*time.Millisecond), leaseTTL)
	// The agent's reconnect backoff is drawn up to 500 ms doubling (30 s at
	// most); a failover within the TTL and a few attempts is the goal. The
	// bound here is the TTL plus the backoff's cap.
	if took > leaseTTL+30*time.Second {
		t.Errorf("failover took %v, over the lease TTL plus the agent's backoff cap", took)
	}

	// Every container runs 10 times and stays down; the new holder counts
	// each exit once.
	cl := env.Client(t)
	cctx := namespaces.WithNamespace(ctx, ns)
	for {
		done := 0
		for _, id := range ids {
			if runsOf(env.LogPathOf(ns, id)) >= runs && stopped(cctx, cl, id) {
				done++
			}
		}
		if done == len(ids) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("%d of %d containers ran %d times; runs: %d", done, len(ids), runs, totalRuns(env, ns, ids))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := totalRuns(env, ns, ids); got != containers*runs {
		t.Fatalf("the containers' logs show %d runs, want %d", got, containers*runs)
	}
	for exitsOn(next) != containers*runs {
		if ctx.Err() != nil {
			t.Fatalf("%s counts %d exits, the logs %d", next.id, exitsOn(next), containers*runs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, r := range reps {
		if r != next && r != holder && exitsOn(r) != 0 {
			t.Errorf("%s, which does not hold the node, exposes %d of its exits", r.id, exitsOn(r))
		}
	}
}

// waitHolder waits until exactly one live replica other than not holds the
// agent's node, and returns it.
func waitHolder(ctx context.Context, t *testing.T, reps []*replicaProc, not *replicaProc) *replicaProc {
	t.Helper()
	for {
		var held []*replicaProc
		for _, r := range reps {
			if r != not && heldNodes(r) == 1 {
				held = append(held, r)
			}
		}
		if len(held) == 1 {
			return held[0]
		}
		if ctx.Err() != nil {
			t.Fatalf("no single replica holds the node (%d do)", len(held))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func scrape(r *replicaProc) string {
	hc := &http.Client{Timeout: 2 * time.Second}
	resp, err := hc.Get("http://" + r.http + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

var (
	heldRe  = regexp.MustCompile(`(?m)^vigil_aggregator_held_nodes (\d+)$`)
	exitsRe = regexp.MustCompile(`(?m)^vigil_container_exits_total\{[^}]*exit_code="1"[^}]*\} (\d+)$`)
	runLine = regexp.MustCompile(`(?m)exit: code 1 after`)
)

func heldNodes(r *replicaProc) int {
	m := heldRe.FindStringSubmatch(scrape(r))
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// exitsOn sums the exits with code 1 a replica exposes.
func exitsOn(r *replicaProc) int {
	sum := 0
	for _, m := range exitsRe.FindAllStringSubmatch(scrape(r), -1) {
		n, _ := strconv.Atoi(m[1])
		sum += n
	}
	return sum
}

func runsOf(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return len(runLine.FindAll(b, -1))
}

func totalRuns(env *testenv.Env, ns string, ids []string) int {
	n := 0
	for _, id := range ids {
		n += runsOf(env.LogPathOf(ns, id))
	}
	return n
}

func stopped(ctx context.Context, cl *client.Client, id string) bool {
	c, err := cl.LoadContainer(ctx, id)
	if err != nil {
		return false
	}
	tk, err := c.Task(ctx, nil)
	if err != nil {
		return true
	}
	st, err := tk.Status(ctx)
	return err == nil && st.Status == client.Stopped
}
