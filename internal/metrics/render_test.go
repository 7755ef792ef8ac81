package metrics_test

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/metrics"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// sceneNode is one node with every case the renderer distinguishes: a pod
// (sandbox, a container re-created by the kubelet beside its dead
// predecessor), a plain container with exits and a backoff, a stopped
// container, a host-network container, label values needing escapes, the
// host's links (one a container's veth) and a peer view.
func sceneNode() metrics.NodeInput {
	t0 := timestamppb.New(time.Unix(1_700_000_000, 0))
	t1 := timestamppb.New(time.Unix(1_700_000_100, 0))
	pod := func(name string, sandbox bool) *vigilv1.PodIdentity {
		p := &vigilv1.PodIdentity{Namespace: "shop", Name: "web-1", Uid: "u1", Sandbox: sandbox}
		if !sandbox {
			p.ContainerName = name
		}
		return p
	}
	running := vigilv1.ContainerState_CONTAINER_STATE_RUNNING
	stopped := vigilv1.ContainerState_CONTAINER_STATE_STOPPED
	containers := []*vigilv1.Container{
		{Id: "sb1", Namespace: "k8s.io", Pod: pod("", true), State: running, Image: "pause:3.9", CreatedAt: t0},
		{Id: "nginx-old", Namespace: "k8s.io", Pod: pod("nginx", false), State: stopped, Image: "nginx:1.24", CreatedAt: t0,
			Counters: &vigilv1.ContainerCounters{RestartsTotal: 1}},
		{Id: "nginx-new", Namespace: "k8s.io", Pod: pod("nginx", false), State: running, Image: "nginx:1.25", CreatedAt: t1,
			ImageDigest: "sha256:4f2a",
			// A blame beside a status other than unhealthy (no agent sends
			// one) is not rendered.
			Health: &vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_HEALTHY, Blame: vigilv1.HealthBlame_HEALTH_BLAME_NODE_NETWORK},
			Counters: &vigilv1.ContainerCounters{RestartsTotal: 1, ProbeFailuresTotal: 4, Exits: []*vigilv1.ExitCount{
				{Reason: vigilv1.ExitReason_EXIT_REASON_SIGNAL, Code: 137, Count: 1},
			}}},
		{Id: "db", Namespace: "default", State: running, Image: `reg.example/db:"quoted"\path`, CreatedAt: t0,
			Health:   &vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY, Blame: vigilv1.HealthBlame_HEALTH_BLAME_NODE_NETWORK},
			Backoff:  &vigilv1.BackoffState{CurrentDelay: durationpb.New(2500 * time.Millisecond), CrashLooping: true},
			LastExit: &vigilv1.ExitStatus{Code: 137, Reason: vigilv1.ExitReason_EXIT_REASON_OOM_KILLED},
			Counters: &vigilv1.ContainerCounters{RestartsTotal: 3, OomEventsTotal: 1, Exits: []*vigilv1.ExitCount{
				{Reason: vigilv1.ExitReason_EXIT_REASON_OOM_KILLED, Code: 137, Count: 1},
				{Reason: vigilv1.ExitReason_EXIT_REASON_ERROR, Code: 1, Count: 2},
			}}},
		{Id: "batch", Namespace: "default", State: stopped, Image: "busybox", CreatedAt: t0,
			LastExit: &vigilv1.ExitStatus{Code: 0, Reason: vigilv1.ExitReason_EXIT_REASON_COMPLETED},
			Counters: &vigilv1.ContainerCounters{Exits: []*vigilv1.ExitCount{{Reason: vigilv1.ExitReason_EXIT_REASON_COMPLETED, Code: 0, Count: 1}}}},
		{Id: "hostnet", Namespace: "default", State: running, Image: "agent", HostNetwork: true, CreatedAt: t0},
	}
	samples := map[container.Key]*vigilv1.ResourceSample{
		{Namespace: "k8s.io", ID: "nginx-new"}: plainSample("k8s.io", "nginx-new", 12.5),
		{Namespace: "k8s.io", ID: "nginx-old"}: plainSample("k8s.io", "nginx-old", 99), // stopped: not exposed
		{Namespace: "default", ID: "db"}:       limited(plainSample("default", "db", 1e-3)),
		{Namespace: "default", ID: "hostnet"}:  plainSample("default", "hostnet", 7),
	}
	link := func(name string, rx uint64) *vigilv1.Interface {
		return &vigilv1.Interface{Name: name, Kind: "veth", OperState: vigilv1.LinkOperState_LINK_OPER_STATE_UP, AdminUp: true, Carrier: true,
			RxBytes: rx, TxBytes: rx / 2, RxPackets: 10, TxPackets: 5, RxErrors: 1, TxDropped: 2}
	}
	lo := &vigilv1.Interface{Name: "lo", Kind: "loopback", OperState: vigilv1.LinkOperState_LINK_OPER_STATE_UNKNOWN, AdminUp: true, Carrier: true}
	veth := link("veth1", 500)
	veth.OwnerNamespace, veth.OwnerContainerId = "k8s.io", "sb1"
	down := link("eth1", 0)
	down.OperState = vigilv1.LinkOperState_LINK_OPER_STATE_DOWN
	network := []*vigilv1.NetworkNamespace{
		{Host: true, Inode: 1, Interfaces: []*vigilv1.Interface{lo, link("eth0", 1000), veth, down},
			Conditions: []*vigilv1.Condition{{Type: vigilv1.ConditionType_CONDITION_TYPE_LINK_DOWN, Reason: "OperDown", Interface: "eth1"}}},
		{Inode: 2, Containers: []*vigilv1.ContainerRef{{Namespace: "k8s.io", Id: "sb1"}, {Namespace: "k8s.io", Id: "nginx-new"}},
			Interfaces: []*vigilv1.Interface{lo, link("eth0", 2000)}},
		{Inode: 3, Containers: []*vigilv1.ContainerRef{{Namespace: "default", Id: "db"}}, Interfaces: []*vigilv1.Interface{link("eth0", 3000)},
			Conditions: []*vigilv1.Condition{
				{Type: vigilv1.ConditionType_CONDITION_TYPE_NO_DEFAULT_ROUTE, Reason: "NoDefaultRoute"},
				{Type: vigilv1.ConditionType_CONDITION_TYPE_LINK_DOWN, Reason: "OperDown", Interface: "eth0"},
				{Type: vigilv1.ConditionType_CONDITION_TYPE_LINK_DOWN, Reason: "AdminDown", Interface: "eth0"}, // one series
				{Type: vigilv1.ConditionType(99), Interface: "eth0"},                                           // unknown: none
			}},
		{Inode: 4, Containers: []*vigilv1.ContainerRef{{Namespace: "default", Id: "gone"}}, Interfaces: []*vigilv1.Interface{link("eth0", 1)}},
	}
	return metrics.NodeInput{
		Name: "node-1", Up: true, Containers: containers, Samples: samples, Network: network,
		Status: &vigilv1.NodeStatus{RuntimeAvailable: true, Agent: &vigilv1.AgentStatus{
			CpuSeconds: 12.5, RssBytes: 20 << 20, BufferedMessages: 3, BufferCapacity: 4096, BufferDroppedTotal: 7,
			ReconnectsTotal: 2, StateWriteFailuresTotal: 1, StateRecoveredFrom: "last-good",
			RuntimeLatency: durationpb.New(3 * time.Millisecond), LastCollectionDuration: durationpb.New(8 * time.Millisecond), NetnsHandles: 4,
		}},
		Peers: &vigilv1.PeerView{Observer: "node-1", Peers: []*vigilv1.PeerStatus{
			{Name: "node-2", State: vigilv1.PeerState_PEER_STATE_ALIVE},
			{Name: "node-3", State: vigilv1.PeerState_PEER_STATE_SUSPECT},
		}},
	}
}

// plainSample is a running container's sample with a memory limit and no
// other: no CPU quota, default shares, no swap, no block I/O yet.
func plainSample(ns, id string, cpu float64) *vigilv1.ResourceSample {
	return &vigilv1.ResourceSample{Namespace: ns, ContainerId: id, CpuUsageSeconds: cpu, CpuCfsThrottledSeconds: 0.25,
		MemoryWorkingSetBytes: 10 << 20, MemoryRssBytes: 8 << 20, MemoryCacheBytes: 2 << 20, MemoryLimitBytes: 64 << 20, PidsCurrent: 3,
		CpuCfsPeriodUs: 100000}
}

// limited gives a sample everything the conditional series wait for: a
// 0.5-CPU quota with throttling, shares, a reservation, swap, v2 memory
// events, a pids limit and block I/O.
func limited(sm *vigilv1.ResourceSample) *vigilv1.ResourceSample {
	sm.CpuCfsQuotaUs, sm.CpuCfsPeriodUs = 50000, 100000
	sm.CpuCfsPeriods, sm.CpuCfsThrottledPeriods = 1200, 300
	sm.CpuShares = 512
	sm.MemoryReservationBytes = 32 << 20
	sm.MemorySwapBytes = 4096
	sm.MemoryFailcnt = 7
	sm.MemoryHighEvents, sm.MemoryOomEvents = 5, 1
	sm.PidsLimit = 64
	sm.BlkioReadBytes, sm.BlkioWriteBytes, sm.BlkioReadOps, sm.BlkioWriteOps = 4096, 8192, 1, 2
	sm.FsUsageBytes = 1 << 20
	return sm
}

func TestRenderNodeGolden(t *testing.T) {
	var buf bytes.Buffer
	if err := metrics.WriteNode(&buf, sceneNode()); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "node.golden")
	if *update {
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("rendered node differs from %s (go test -update rewrites it):\n%s", golden, buf.String())
	}
}

func TestRenderNodeRules(t *testing.T) {
	r := metrics.RenderNode(sceneNode())
	var buf bytes.Buffer
	if _, err := metrics.WriteFamilies(&buf, []*metrics.Rendered{r}); err != nil {
		t.Fatal(err)
	}
	text := buf.String()
	families := parse(t, text)
	n := 0
	for _, mf := range families {
		n += len(mf.GetMetric())
	}
	if n != r.Series() {
		t.Fatalf("parsed %d series, Series() says %d", n, r.Series())
	}
	for _, tc := range []struct{ what, needle string }{
		{"sandbox has no series", `container_id="sb1"`},
		{"stopped predecessor yields to its replacement", `container_id="nginx-old"`},
		{"stopped container has no resource series", `vigil_container_cpu_usage_seconds_total{node="node-1",namespace="default",pod_namespace="",pod="",container="batch"}`},
		{"loopback inside a container is left out", `container="",interface="lo"`},
		{"container veth on the host is left out", `vigil_node_network_receive_bytes_total{node="node-1",interface="veth1"}`},
		{"namespace of an unknown container is left out", `receive_bytes_total{node="node-1",namespace="default",pod_namespace="",pod="",container="gone"`},
		{"image only on info", `vigil_container_running{node="node-1",namespace="default",pod_namespace="",pod="",container="db",image`},
		{"no health series without a health check", `vigil_container_health_status{node="node-1",namespace="default",pod_namespace="",pod="",container="batch"`},
		{"no blame beside a healthy status", `vigil_container_health_blame{node="node-1",namespace="k8s.io"`},
		{"no quota, no CFS periods", `vigil_container_cpu_cfs_periods_total{node="node-1",namespace="default",pod_namespace="",pod="",container="hostnet"}`},
		{"no quota, no spec period", `vigil_container_spec_cpu_period_seconds{node="node-1",namespace="default",pod_namespace="",pod="",container="hostnet"}`},
		{"default shares left out", `vigil_container_spec_cpu_shares{node="node-1",namespace="default",pod_namespace="",pod="",container="hostnet"}`},
		{"no swap, no swap series", `vigil_container_memory_swap_bytes{node="node-1",namespace="default",pod_namespace="",pod="",container="hostnet"}`},
		{"no block I/O yet, no fs series", `vigil_container_fs_reads_total{node="node-1",namespace="default",pod_namespace="",pod="",container="hostnet"}`},
		{"writable layer not measured", `vigil_container_fs_usage_bytes{node="node-1",namespace="default",pod_namespace="",pod="",container="hostnet"}`},
		{"no pids limit", `vigil_container_pids_limit{node="node-1",namespace="default",pod_namespace="",pod="",container="hostnet"}`},
		{"a condition of an unknown type is not rendered", `condition=""`},
		{"a pod's healthy network has no condition series", `vigil_container_network_condition{node="node-1",namespace="k8s.io"`},
		{"memory events only once non-zero", `vigil_container_memory_events_total{node="node-1",namespace="default",pod_namespace="",pod="",container="hostnet"`},
	} {
		if strings.Contains(text, tc.needle) {
			t.Errorf("%s: found %s", tc.what, tc.needle)
		}
	}
	for _, tc := range []struct{ what, needle string }{
		{"pod network labelled with the pod, container empty", `vigil_container_network_receive_bytes_total{node="node-1",namespace="k8s.io",pod_namespace="shop",pod="web-1",container="",interface="eth0"} 2000`},
		{"pod container named by the kubelet's name", `vigil_container_info{node="node-1",namespace="k8s.io",pod_namespace="shop",pod="web-1",container="nginx",container_id="nginx-new",image="nginx:1.25",image_id="sha256:4f2a"} 1`},
		{"crash-looping", `vigil_container_crash_looping{node="node-1",namespace="default",pod_namespace="",pod="",container="db"} 1`},
		{"last terminated by the OOM killer", `vigil_container_last_terminated_reason{node="node-1",namespace="default",pod_namespace="",pod="",container="db",reason="oom_killed"} 1`},
		{"last terminated, completed", `vigil_container_last_terminated_reason{node="node-1",namespace="default",pod_namespace="",pod="",container="batch",reason="completed"} 1`},
		{"escaped image", `image="reg.example/db:\"quoted\"\\path"`},
		{"health one-hot", `vigil_container_health_status{node="node-1",namespace="default",pod_namespace="",pod="",container="db",status="unhealthy"} 1`},
		{"unhealthy, blamed on the node's network", `vigil_container_health_blame{node="node-1",namespace="default",pod_namespace="",pod="",container="db",blame="node_network"} 1`},
		{"exits by reason and code", `vigil_container_exits_total{node="node-1",namespace="default",pod_namespace="",pod="",container="db",reason="oom_killed",exit_code="137"} 1`},
		{"backoff in seconds", `vigil_container_restart_backoff_seconds{node="node-1",namespace="default",pod_namespace="",pod="",container="db"} 2.5`},
		{"CPU quota in seconds", `vigil_container_spec_cpu_quota_seconds{node="node-1",namespace="default",pod_namespace="",pod="",container="db"} 0.05`},
		{"CFS period in seconds", `vigil_container_spec_cpu_period_seconds{node="node-1",namespace="default",pod_namespace="",pod="",container="db"} 0.1`},
		{"CFS periods", `vigil_container_cpu_cfs_periods_total{node="node-1",namespace="default",pod_namespace="",pod="",container="db"} 1200`},
		{"throttled periods", `vigil_container_cpu_cfs_throttled_periods_total{node="node-1",namespace="default",pod_namespace="",pod="",container="db"} 300`},
		{"shares", `vigil_container_spec_cpu_shares{node="node-1",namespace="default",pod_namespace="",pod="",container="db"} 512`},
		{"cache always", `vigil_container_memory_cache_bytes{node="node-1",namespace="default",pod_namespace="",pod="",container="hostnet"} 2097152`},
		{"swap", `vigil_container_memory_swap_bytes{node="node-1",namespace="default",pod_namespace="",pod="",container="db"} 4096`},
		{"reservation", `vigil_container_spec_memory_reservation_limit_bytes{node="node-1",namespace="default",pod_namespace="",pod="",container="db"} 33554432`},
		{"failcnt under a limit", `vigil_container_memory_failcnt_total{node="node-1",namespace="default",pod_namespace="",pod="",container="db"} 7`},
		{"memory.events high", `vigil_container_memory_events_total{node="node-1",namespace="default",pod_namespace="",pod="",container="db",event="high"} 5`},
		{"memory.events oom", `vigil_container_memory_events_total{node="node-1",namespace="default",pod_namespace="",pod="",container="db",event="oom"} 1`},
		{"pids limit", `vigil_container_pids_limit{node="node-1",namespace="default",pod_namespace="",pod="",container="db"} 64`},
		{"writable layer", `vigil_container_fs_usage_bytes{node="node-1",namespace="default",pod_namespace="",pod="",container="db"} 1048576`},
		{"bytes read", `vigil_container_fs_reads_bytes_total{node="node-1",namespace="default",pod_namespace="",pod="",container="db"} 4096`},
		{"bytes written", `vigil_container_fs_writes_bytes_total{node="node-1",namespace="default",pod_namespace="",pod="",container="db"} 8192`},
		{"reads", `vigil_container_fs_reads_total{node="node-1",namespace="default",pod_namespace="",pod="",container="db"} 1`},
		{"writes", `vigil_container_fs_writes_total{node="node-1",namespace="default",pod_namespace="",pod="",container="db"} 2`},
		{"host link down", `vigil_node_network_up{node="node-1",interface="eth1"} 0`},
		{"loopback up", `vigil_node_network_up{node="node-1",interface="lo"} 1`},
		{"peer suspect", `vigil_node_peer_reachable{node="node-1",peer="node-3"} 0`},
		{"container link down", `vigil_container_network_condition{node="node-1",namespace="default",pod_namespace="",pod="",container="db",interface="eth0",condition="LinkDown",status="true"} 1`},
		{"container without a default route", `vigil_container_network_condition{node="node-1",namespace="default",pod_namespace="",pod="",container="db",interface="",condition="NoDefaultRoute",status="true"} 1`},
		{"host link down", `vigil_node_network_condition{node="node-1",interface="eth1",condition="LinkDown",status="true"} 1`},
		{"agent's dropped messages", `vigil_node_agent_dropped_messages_total{node="node-1"} 7`},
		{"agent's reconnects", `vigil_node_agent_reconnects_total{node="node-1"} 2`},
		{"agent's state write failures", `vigil_node_agent_state_write_failures_total{node="node-1"} 1`},
		{"agent's state recovered", `vigil_node_agent_state_recovered{node="node-1",from="last-good"} 1`},
		{"agent's buffer", `vigil_node_agent_buffer_messages{node="node-1"} 3`},
		{"containerd latency", `vigil_node_agent_runtime_latency_seconds{node="node-1"} 0.003`},
		{"runtime available", `vigil_node_condition{node="node-1",condition="RuntimeAvailable",status="true"} 1`},
	} {
		if !strings.Contains(text, tc.needle) {
			t.Errorf("%s: missing %s", tc.what, tc.needle)
		}
	}
}

func parse(t *testing.T, text string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("exposition does not parse: %v\n%s", err, text)
	}
	return mfs
}

func TestWriteFamiliesGroupsNodes(t *testing.T) {
	a := sceneNode()
	b := sceneNode()
	b.Name = "node-2"
	var buf bytes.Buffer
	if _, err := metrics.WriteFamilies(&buf, []*metrics.Rendered{metrics.RenderNode(a), nil, metrics.RenderNode(b)}); err != nil {
		t.Fatal(err)
	}
	// The parser rejects a family whose lines are split in two groups.
	mfs := parse(t, buf.String())
	if got := len(mfs["vigil_node_up"].GetMetric()); got != 2 {
		t.Fatalf("vigil_node_up has %d series, want 2", got)
	}
	if c := strings.Count(buf.String(), "# TYPE vigil_container_info "); c != 1 {
		t.Fatalf("TYPE of vigil_container_info written %d times", c)
	}
}

func TestPromtoolCheckMetrics(t *testing.T) {
	const promtool = "/usr/bin/promtool"
	if _, err := os.Stat(promtool); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required in CI: %v", promtool, err)
		}
		t.Skipf("promtool not installed (apt-get install -y prometheus): %v", err)
	}
	a, b := sceneNode(), sceneNode()
	b.Name = "node-2"
	var buf bytes.Buffer
	if _, err := metrics.WriteFamilies(&buf, []*metrics.Rendered{metrics.RenderNode(a), metrics.RenderNode(b)}); err != nil {
		t.Fatal(err)
	}
	CheckWithPromtool(t, buf.Bytes())
}

// CheckWithPromtool fails t unless `promtool check metrics` is silent and
// succeeds on text.
func CheckWithPromtool(t *testing.T, text []byte) {
	t.Helper()
	cmd := exec.Command("/usr/bin/promtool", "check", "metrics")
	cmd.Stdin = bytes.NewReader(text)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

func TestShardOfIsStable(t *testing.T) {
	// FNV-1a 64 of the node name, modulo N: fixed values guard against a
	// change of hash that would move every node to another target.
	for _, tc := range []struct {
		node   string
		shards int
		want   int
	}{
		{"node-a", 1, 0},
		{"node-a", 4, int(metrics.NodeHash("node-a") % 4)},
	} {
		if got := metrics.ShardOf(tc.node, tc.shards); got != tc.want {
			t.Errorf("ShardOf(%q, %d) = %d, want %d", tc.node, tc.shards, got, tc.want)
		}
	}
	if got := metrics.NodeHash("node-a"); got != 0xe6971cc22078cb53 {
		t.Errorf("NodeHash(node-a) = %#x; the shard hash changed", got)
	}
	counts := make([]int, 10)
	for i := range 1000 {
		counts[metrics.ShardOf("node-"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+strconv.Itoa(i), 10)]++
	}
	for i, c := range counts {
		if c < 50 || c > 150 {
			t.Errorf("shard %d holds %d of 1000 nodes: the hash spreads badly (%v)", i, c, counts)
		}
	}
}

func TestParseShard(t *testing.T) {
	for _, tc := range []struct {
		shard, shards string
		want          metrics.Shard
		err           string
	}{
		{"", "", metrics.Shard{Of: 1}, ""},
		{"0", "4", metrics.Shard{Index: 0, Of: 4}, ""},
		{"3", "4", metrics.Shard{Index: 3, Of: 4}, ""},
		{"4", "4", metrics.Shard{}, "shard=\"4\": want an integer from 0 to 3"},
		{"-1", "4", metrics.Shard{}, "want an integer from 0 to 3"},
		{"1", "", metrics.Shard{}, "must be given together"},
		{"0", "0", metrics.Shard{}, "shards=\"0\": want an integer from 1 to 1024"},
		{"a", "2", metrics.Shard{}, "shard=\"a\""},
		{"0", "99999", metrics.Shard{}, "from 1 to 1024"},
	} {
		got, err := metrics.ParseShard(tc.shard, tc.shards)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseShard(%q, %q) error = %v, want it to say %q", tc.shard, tc.shards, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseShard(%q, %q) = %v, %v; want %v", tc.shard, tc.shards, got, err, tc.want)
		}
	}
}

// TestExitsMergedOnTheirLabels: UNSPECIFIED and an enum value this build
// does not know both show as reason="unknown"; they are one series whose
// count is the sum, and repeated entries of one reason are summed too.
func TestExitsMergedOnTheirLabels(t *testing.T) {
	c := &vigilv1.Container{Id: "c1", Namespace: "default", State: vigilv1.ContainerState_CONTAINER_STATE_RUNNING,
		Counters: &vigilv1.ContainerCounters{Exits: []*vigilv1.ExitCount{
			{Reason: vigilv1.ExitReason_EXIT_REASON_UNSPECIFIED, Code: 3, Count: 1},
			{Reason: vigilv1.ExitReason_EXIT_REASON_ERROR, Code: 3, Count: 5},
			{Reason: vigilv1.ExitReason(99), Code: 3, Count: 2},
			{Reason: vigilv1.ExitReason_EXIT_REASON_ERROR, Code: 3, Count: 7},
		}}}
	var buf bytes.Buffer
	if err := metrics.WriteNode(&buf, metrics.NodeInput{Name: "n1", Up: true, Containers: []*vigilv1.Container{c}}); err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, m := range parse(t, buf.String())["vigil_container_exits_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "reason" {
				if _, dup := got[l.GetValue()]; dup {
					t.Fatalf("reason %q appears twice:\n%s", l.GetValue(), buf.String())
				}
				got[l.GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	if got["unknown"] != 3 || got["error"] != 12 || len(got) != 2 {
		t.Fatalf("exits by reason = %v, want unknown 3 and error 12\n%s", got, buf.String())
	}
}

// TestSeriesPerContainer renders one running container with one interface
// (and loopback), plain and then with every limit and counter set, against
// the same node without it, and logs the series it adds (the count is
// written in docs/benchmarks.md). It checks the plain container gets none
// of the conditional series: exactly the limited one's count minus the 15
// that wait for a limit, a counter, block I/O or a writable-layer reading.
func TestSeriesPerContainer(t *testing.T) {
	node := func(sm *vigilv1.ResourceSample) metrics.NodeInput {
		in := metrics.NodeInput{Name: "n", Up: true}
		if sm == nil {
			return in
		}
		in.Containers = []*vigilv1.Container{{Id: "c", Namespace: "default", State: vigilv1.ContainerState_CONTAINER_STATE_RUNNING, Image: "i"}}
		in.Samples = map[container.Key]*vigilv1.ResourceSample{{Namespace: "default", ID: "c"}: sm}
		in.Network = []*vigilv1.NetworkNamespace{{Inode: 2, Containers: []*vigilv1.ContainerRef{{Namespace: "default", Id: "c"}},
			Interfaces: []*vigilv1.Interface{{Name: "lo", Kind: "loopback"}, {Name: "eth0", Kind: "veth"}}}}
		return in
	}
	base := metrics.RenderNode(node(nil)).Series()
	plain := metrics.RenderNode(node(plainSample("default", "c", 1))).Series() - base
	full := metrics.RenderNode(node(limited(plainSample("default", "c", 1)))).Series() - base
	t.Logf("series per running container with one interface: %d plain (no quota, no I/O yet), %d with every limit, swap, memory events and block I/O", plain, full)
	// quota, period, CFS periods, throttled periods, shares, swap,
	// reservation, failcnt, 2 memory events, pids limit, 4 block I/O,
	// writable layer = 16; failcnt is in both (the plain sample has a
	// memory limit).
	if full-plain != 15 {
		t.Errorf("the limited container adds %d series over the plain one, want 15", full-plain)
	}
}
