package metrics_test

import (
	"time"

	"bytes"
	"io"
	"testing"

	"google.golang.org/protobuf/types/known/durationpb"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/metrics"
	"github.com/vigilhq/vigil/internal/metrics/expotest"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// cacheWrite writes in through c and checks that it is what WriteNode
// writes for the same input, byte for byte.
func cacheWrite(t *testing.T, c *metrics.NodeCache, in metrics.NodeInput) string {
	t.Helper()
	var got, want bytes.Buffer
	n, err := c.Write(&got, in)
	if err != nil {
		t.Fatal(err)
	}
	if err := metrics.WriteNode(&want, in); err != nil {
		t.Fatal(err)
	}
	if got.String() != want.String() {
		t.Fatalf("NodeCache wrote\n%s\nWriteNode wrote\n%s", got.String(), want.String())
	}
	parsed, err := expotest.Check(got.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if parsed != n {
		t.Fatalf("Write says %d series, the exposition has %d", n, parsed)
	}
	return got.String()
}

func TestNodeCacheRendersOnlyWhatChanged(t *testing.T) {
	in := sceneNode()
	var c metrics.NodeCache
	cacheWrite(t, &c, in)
	// nginx (the running one of two), db, batch, hostnet.
	const shown = 4
	if st := c.Stats(); st.Rendered != shown || st.Reused != 0 {
		t.Fatalf("first write: %+v, want %d rendered", st, shown)
	}

	cacheWrite(t, &c, in)
	if st := c.Stats(); st.Rendered != shown || st.Reused != shown {
		t.Fatalf("unchanged input: %+v, want every container reused", st)
	}

	// A new sample of one container, with a new timestamp and the same
	// values for another: only the first is rendered again.
	db := container.Key{Namespace: "default", ID: "db"}
	hostnet := container.Key{Namespace: "default", ID: "hostnet"}
	next := proto.Clone(in.Samples[db]).(*vigilv1.ResourceSample)
	next.CpuUsageSeconds += 0.5
	same := proto.Clone(in.Samples[hostnet]).(*vigilv1.ResourceSample)
	same.Timestamp = nil
	in.Samples = map[container.Key]*vigilv1.ResourceSample{
		db: next, hostnet: same, {Namespace: "k8s.io", ID: "nginx-new"}: in.Samples[container.Key{Namespace: "k8s.io", ID: "nginx-new"}],
	}
	text := cacheWrite(t, &c, in)
	if st := c.Stats(); st.Rendered != shown+1 || st.Reused != 2*shown-1 {
		t.Fatalf("one sample changed: %+v, want one more rendered", st)
	}
	if !bytes.Contains([]byte(text), []byte(`vigil_container_cpu_usage_seconds_total{node="node-1",namespace="default",pod_namespace="",pod="",container="db"} 0.501`)) {
		t.Fatal("the changed sample is not in the exposition")
	}

	// A container event (db stops): rendered again, its resource series go.
	in.Containers = append([]*vigilv1.Container(nil), in.Containers...)
	for i, ct := range in.Containers {
		if ct.GetId() == "db" {
			ct = proto.Clone(ct).(*vigilv1.Container)
			ct.State = vigilv1.ContainerState_CONTAINER_STATE_STOPPED
			in.Containers[i] = ct
		}
	}
	text = cacheWrite(t, &c, in)
	if bytes.Contains([]byte(text), []byte(`vigil_container_cpu_usage_seconds_total{node="node-1",namespace="default",pod_namespace="",pod="",container="db"}`)) {
		t.Fatal("a stopped container still has resource series")
	}

	// A container removed: its series go at once.
	in.Containers = in.Containers[:len(in.Containers)-1] // hostnet
	text = cacheWrite(t, &c, in)
	if bytes.Contains([]byte(text), []byte(`container="hostnet"`)) {
		t.Fatal("a removed container still has series")
	}

	// Another node name: everything is rendered again under it.
	in.Name = "node-9"
	before := c.Stats().Rendered
	cacheWrite(t, &c, in)
	if got := c.Stats().Rendered - before; got != shown-1 {
		t.Fatalf("renamed node: %d rendered, want %d", got, shown-1)
	}
}

// blockingWriter accepts its first Write, then blocks every later one
// until release is closed: a scraper that stopped reading.
type blockingWriter struct {
	wrote   chan struct{}
	release chan struct{}
	n       int
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	w.n++
	if w.n == 1 {
		close(w.wrote)
	}
	<-w.release
	return len(p), nil
}

// TestNodeCacheScrapeWhileHeld: a scrape that finds the cache held by a
// scraper that stopped reading is not held up: it renders on its own and
// writes the same exposition; the cache is usable again once the slow one
// is done.
func TestNodeCacheScrapeWhileHeld(t *testing.T) {
	in := sceneNode()
	var c metrics.NodeCache
	cacheWrite(t, &c, in)
	slow := &blockingWriter{wrote: make(chan struct{}), release: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		_, err := c.Write(slow, in)
		done <- err
	}()
	<-slow.wrote // the slow scrape holds the cache, blocked in its writer
	cacheWrite(t, &c, in)
	if st := c.Stats(); st.Uncached != 1 {
		t.Fatalf("stats %+v: want the scrape while held counted as uncached", st)
	}
	close(slow.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	before := c.Stats()
	cacheWrite(t, &c, in)
	if st := c.Stats(); st.Uncached != before.Uncached || st.Reused <= before.Reused {
		t.Fatalf("after the slow scrape: %+v (before %+v), want the cache used again", st, before)
	}
}

// TestSampleFingerprintCoversEveryField: a change of any field of a
// resource sample but its key and timestamp shows in the exposition the
// cache writes (a field added to the protocol and rendered, but left out
// of the fingerprint, would be served stale).
func TestSampleFingerprintCoversEveryField(t *testing.T) {
	in := sceneNode()
	db := container.Key{Namespace: "default", ID: "db"}
	base := in.Samples[db]
	fields := base.ProtoReflect().Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		switch fd.Name() {
		case "namespace", "container_id", "timestamp":
			continue
		}
		var c metrics.NodeCache
		in.Samples[db] = base
		if _, err := c.Write(io.Discard, in); err != nil {
			t.Fatal(err)
		}
		changed := proto.Clone(base).(*vigilv1.ResourceSample)
		m := changed.ProtoReflect()
		switch fd.Kind() {
		case protoreflect.DoubleKind:
			m.Set(fd, protoreflect.ValueOfFloat64(m.Get(fd).Float()+1))
		case protoreflect.Uint64Kind:
			m.Set(fd, protoreflect.ValueOfUint64(m.Get(fd).Uint()+1))
		default:
			t.Fatalf("field %s of kind %v: teach this test (and appendSampleValues) about it", fd.Name(), fd.Kind())
		}
		in.Samples[db] = changed
		before := c.Stats().Rendered
		if _, err := c.Write(io.Discard, in); err != nil {
			t.Fatal(err)
		}
		if c.Stats().Rendered == before {
			t.Errorf("a change of %s did not render the container again (appendSampleValues leaves it out)", fd.Name())
		}
	}
	in.Samples[db] = base
}

// BenchmarkNodeCache: the agent's local /metrics at 100 containers, written
// again with nothing changed, with every sample new (one sampling cycle of
// busy containers) and, for comparison, rendered from scratch (WriteNode).
func BenchmarkNodeCache(b *testing.B) {
	in := benchFleet(b)[0]
	b.Run("unchanged", func(b *testing.B) {
		var c metrics.NodeCache
		_, _ = c.Write(io.Discard, in)
		b.ReportAllocs()
		for b.Loop() {
			_, _ = c.Write(io.Discard, in)
		}
	})
	b.Run("every_sample_new", func(b *testing.B) {
		var c metrics.NodeCache
		_, _ = c.Write(io.Discard, in)
		fresh := make([]map[container.Key]*vigilv1.ResourceSample, 2)
		for i := range fresh {
			fresh[i] = make(map[container.Key]*vigilv1.ResourceSample, len(in.Samples))
			for k, sm := range in.Samples {
				sm = proto.Clone(sm).(*vigilv1.ResourceSample)
				sm.CpuUsageSeconds += float64(i + 1)
				fresh[i][k] = sm
			}
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			in := in
			in.Samples = fresh[i%2]
			i++
			_, _ = c.Write(io.Discard, in)
		}
	})
	b.Run("write_node", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = metrics.WriteNode(io.Discard, in)
		}
	})
}

// TestNodeCacheFollowsEveryRenderedField changes, one at a time, every
// field of a container that its series show, and checks that the cache
// writes what WriteNode writes (cacheWrite compares them byte for byte).
func TestNodeCacheFollowsEveryRenderedField(t *testing.T) {
	in := sceneNode()
	var c metrics.NodeCache
	cacheWrite(t, &c, in)
	for _, tc := range []struct {
		what   string
		change func(*vigilv1.Container)
	}{
		{"image", func(ct *vigilv1.Container) { ct.Image = "db:2" }},
		{"image digest", func(ct *vigilv1.Container) { ct.ImageDigest = "sha256:77" }},
		{"state", func(ct *vigilv1.Container) { ct.State = vigilv1.ContainerState_CONTAINER_STATE_PAUSED }},
		{"OOM events", func(ct *vigilv1.Container) { ct.Counters.OomEventsTotal++ }},
		{"restarts", func(ct *vigilv1.Container) { ct.Counters.RestartsTotal++ }},
		{"probe failures", func(ct *vigilv1.Container) { ct.Counters.ProbeFailuresTotal++ }},
		{"an exit's count", func(ct *vigilv1.Container) { ct.Counters.Exits[0].Count++ }},
		{"an exit's code", func(ct *vigilv1.Container) { ct.Counters.Exits[1].Code = 2 }},
		{"a new exit", func(ct *vigilv1.Container) {
			ct.Counters.Exits = append(ct.Counters.Exits, &vigilv1.ExitCount{Reason: vigilv1.ExitReason_EXIT_REASON_SIGNAL, Code: 143, Count: 1})
		}},
		{"backoff delay", func(ct *vigilv1.Container) { ct.Backoff.CurrentDelay = durationpb.New(5 * time.Second) }},
		{"crash looping", func(ct *vigilv1.Container) { ct.Backoff.CrashLooping = false }},
		{"gave up", func(ct *vigilv1.Container) { ct.Backoff.GaveUp = true }},
		{"last exit reason", func(ct *vigilv1.Container) { ct.LastExit.Reason = vigilv1.ExitReason_EXIT_REASON_SIGNAL }},
		{"no last exit", func(ct *vigilv1.Container) { ct.LastExit = nil }},
		{"health", func(ct *vigilv1.Container) {
			ct.Health = &vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_STARTING}
		}},
		{"no health check", func(ct *vigilv1.Container) { ct.Health = nil }},
		{"unhealthy", func(ct *vigilv1.Container) {
			ct.Health = &vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY}
		}},
		{"unhealthy, blamed on the node's network", func(ct *vigilv1.Container) {
			ct.Health = &vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY, Blame: vigilv1.HealthBlame_HEALTH_BLAME_NODE_NETWORK}
		}},
		{"pod identity", func(ct *vigilv1.Container) {
			ct.Pod = &vigilv1.PodIdentity{Namespace: "shop", Name: "db-0", ContainerName: "db"}
		}},
	} {
		for i, ct := range in.Containers {
			if ct.GetId() == "db" {
				ct = proto.Clone(ct).(*vigilv1.Container)
				tc.change(ct)
				in.Containers = append([]*vigilv1.Container(nil), in.Containers...)
				in.Containers[i] = ct
			}
		}
		t.Run(tc.what, func(t *testing.T) { cacheWrite(t, &c, in) })
	}
}

// TestSeriesBudget counts the series of one running container with one
// interface (besides loopback) and no health check, as it gains limits:
// the figures of docs/metrics.md, "Series budget".
func TestSeriesBudget(t *testing.T) {
	ct := &vigilv1.Container{Id: "c", Namespace: "default", State: vigilv1.ContainerState_CONTAINER_STATE_RUNNING, Image: "busybox",
		Counters: &vigilv1.ContainerCounters{}}
	eth := &vigilv1.Interface{Name: "eth0", Kind: "veth", OperState: vigilv1.LinkOperState_LINK_OPER_STATE_UP}
	lo := &vigilv1.Interface{Name: "lo", Kind: "loopback"}
	count := func(sm *vigilv1.ResourceSample, c *vigilv1.Container) int {
		in := metrics.NodeInput{Name: "n", Containers: []*vigilv1.Container{c},
			Samples: map[container.Key]*vigilv1.ResourceSample{{Namespace: "default", ID: "c"}: sm},
			Network: []*vigilv1.NetworkNamespace{{Inode: 2, Containers: []*vigilv1.ContainerRef{{Namespace: "default", Id: "c"}}, Interfaces: []*vigilv1.Interface{lo, eth}}}}
		empty := metrics.RenderNode(metrics.NodeInput{Name: "n"}).Series() // the node's own
		return metrics.RenderNode(in).Series() - empty
	}
	plain := &vigilv1.ResourceSample{CpuUsageSeconds: 1, MemoryWorkingSetBytes: 1}
	memLimit := proto.Clone(plain).(*vigilv1.ResourceSample)
	memLimit.MemoryLimitBytes = 64 << 20
	cpuMem := proto.Clone(memLimit).(*vigilv1.ResourceSample)
	cpuMem.CpuCfsQuotaUs, cpuMem.CpuCfsPeriodUs, cpuMem.CpuShares = 50000, 100000, 512
	all := proto.Clone(cpuMem).(*vigilv1.ResourceSample)
	all.MemoryReservationBytes, all.PidsLimit, all.BlkioWriteBytes = 32<<20, 100, 4096
	checked := proto.Clone(ct).(*vigilv1.Container)
	checked.Health = &vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_HEALTHY}
	checked.LastExit = &vigilv1.ExitStatus{Reason: vigilv1.ExitReason_EXIT_REASON_ERROR, Code: 1}
	checked.Counters = &vigilv1.ContainerCounters{Exits: []*vigilv1.ExitCount{{Reason: vigilv1.ExitReason_EXIT_REASON_ERROR, Code: 1, Count: 1}}}
	blamed := proto.Clone(checked).(*vigilv1.Container)
	blamed.Health = &vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY, Blame: vigilv1.HealthBlame_HEALTH_BLAME_NODE_NETWORK}
	for _, tc := range []struct {
		what string
		sm   *vigilv1.ResourceSample
		c    *vigilv1.Container
		want int
	}{
		{"plain", plain, ct, 23},
		{"memory limit", memLimit, ct, 24},
		{"CPU quota, shares and a memory limit", cpuMem, ct, 29},
		{"and a reservation, a pids limit, block I/O", all, ct, 35},
		{"and a health check, an exit", all, checked, 40},
		{"and its failing probe blamed on the node's network", all, blamed, 41},
	} {
		if got := count(tc.sm, tc.c); got != tc.want {
			t.Errorf("%s: %d series, docs/metrics.md says %d", tc.what, got, tc.want)
		}
	}
	// A node's own: vigil_node_up, ten per host interface, three per
	// condition (four from gossip, RuntimeAvailable, RuntimeHung), eleven
	// of its agent.
	node := metrics.NodeInput{Name: "n", Up: true, Condition: "Healthy",
		Status: &vigilv1.NodeStatus{RuntimeAvailable: true, Agent: &vigilv1.AgentStatus{
			RuntimeLatency: durationpb.New(time.Millisecond), LastCollectionDuration: durationpb.New(time.Millisecond)}},
		Network: []*vigilv1.NetworkNamespace{{Host: true, Inode: 1, Interfaces: []*vigilv1.Interface{eth}}}}
	if got := metrics.RenderNode(node).Series(); got != 1+10+18+11 {
		t.Errorf("a node with one host interface: %d series, docs/metrics.md says %d", got, 1+10+18+11)
	}
}
