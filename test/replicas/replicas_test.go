// Package replicas runs aggregator replicas as processes on a real 3-member
// etcd, with a real agent on the private containerd (issue 27).
package replicas

import (
	"context"
	"encoding/json"
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
	am         string // its Alertmanager's address (started late)
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
	if testing.Short() {
		t.Skip("starts etcd, three aggregators and an agent as processes")
	}
	began := time.Now()
	env := testenv.Containerd(t)
	cluster := etcdtest.StartCluster(t, 3)
	// The shipped remediation rules act in default, prod-* and k8s.io.
	ns := fmt.Sprintf("%sreplicas-%d", chain.SickNamespacePrefix, os.Getpid())
	img := env.WorkloadImage(t, ns)
	bin := t.TempDir()
	var wg sync.WaitGroup
	for _, b := range []struct{ name, pkg string }{{"vigil-agent", "cmd/agent"}, {"vigil-aggregator", "cmd/aggregator"}} {
		wg.Go(func() { testenv.BuildRelease(t, "github.com/vigilhq/vigil/"+b.pkg, filepath.Join(bin, b.name)) })
	}
	wg.Wait()
	t.Logf("containerd, etcd and the binaries ready after %v", time.Since(began).Round(time.Second))
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()

	free := func() string {
		a, err := chain.FreeAddr()
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	agentAddr := free()
	newChain := func(name, grpcAddr, httpAddr, amAddr string, aggArgs, agentArgs []string) *chain.Chain {
		c, err := chain.New(chain.Config{
			Alertmanager: amAddr, AlertmanagerConfig: filepath.Join(root, "deploy", "demo", "alertmanager.yml"),
			RemediationRules: filepath.Join(root, "deploy", "remediation", "rules.yaml"),
			Dir:              filepath.Join(dir, name), BinDir: bin, ContainerdAddress: env.Address, NodeName: "replicas-node",
			AggregatorGRPC: grpcAddr, AggregatorHTTP: httpAddr, AgentMetrics: agentAddr,
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
				for _, p := range []string{"aggregator", "agent", "alertmanager"} {
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
		r := &replicaProc{id: fmt.Sprintf("r%d", i), grpc: free(), http: free(), am: free()}
		r.c = newChain(r.id, r.grpc, r.http, r.am, []string{
			"--etcd-endpoints", strings.Join(cluster.Endpoints(), ","), "--etcd-prefix", fmt.Sprintf("/vigil-%d/", os.Getpid()),
			"--replica-id", r.id, "--lease-ttl", leaseTTL.String(),
		}, nil)
		if err := r.c.StartAggregator(ctx); err != nil {
			t.Fatal(err)
		}
		reps = append(reps, r)
		grpcAddrs = append(grpcAddrs, r.grpc)
	}
	agent := newChain("agent", strings.Join(grpcAddrs, ","), free(), free(), nil,
		[]string{"--namespaces", ns, "--network=false", "--stop-window", "0s"})
	if err := agent.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}

	holder := waitHolder(ctx, t, reps, nil)
	t.Logf("the agent is held by %s (%v)", holder.id, time.Since(began).Round(time.Second))

	env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "steady", Image: img, Args: []string{"sleep"}})
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
	for allExits(scrape(holder)) < 20 {
		if ctx.Err() != nil {
			t.Fatalf("the holder never counted 20 exits (it counts %d)", allExits(scrape(holder)))
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
	// A surviving replica refuses the node until the dead one's lease
	// ends and says when (RetryInfo: the lease's remaining TTL + 1 s); the
	// agent waits that plus a tenth of jitter. So the node is served again
	// within about the TTL and a second or two; the bound leaves room for a
	// loaded machine, and is far under what the agent's growing backoff
	// gave without the hint (up to its 30 s cap).
	if took > 2*leaseTTL+10*time.Second {
		t.Errorf("failover took %v, over twice the lease TTL (%v) and 10 s: is the agent's uplink honouring the refusal's retry time?", took, leaseTTL)
	}

	// Every container runs 10 times and stays down (or, when containerd
	// could not create a task in time on a loaded machine, stays down
	// earlier: no new run for 20 s); the new holder counts each exit once:
	// the exits with code 1 are the runs in the containers' logs, and all
	// its exits are the agent's own count.
	cl := env.Client(t)
	cctx := namespaces.WithNamespace(ctx, ns)
	lastRuns, lastChange := map[string]int{}, map[string]time.Time{}
	for {
		settled := 0
		for _, id := range ids {
			n := runsOf(env.LogPathOf(ns, id))
			if n != lastRuns[id] || lastChange[id].IsZero() {
				lastRuns[id], lastChange[id] = n, time.Now()
			}
			if stopped(cctx, cl, id) && (n >= runs || time.Since(lastChange[id]) > 20*time.Second) {
				settled++
			}
		}
		if settled == len(ids) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("%d of %d containers settled; runs: %d", settled, len(ids), totalRuns(env, ns, ids))
		}
		time.Sleep(200 * time.Millisecond)
	}
	total := totalRuns(env, ns, ids)
	t.Logf("the containers ran %d times in all (%v)", total, time.Since(began).Round(time.Second))
	if total != containers*runs {
		t.Logf("NOT 100: containerd failed to create %d tasks in time (see the agent's log: runtime hanging); the counts below must still match", containers*runs-total)
	}
	for exitsOn(next) != total || allExits(scrape(next)) != allExits(agentMetrics(agentAddr)) {
		if ctx.Err() != nil {
			t.Fatalf("%s counts %d exits with code 1 (the logs: %d) and %d in all (the agent: %d)",
				next.id, exitsOn(next), total, allExits(scrape(next)), allExits(agentMetrics(agentAddr)))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%s counts %d exits with code 1 and %d in all, as the agent", next.id, total, allExits(scrape(next)))
	for _, r := range reps {
		if r != next && r != holder && exitsOn(r) != 0 {
			t.Errorf("%s, which does not hold the node, exposes %d of its exits", r.id, exitsOn(r))
		}
	}

	// Two Alertmanagers, each sending to one of the live replicas, get
	// the same firing alert (as from two Prometheus replicas): the steady
	// container is restarted once.
	var live []*replicaProc
	for _, r := range reps {
		if r != holder {
			live = append(live, r)
		}
	}
	alert := fmt.Sprintf(`[{"labels":{"alertname":"VigilContainerUnhealthy","vigil_action":"restart_container","node":"replicas-node","namespace":%q,"container":"steady"},"startsAt":%q}]`,
		ns, time.Now().UTC().Format(time.RFC3339))
	for _, r := range live {
		if err := r.c.StartAlertmanager(ctx); err != nil {
			t.Fatal(err)
		}
		resp, err := http.Post("http://"+r.am+"/api/v2/alerts", "application/json", strings.NewReader(alert))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("posting the alert to %s's Alertmanager: %s", r.id, resp.Status)
		}
	}
	for steadyExits(next, "steady") != 1 {
		if ctx.Err() != nil {
			t.Fatalf("steady exited %d times (restarted by a command), want 1", steadyExits(next, "steady"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, r := range live {
		for journaled(r) != 1 {
			if ctx.Err() != nil {
				t.Fatalf("%s lists %d remediations, want 1", r.id, journaled(r))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	// Both Alertmanagers' webhooks came (the first one's alone makes the
	// journal show one), then: still one restart. Alertmanager's
	// group_interval is a minute: no second webhook comes within this test.
	for _, r := range live {
		for webhooksDelivered(r.am) < 1 {
			if ctx.Err() != nil {
				t.Fatalf("%s's Alertmanager delivered no webhook", r.id)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if n := steadyExits(next, "steady"); n != 1 {
		t.Fatalf("steady restarted %d times after both Alertmanagers' webhooks, want 1", n)
	}
	t.Logf("one restart from two Alertmanagers (%v)", time.Since(began).Round(time.Second))
}

// steadyExits sums the exits of a container on r (a remediation's restart
// is an exit and a start, and counts in vigil_container_restarts_total as
// the policy's do; the exits tell one action from two just as well), -1
// when it has no series.
func steadyExits(r *replicaProc, container string) int {
	re := regexp.MustCompile(`(?m)^vigil_container_exits_total\{[^}]*container="` + container + `"[^}]*\} (\d+)$`)
	ms := re.FindAllStringSubmatch(scrape(r), -1)
	if ms == nil {
		return -1
	}
	sum := 0
	for _, m := range ms {
		n, _ := strconv.Atoi(m[1])
		sum += n
	}
	return sum
}

// journaled counts the remediations r lists.
func journaled(r *replicaProc) int {
	resp, err := http.Get("http://" + r.http + "/api/v1/remediations")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var list struct {
		Remediations []json.RawMessage `json:"remediations"`
	}
	if json.NewDecoder(resp.Body).Decode(&list) != nil {
		return -1
	}
	return len(list.Remediations)
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

func scrape(r *replicaProc) string { return getMetrics(r.http) }

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

var allExitsRe = regexp.MustCompile(`(?m)^vigil_container_exits_total\{[^}]*\} (\d+)$`)

// allExits sums every vigil_container_exits_total series of an exposition.
func allExits(text string) int {
	sum := 0
	for _, m := range allExitsRe.FindAllStringSubmatch(text, -1) {
		n, _ := strconv.Atoi(m[1])
		sum += n
	}
	return sum
}

// agentMetrics is the agent's own /metrics.
func agentMetrics(addr string) string { return getMetrics(addr) }

var (
	amSent   = regexp.MustCompile(`(?m)^alertmanager_notifications_total\{[^}]*integration="webhook"[^}]*\} (\d+)$`)
	amFailed = regexp.MustCompile(`(?m)^alertmanager_notifications_failed_total\{[^}]*integration="webhook"[^}]*\} (\d+)$`)
)

// webhooksDelivered is how many webhook notifications the Alertmanager at
// addr sent and did not count as failed.
func webhooksDelivered(addr string) int {
	text := getMetrics(addr)
	sum := func(re *regexp.Regexp) int {
		n := 0
		for _, m := range re.FindAllStringSubmatch(text, -1) {
			v, _ := strconv.Atoi(m[1])
			n += v
		}
		return n
	}
	return sum(amSent) - sum(amFailed)
}

// getMetrics is the /metrics text at addr, "" on any error.
func getMetrics(addr string) string {
	hc := &http.Client{Timeout: 2 * time.Second}
	resp, err := hc.Get("http://" + addr + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
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
