package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/testenv"
	"github.com/vigilhq/vigil/test/chain"
)

func TestMain(m *testing.M) {
	code := testenv.Run(m)
	if builtDir != "" {
		os.RemoveAll(builtDir)
	}
	os.Exit(code)
}

// The crash-looper runs this many times: once, then crashRestarts restarts
// under on-failure:crashRestarts, each run exiting 1 after crashAfter. These
// are the exits that happened, counted without asking Vigil.
const (
	crashRestarts = 6
	crashRuns     = crashRestarts + 1
	crashAfter    = 2 * time.Second
)

// TestDataPath runs containerd, the agent, the aggregator and Prometheus,
// and checks through PromQL and vigilctl that restarts, exits by reason and
// health reach the user, and that killing the agent and then the aggregator
// loses no exit.
func TestDataPath(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	prometheus := testenv.LookPath(t, "prometheus")
	t.Logf("prometheus: %s", prometheus)
	// A namespace of its own: runc's state (/run/containerd/runc/NS/ID) is
	// shared by every containerd on the host, demo and other tests included.
	ns := fmt.Sprintf("e2e-%d", os.Getpid())
	env.WorkloadImage(t, ns)
	env.WorkloadImage(t, chain.CRINamespace)
	netns := testenv.NewNetNS(t)
	bin := buildBinaries(t)

	dir := t.TempDir()
	addrs := make([]string, 4)
	var err error
	for i := range addrs {
		if addrs[i], err = chain.FreeAddr(); err != nil {
			t.Fatal(err)
		}
	}
	root := repoRoot(t)
	c, err := chain.New(chain.Config{
		Dir:               dir,
		BinDir:            bin,
		ContainerdAddress: env.Address,
		NodeName:          "e2e-node",
		AggregatorGRPC:    addrs[0],
		AggregatorHTTP:    addrs[1],
		AgentMetrics:      addrs[2],
		Prometheus:        addrs[3],
		PrometheusConfig:  filepath.Join(root, "deploy", "demo", "prometheus.yml"),
		RulesDir:          filepath.Join(root, "deploy", "prometheus"),
		Interval:          time.Second,
		BackoffInitial:    200 * time.Millisecond,
		BackoffMax:        time.Second,
		BackoffReset:      time.Minute,
		// Failed probes are logged at debug level: the log then says why a
		// probe of the healthy server failed, should one.
		// Its own namespaces only: TestRemediation's agent runs on the same
		// containerd at the same time, and two agents enforcing one
		// container's policy would both restart it.
		AgentArgs: []string{"--log-level", "debug", "--namespaces", ns + "," + chain.CRINamespace},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stop chain: %v", err)
		}
		if t.Failed() {
			for _, name := range []string{"aggregator", "agent", "prometheus"} {
				t.Logf("log tail of %s:\n%s", name, chain.LogTail(filepath.Join(dir, "logs", name+".log"), 200))
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	if err := c.StartAggregator(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.StartPrometheus(ctx); err != nil {
		t.Fatal(err)
	}

	stories := chain.Stories(chain.StoryOptions{
		Namespace:      ns,
		NetNSPath:      netns.Path,
		LogDir:         filepath.Join(dir, "logs"),
		CgroupParent:   filepath.Join(env.CgroupParent, ns),
		CrashAfter:     crashAfter,
		CrashRestarts:  crashRestarts,
		UnhealthyAfter: 4 * time.Second,
		HealthInterval: time.Second,
	})
	for i := range stories {
		if err := chain.RunContainer(ctx, env.Address, stories[i]); err != nil {
			t.Fatal(err)
		}
	}
	env.RunPod(t, testenv.PodSpec{Namespace: "shop", Name: "frontend", Containers: []testenv.PodContainer{
		{Name: "nginx", Image: testenv.WorkloadRef, Args: []string{"serve", "--http", ":8080"}},
	}})

	crash := `{container="crashloop",node="e2e-node"}`
	// The crash-looper's restarts rise: two different non-zero values seen.
	firstRestarts := waitValue(ctx, t, c, "vigil_container_restarts_total"+crash, func(v float64) bool { return v >= 1 })
	t.Logf("crashloop restarts: %v", firstRestarts)

	// Kill the agent while the crash-looper runs, so that it exits while no
	// agent watches; start it again on the same state dir.
	if err := c.Agent.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(crashAfter + time.Second)
	if err := c.StartAgent(ctx); err != nil {
		t.Fatalf("agent after SIGKILL: %v", err)
	}
	later := waitValue(ctx, t, c, "vigil_container_restarts_total"+crash, func(v float64) bool { return v > firstRestarts })
	t.Logf("crashloop restarts after the agent's restart: %v", later)

	// Kill the aggregator; exits meanwhile wait in the agent's buffer.
	if err := c.Aggregator.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(crashAfter + time.Second)
	if err := c.StartAggregator(ctx); err != nil {
		t.Fatalf("aggregator after SIGKILL: %v", err)
	}

	// Every exit is counted once, by reason: the crash-looper ran crashRuns
	// times and exited 1 each time, and was restarted crashRestarts times.
	waitValue(ctx, t, c, "vigil_container_restarts_total"+crash, func(v float64) bool { return v == crashRestarts })
	waitValue(ctx, t, c, `sum(vigil_container_exits_total{container="crashloop",node="e2e-node",reason="error",exit_code="1"})`,
		func(v float64) bool { return v == crashRuns })
	// ... and stays so once it gave up (nothing counted twice after a
	// reconnect): wait two scrapes, ask again.
	time.Sleep(5 * time.Second)
	assertValue(ctx, t, c, `sum(vigil_container_exits_total{container="crashloop",node="e2e-node"})`, crashRuns)
	assertValue(ctx, t, c, "vigil_container_restarts_total"+crash, crashRestarts)
	crashLog := filepath.Join(dir, "logs", chain.CrashLoopID+".log")
	if n := countLines(t, crashLog, "exit: code 1"); n != crashRuns {
		b, _ := os.ReadFile(crashLog)
		t.Errorf("the crash-looper's own log shows %d exits, want %d (restarted tasks keep the container's log); it holds:\n%s", n, crashRuns, b)
	}

	// The flaky server failed its probes until unhealthy (the counter keeps
	// that, however briefly the unhealthy status lasted between two scrapes),
	// and was restarted: stopped (it exits 0 on SIGTERM) and started again.
	flaky := `{container="flaky",node="e2e-node"}`
	waitValue(ctx, t, c, "vigil_container_health_probe_failures_total"+flaky, func(v float64) bool { return v >= 3 })
	waitValue(ctx, t, c, "vigil_container_restarts_total"+flaky, func(v float64) bool { return v >= 1 })
	waitValue(ctx, t, c, `sum(vigil_container_exits_total{container="flaky",node="e2e-node",reason="completed"})`, func(v float64) bool { return v >= 1 })
	waitValue(ctx, t, c, "vigil_container_running"+flaky, func(v float64) bool { return v == 1 })
	// The agent's own cost reaches Prometheus through the shipped
	// configuration's vigil-agent job (its /metrics/self).
	waitValue(ctx, t, c, `count({job="vigil-agent",__name__=~"vigil_agent_.+"})`, func(v float64) bool { return v >= 10 })
	waitValue(ctx, t, c, `vigil_agent_runtime_available{job="vigil-agent"}`, func(v float64) bool { return v == 1 })
	// The healthy server stayed healthy and was never restarted.
	assertValue(ctx, t, c, `vigil_container_health_status{container="web",node="e2e-node",status="healthy"}`, 1)
	assertValue(ctx, t, c, `vigil_container_restarts_total{container="web",node="e2e-node"}`, 0)
	// Its probes pass. (Failures within its start period, while the server
	// comes up, do not count.) The one excuse: a probe that timed out (1s)
	// on a machine too loaded to answer in time, and fewer of those than its
	// retries; the agent's debug log says why each probe failed.
	if v := waitValue(ctx, t, c, `vigil_container_health_probe_failures_total{container="web",node="e2e-node"}`, func(float64) bool { return true }); v != 0 {
		failures := grepLines(filepath.Join(dir, "logs", "agent.log"), "health probe failed", "id="+chain.WebID+" ")
		timeouts := 0
		for _, f := range failures {
			if strings.Contains(f, "reason=timeout") {
				timeouts++
			}
		}
		msg := fmt.Sprintf("the healthy server failed %v probes; the agent logged:\n%s", v, strings.Join(failures, "\n"))
		if v >= 3 || float64(timeouts) < v {
			t.Error(msg)
		} else {
			t.Log(msg + "\n(timeouts on a loaded machine: tolerated)")
		}
	}
	// The pod's container is seen as the kubelet named it.
	waitValue(ctx, t, c, `vigil_container_running{pod_namespace="shop",pod="frontend",container="nginx",node="e2e-node"}`,
		func(v float64) bool { return v == 1 })

	// An operator's restart of the kubelet's container is a kill, which its
	// owner (a kubelet, absent here) would answer: Vigil does not restart
	// it.
	if out, err := c.Vigilctl(ctx, "restart", "e2e-node/shop/frontend/nginx", "--reason", "e2e: owner's container"); err != nil {
		t.Fatalf("vigilctl restart of the pod's container: %v\n%s", err, out)
	}
	nginx := `{pod_namespace="shop",pod="frontend",container="nginx",node="e2e-node"}`
	waitValue(ctx, t, c, `vigil_container_last_terminated_reason{pod_namespace="shop",pod="frontend",container="nginx",node="e2e-node",reason="signal"}`,
		func(v float64) bool { return v == 1 })
	assertValue(ctx, t, c, "vigil_container_restarts_total"+nginx, 0)

	// An operator's stop is for good, until the operator's start (issue 22:
	// the stop that cannot race a restart policy; web's is always).
	web := `{container="web",node="e2e-node"}`
	if out, err := c.Vigilctl(ctx, "stop", "e2e-node/"+ns+"/web", "--reason", "e2e: maintenance"); err != nil {
		t.Fatalf("vigilctl stop: %v\n%s", err, out)
	}
	waitValue(ctx, t, c, "vigil_container_running"+web, func(v float64) bool { return v == 0 })
	time.Sleep(3 * time.Second) // its policy must not bring it back: two scrapes
	assertValue(ctx, t, c, "vigil_container_running"+web, 0)
	if out, err := c.Vigilctl(ctx, "start", "e2e-node/"+ns+"/web", "--reason", "e2e: maintenance over"); err != nil {
		t.Fatalf("vigilctl start: %v\n%s", err, out)
	}
	waitValue(ctx, t, c, "vigil_container_running"+web, func(v float64) bool { return v == 1 })
	if out, err := c.Vigilctl(ctx, "remediations"); err != nil || strings.Count(string(out), "succeeded") < 3 {
		t.Errorf("vigilctl remediations after the kill, the stop and the start: %v\n%s", err, out)
	}

	// Every query of docs/metrics.md's porting table runs, with data where
	// the scene has some.
	checkPortingTable(ctx, t, c, root)
	// So does every query of the shipped dashboards.
	checkDashboards(ctx, t, c, root, "e2e-node", ns, chain.WebID)

	// vigilctl lists them all.
	out, err := c.Vigilctl(ctx, "containers", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var listed any
	if err := json.Unmarshal(out, &listed); err != nil {
		t.Fatalf("vigilctl containers -o json: %v\n%s", err, out)
	}
	seen := map[string]bool{}
	collectStrings(listed, seen)
	for _, name := range []string{chain.WebID, chain.CrashLoopID, chain.FlakyID, "nginx", "frontend", "e2e-node"} {
		if !seen[name] {
			t.Errorf("vigilctl containers -o json does not mention %q:\n%s", name, out)
		}
	}
}

// waitValue polls the query until it returns exactly one sample for which
// ok holds, and returns its value. The test fails when ctx ends first.
func waitValue(ctx context.Context, t *testing.T, c *chain.Chain, query string, ok func(float64) bool) float64 {
	t.Helper()
	var last string
	for {
		res, err := c.Query(ctx, query)
		switch {
		case err != nil:
			last = err.Error()
		case len(res) != 1:
			last = fmt.Sprintf("%d samples: %v", len(res), res)
		case ok(res[0].Value):
			return res[0].Value
		default:
			last = res[0].String()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("PromQL %s: condition not met in time; last answer: %s", query, last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// assertValue checks that the query returns one sample equal to want now.
func assertValue(ctx context.Context, t *testing.T, c *chain.Chain, query string, want float64) {
	t.Helper()
	res, err := c.Query(ctx, query)
	if err != nil {
		t.Errorf("PromQL %s: %v", query, err)
		return
	}
	if len(res) != 1 || res[0].Value != want {
		t.Errorf("PromQL %s = %v, want one sample of %v", query, res, want)
	}
}

// grepLines returns the lines of file that contain every one of subs.
func grepLines(file string, subs ...string) []string {
	b, err := os.ReadFile(file)
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	for line := range strings.SplitSeq(string(b), "\n") {
		all := true
		for _, sub := range subs {
			all = all && strings.Contains(line, sub)
		}
		if all {
			out = append(out, line)
		}
	}
	return out
}

// collectStrings records every string (keys and values) in a decoded JSON
// document.
func collectStrings(v any, into map[string]bool) {
	switch v := v.(type) {
	case string:
		into[v] = true
	case []any:
		for _, x := range v {
			collectStrings(x, into)
		}
	case map[string]any:
		for k, x := range v {
			into[k] = true
			collectStrings(x, into)
		}
	}
}

func countLines(t *testing.T, path, substr string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("read %s: %v", path, err)
		return -1
	}
	return bytes.Count(b, []byte(substr))
}

// buildBinaries builds vigil-agent, vigil-aggregator and vigilctl into a
// temp dir, as `make build` does. VIGIL_E2E_BIN names a directory of
// binaries built already (e.g. bin/ after `make build`) to use instead.
func buildBinaries(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("VIGIL_E2E_BIN"); dir != "" {
		t.Logf("using the binaries in VIGIL_E2E_BIN=%s", dir)
		return dir
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vigil-e2e-bin-")
		if err != nil {
			t.Fatal(err)
		}
		builtDir = dir
		for _, b := range []struct{ name, pkg string }{
			{"vigil-agent", "cmd/agent"}, {"vigil-aggregator", "cmd/aggregator"}, {"vigilctl", "cmd/vigilctl"},
		} {
			testenv.BuildRelease(t, "github.com/vigilhq/vigil/"+b.pkg, filepath.Join(dir, b.name))
		}
		built = true
	})
	if !built {
		t.Fatal("building the binaries failed (see the test that built them)")
	}
	return builtDir
}

// The binaries are built once for the package's tests, which run in
// parallel (each chain takes a minute or more, mostly waiting), and removed
// by TestMain.
var (
	buildOnce sync.Once
	builtDir  string
	built     bool
)

func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}
