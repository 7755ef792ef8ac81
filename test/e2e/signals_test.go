package e2e

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"

	"github.com/vigilhq/vigil/internal/metrics/expotest"
	"github.com/vigilhq/vigil/internal/testenv"
	"github.com/vigilhq/vigil/test/chain"
)

// TestSignals (issue 24): the series users alert and right-size on, for
// real containers of the private containerd, through the whole chain:
// a container under a CPU quota and a memory limit that spins (throttled),
// one doing block I/O, one crash-looping until its on-failure:2 policy gives
// up, and one whose network namespace holds a link that is down. Each is
// checked in the aggregator's exposition (through Prometheus's parser, no
// series twice) and through PromQL against the real Prometheus, with the
// node's condition and the agent's loss counters.
func TestSignals(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	testenv.LookPath(t, "prometheus")
	testenv.LookPath(t, "ip")
	ns := fmt.Sprintf("e2e-signals-%d", os.Getpid())
	workload := env.WorkloadImage(t, ns)
	busybox := env.BusyboxImage(t, ns)
	netns := testenv.NewNetNS(t)
	bin := buildBinaries(t)

	dir := t.TempDir()
	addrs := make([]string, 4)
	for i := range addrs {
		var err error
		if addrs[i], err = chain.FreeAddr(); err != nil {
			t.Fatal(err)
		}
	}
	const node = "e2e-signals"
	root := repoRoot(t)
	c, err := chain.New(chain.Config{
		Dir:               dir,
		BinDir:            bin,
		ContainerdAddress: env.Address,
		NodeName:          node,
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
		// Its own namespace only: the other e2e tests' agents run on the
		// same containerd at the same time.
		AgentArgs: []string{"--namespaces", ns},
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
				t.Logf("log tail of %s:\n%s", name, chain.LogTail(filepath.Join(dir, "logs", name+".log"), 80))
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	for _, start := range []func(context.Context) error{c.StartAggregator, c.StartAgent, c.StartPrometheus} {
		if err := start(ctx); err != nil {
			t.Fatal(err)
		}
	}

	// A link that is down in a namespace a container joins: a veth pair,
	// one end up (its peer down: lower layer down), the other down.
	for _, args := range [][]string{
		{"-n", netns.Name, "link", "add", "sig0", "type", "veth", "peer", "name", "sig1"},
		{"-n", netns.Name, "link", "set", "sig0", "up"},
	} {
		if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	const limit = 64 << 20
	env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "capped", Image: workload, Args: []string{"spin"}, MemoryLimit: limit})
	env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "disk", Image: busybox, Args: []string{"sh", "-c",
		"sleep 2 && dd if=/dev/zero of=/f bs=4096 count=64 oflag=direct && dd if=/f of=/dev/null bs=4096 iflag=direct && sleep 1000000"}})
	env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "crasher", Image: busybox, Args: []string{"sh", "-c", "sleep 1; exit 3"},
		Labels: map[string]string{"vigil.io/restart-policy": "on-failure:2"}})
	env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "unplugged", Image: busybox, Args: []string{"sleep", "1000000"}, NetNSPath: netns.Path})

	// The CPU quota (0.2 CPU) as an update would write it; the block I/O
	// throttle rule without which cgroup v1 counts no block I/O.
	cgroupV2 := false
	if _, err := os.Stat(filepath.Join(env.CgroupRoot, "cgroup.controllers")); err == nil {
		cgroupV2 = true
	}
	write := func(path, v string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if cgroupV2 {
		write(filepath.Join(env.CgroupRoot, env.CgroupParent, ns, "capped", "cpu.max"), "20000 100000")
	} else {
		cpu := filepath.Join(env.CgroupRoot, "cpu", env.CgroupParent, ns, "capped")
		write(filepath.Join(cpu, "cpu.cfs_period_us"), "100000")
		write(filepath.Join(cpu, "cpu.cfs_quota_us"), "20000")
		blkio := filepath.Join(env.CgroupRoot, "blkio", env.CgroupParent, ns, "disk")
		dev := diskOf(t, os.TempDir())
		for _, f := range []string{"blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device"} {
			write(filepath.Join(blkio, f), dev+" 1099511627776")
		}
	}

	sel := func(container string) string {
		return fmt.Sprintf(`{node=%q,namespace=%q,container=%q}`, node, ns, container)
	}
	ge := func(min float64) func(float64) bool { return func(v float64) bool { return v >= min } }
	eq := func(want float64) func(float64) bool { return func(v float64) bool { return v == want } }
	near := func(want float64) func(float64) bool { return func(v float64) bool { return math.Abs(v-want) < 1e-9 } }

	// Through PromQL against the real Prometheus.
	waitValue(ctx, t, c, "vigil_container_cpu_cfs_throttled_periods_total"+sel("capped"), ge(1))
	// capped spins under a 0.2-core quota: its throttled time rises.
	waitValue(ctx, t, c, "rate(vigil_container_cpu_cfs_throttled_seconds_total"+sel("capped")+"[30s])", func(v float64) bool { return v > 0 })
	waitValue(ctx, t, c, "vigil_container_spec_cpu_quota_seconds"+sel("capped")+" / vigil_container_spec_cpu_period_seconds"+sel("capped"), near(0.2))
	waitValue(ctx, t, c, "vigil_container_memory_limit_bytes"+sel("capped"), eq(limit))
	// Only that the series exists (capped stays under its memory limit).
	waitValue(ctx, t, c, "vigil_container_memory_failcnt_total"+sel("capped"), ge(0))
	// The porting table's throttling ratio has data.
	waitValue(ctx, t, c, "sum by (container) (rate(vigil_container_cpu_cfs_throttled_periods_total"+sel("capped")+"[30s])) / sum by (container) (rate(vigil_container_cpu_cfs_periods_total"+sel("capped")+"[30s]))", func(v float64) bool { return v > 0 && v <= 1 })

	const ioSize = 64 * 4096
	waitValue(ctx, t, c, "vigil_container_fs_writes_bytes_total"+sel("disk"), ge(ioSize))
	waitValue(ctx, t, c, "vigil_container_fs_reads_bytes_total"+sel("disk"), ge(ioSize))
	waitValue(ctx, t, c, "vigil_container_fs_writes_total"+sel("disk"), ge(1))
	waitValue(ctx, t, c, "vigil_container_fs_reads_total"+sel("disk"), ge(1))

	waitValue(ctx, t, c, "vigil_container_restart_gave_up"+sel("crasher"), eq(1))
	assertValue(ctx, t, c, "vigil_container_restarts_total"+sel("crasher"), 2)
	assertValue(ctx, t, c, fmt.Sprintf(`vigil_container_last_terminated_reason{node=%q,namespace=%q,container="crasher",reason="error"}`, node, ns), 1)
	assertValue(ctx, t, c, fmt.Sprintf(`sum(vigil_container_exits_total{node=%q,namespace=%q,container="crasher",exit_code="3"})`, node, ns), 3)
	assertValue(ctx, t, c, "vigil_container_crash_looping"+sel("crasher"), 0) // it gave up: no backoff in force

	linkDown := func(iface string) string {
		return fmt.Sprintf(`vigil_container_network_condition{node=%q,namespace=%q,container="unplugged",interface=%q,condition="LinkDown",status="true"}`, node, ns, iface)
	}
	waitValue(ctx, t, c, linkDown("sig1"), eq(1))
	waitValue(ctx, t, c, linkDown("sig0"), eq(1))
	waitValue(ctx, t, c, fmt.Sprintf(`vigil_container_network_condition{node=%q,namespace=%q,container="unplugged",interface="",condition="NoDefaultRoute"}`, node, ns), eq(1))
	// The alert an operator would write: containers with a link down.
	waitValue(ctx, t, c, fmt.Sprintf(`count(vigil_container_network_condition{node=%q,condition="LinkDown",status="true"} == 1)`, node), eq(2))

	waitValue(ctx, t, c, fmt.Sprintf(`vigil_node_condition{node=%q,condition="RuntimeAvailable",status="true"}`, node), eq(1))
	waitValue(ctx, t, c, fmt.Sprintf(`vigil_node_agent_dropped_messages_total{node=%q}`, node), eq(0))
	waitValue(ctx, t, c, fmt.Sprintf(`vigil_node_agent_state_write_failures_total{node=%q}`, node), eq(0))
	waitValue(ctx, t, c, fmt.Sprintf(`vigil_node_agent_buffer_capacity_messages{node=%q}`, node), ge(1))
	waitValue(ctx, t, c, fmt.Sprintf(`vigil_node_agent_resident_memory_bytes{node=%q}`, node), ge(1<<20))

	// The same through the aggregator's exposition, read with
	// Prometheus's parser: every family above, no series twice.
	body := get(ctx, t, "http://"+addrs[1]+"/metrics")
	if _, err := expotest.Check([]byte(body)); err != nil {
		t.Fatalf("aggregator /metrics: %v", err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		family, container string
		labels            map[string]string
		ok                func(float64) bool
	}{
		{"vigil_container_cpu_cfs_throttled_periods_total", "capped", nil, ge(1)},
		{"vigil_container_spec_cpu_quota_seconds", "capped", nil, eq(0.02)},
		{"vigil_container_memory_limit_bytes", "capped", nil, eq(limit)},
		{"vigil_container_fs_writes_bytes_total", "disk", nil, ge(ioSize)},
		{"vigil_container_restart_gave_up", "crasher", nil, eq(1)},
		{"vigil_container_last_terminated_reason", "crasher", map[string]string{"reason": "error"}, eq(1)},
		{"vigil_container_network_condition", "unplugged", map[string]string{"interface": "sig1", "condition": "LinkDown", "status": "true"}, eq(1)},
		{"vigil_node_agent_reconnects_total", "", nil, ge(0)},
	} {
		v, ok := sampleOf(mfs[tc.family], node, ns, tc.container, tc.labels)
		if !ok || !tc.ok(v) {
			t.Errorf("aggregator /metrics: %s of %q %v: %v (found %t)", tc.family, tc.container, tc.labels, v, ok)
		}
	}
	// A healthy namespace has no condition series.
	if _, ok := sampleOf(mfs["vigil_container_network_condition"], node, ns, "capped", nil); ok {
		t.Error("a condition series for capped, whose network namespace has no condition")
	}
}

// sampleOf finds the value of the series of mf with node and, for a
// container's series, namespace and container, and the given labels.
func sampleOf(mf *dto.MetricFamily, node, ns, container string, labels map[string]string) (float64, bool) {
	for _, m := range mf.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if got["node"] != node || (container != "" && (got["namespace"] != ns || got["container"] != container)) {
			continue
		}
		match := true
		for k, v := range labels {
			if got[k] != v {
				match = false
			}
		}
		if !match {
			continue
		}
		if c := m.GetCounter(); c != nil {
			return c.GetValue(), true
		}
		return m.GetGauge().GetValue(), true
	}
	return 0, false
}

func get(ctx context.Context, t *testing.T, url string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// diskOf returns "MAJ:MIN" of the disk (not the partition) holding dir: the
// device of cgroup v1's block I/O throttle rules.
func diskOf(t *testing.T, dir string) string {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	dev := fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	sys := filepath.Join("/sys/dev/block", dev)
	if _, err := os.Stat(filepath.Join(sys, "partition")); err != nil {
		return dev
	}
	real, err := filepath.EvalSymlinks(sys) // .../block/vda/vda1
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(filepath.Dir(real), "dev"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
