package runtime

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"golang.org/x/sys/unix"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/metrics"
	"github.com/vigilhq/vigil/internal/metrics/expotest"
	"github.com/vigilhq/vigil/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// uniqueNS is a containerd namespace of the test's own, so that parallel
// tests see only their containers.
func uniqueNS(t *testing.T) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	name := strings.ToLower(strings.TrimPrefix(t.Name(), "Test"))
	name = strings.Map(func(r rune) rune {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			return r
		}
		return '-'
	}, name)
	return "rt-" + strings.Trim(name, "-") + "-" + hex.EncodeToString(b[:])
}

// watcher is a running Runtime under test.
type watcher struct {
	*Runtime
	t *testing.T
}

// startRuntime runs a Runtime on env's containerd until the test ends and
// waits until it is available.
func startRuntime(t *testing.T, env *testenv.Env, cfg Config) *watcher {
	t.Helper()
	cfg.Address = env.Address
	cfg.Logger = slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if cfg.CgroupRoot == "" {
		cfg.CgroupRoot = env.CgroupRoot
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		// Drain so that Run can finish a blocked send.
		for range r.Events() {
		}
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	w := &watcher{r, t}
	w.waitFor(20*time.Second, "available", func(ev Event) bool { return ev.Type == EventAvailable })
	return w
}

// waitFor reads events until one satisfies match, failing the test after
// timeout; events before it are discarded.
func (w *watcher) waitFor(timeout time.Duration, what string, match func(Event) bool) Event {
	w.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case ev, ok := <-w.Events():
			if !ok {
				w.t.Fatalf("events closed while waiting for %s", what)
			}
			if match(ev) {
				return ev
			}
		case <-deadline.C:
			w.t.Fatalf("no %s event within %s", what, timeout)
		}
	}
}

func (w *watcher) waitForKey(k container.Key, typ EventType) Event {
	w.t.Helper()
	return w.waitFor(20*time.Second, fmt.Sprintf("%s of %s", typ, k.ID), func(ev Event) bool { return ev.Key == k && ev.Type == typ })
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool, detail ...func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			var more []string
			for _, d := range detail {
				more = append(more, d())
			}
			t.Fatalf("%s: not within %s %s", what, timeout, strings.Join(more, "; "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestUnavailableSocket(t *testing.T) {
	t.Parallel()
	r, err := New(Config{Address: filepath.Join(t.TempDir(), "no.sock"), CallTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	select {
	case ev := <-r.Events():
		if ev.Type != EventUnavailable {
			t.Errorf("first event = %s, want unavailable", ev.Type)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no unavailable event")
	}
	if r.Available() {
		t.Error("Available() with no containerd")
	}
	if _, err := r.Exec(ctx, container.Key{Namespace: "default", ID: "x"}, []string{"true"}, 0); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("Exec: err = %v, want ErrUnavailable", err)
	}
	if _, err := New(Config{Address: "x", StatsSource: StatsSourceMetricsAPI}); err != nil {
		t.Fatal(err)
	}
	cancel()
	for range r.Events() {
	}
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
	if err := r.Run(context.Background()); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("second Run: err = %v, want ErrConflict", err)
	}
}

func TestInventoryPlainContainers(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	ns := uniqueNS(t)
	hc := testenv.DockerHealthcheck{Test: []string{"CMD", "/workload", "exit", "0"}, Interval: 3 * time.Second, Timeout: time.Second, Retries: 2}
	hcImage := env.HealthcheckImage(t, ns, hc)
	busybox := env.BusyboxImage(t, ns)

	// A container that exists before the watcher starts is found by the
	// listing; one created after, through events.
	env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "before", Image: busybox, Args: []string{"sleep", "600"},
		Labels: map[string]string{"app": "web", "containerd.io/restart.status": "running"}})
	w := startRuntime(t, env, Config{Namespaces: []string{ns}})
	before, ok := w.Container(container.Key{Namespace: ns, ID: "before"})
	if !ok || before.State != StateRunning || before.Manager != ManagerContainerd || before.Labels["app"] != "web" {
		t.Errorf("listed container = %+v", before)
	}

	env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "hc", Image: hcImage, Args: []string{"sleep"}})
	env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "hostnet", Image: busybox, Args: []string{"sleep", "600"}, HostNetwork: true})
	k := container.Key{Namespace: ns, ID: "hc"}
	ev := w.waitForKey(k, EventStarted)
	c := *ev.Container
	if c.State != StateRunning || c.Pid == 0 || c.StartedAt.IsZero() || c.CreatedAt.IsZero() || c.Image != hcImage ||
		!strings.HasPrefix(c.ImageDigest, "sha256:") || c.Manager != ManagerVigil || c.Pod != nil {
		t.Errorf("started container = %+v", c)
	}
	if c.CgroupPath == "" || !strings.HasSuffix(c.CgroupPath, "/"+ns+"/hc") {
		t.Errorf("CgroupPath = %q", c.CgroupPath)
	}
	if c.NetNSInode == 0 || c.HostNetwork {
		t.Errorf("private netns: inode %d, host %v", c.NetNSInode, c.HostNetwork)
	}
	if p := w.NetNSPath(k); p != fmt.Sprintf("/proc/%d/ns/net", c.Pid) {
		t.Errorf("NetNSPath = %q", p)
	}
	if c.Healthcheck == nil || strings.Join(c.Healthcheck.Test, " ") != "CMD /workload exit 0" || c.Healthcheck.Interval != 3*time.Second ||
		c.Healthcheck.Timeout != time.Second || c.Healthcheck.Retries != 2 {
		t.Errorf("Healthcheck = %+v, want %+v", c.Healthcheck, hc)
	}
	eventually(t, 10*time.Second, "host network container in inventory", func() bool {
		c, ok := w.Container(container.Key{Namespace: ns, ID: "hostnet"})
		return ok && c.State == StateRunning
	})
	hn, _ := w.Container(container.Key{Namespace: ns, ID: "hostnet"})
	if !hn.HostNetwork {
		t.Errorf("host network container: HostNetwork false (inode %d)", hn.NetNSInode)
	}
	if n := len(w.Containers()); n != 3 {
		t.Errorf("Containers() has %d entries, want 3", n)
	}
}

// TestImageDetailsFollowTag: a tag that cannot be resolved yet is not
// remembered as having no details, and a tag moved to another image gives
// later containers the new image's digest and healthcheck.
func TestImageDetailsFollowTag(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	ns := uniqueNS(t)
	hcA := testenv.DockerHealthcheck{Test: []string{"CMD", "/workload", "exit", "0"}, Retries: 1}
	hcB := testenv.DockerHealthcheck{Test: []string{"CMD", "/workload", "exit", "0"}, Retries: 2}
	refA := env.HealthcheckImage(t, ns, hcA)
	refB := env.HealthcheckImage(t, ns, hcB)
	w := startRuntime(t, env, Config{Namespaces: []string{ns}})
	c := env.Client(t)
	ctx := namespaces.WithNamespace(context.Background(), ns)
	imgA, err := c.ImageService().Get(ctx, refA)
	if err != nil {
		t.Fatal(err)
	}
	imgB, err := c.ImageService().Get(ctx, refB)
	if err != nil {
		t.Fatal(err)
	}
	const tag = "docker.io/vigil/retag:test"
	create := func(id string) Container {
		t.Helper()
		cont, err := c.NewContainer(ctx, id, client.WithImageName(tag), client.WithNewSpec(oci.WithDefaultSpec()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cont.Delete(ctx) })
		return *w.waitForKey(container.Key{Namespace: ns, ID: id}, EventAdded).Container
	}

	if got := create("missing"); got.ImageDigest != "" || got.Healthcheck != nil {
		t.Errorf("container of a missing image: digest %q, healthcheck %+v", got.ImageDigest, got.Healthcheck)
	}
	if _, err := c.ImageService().Create(ctx, images.Image{Name: tag, Target: imgA.Target}); err != nil {
		t.Fatal(err)
	}
	if got := create("a"); got.ImageDigest != imgA.Target.Digest.String() || got.Healthcheck == nil || got.Healthcheck.Retries != 1 {
		t.Errorf("container of tag -> A: digest %q (want %s), healthcheck %+v", got.ImageDigest, imgA.Target.Digest, got.Healthcheck)
	}
	if _, err := c.ImageService().Update(ctx, images.Image{Name: tag, Target: imgB.Target}, "target"); err != nil {
		t.Fatal(err)
	}
	if got := create("b"); got.ImageDigest != imgB.Target.Digest.String() || got.Healthcheck == nil || got.Healthcheck.Retries != 2 {
		t.Errorf("container of tag -> B: digest %q (want %s), healthcheck %+v", got.ImageDigest, imgB.Target.Digest, got.Healthcheck)
	}
}

func TestInventoryPods(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	image := env.WorkloadImage(t, "k8s.io")
	w := startRuntime(t, env, Config{Namespaces: []string{"k8s.io"}})
	pod := env.RunPod(t, testenv.PodSpec{Namespace: "shop", Name: "cart", Containers: []testenv.PodContainer{
		{Name: "app", Image: image, Args: []string{"sleep"}},
		{Name: "sidecar", Image: image, Args: []string{"sleep"}},
	}})
	for name, id := range pod.ContainerIDs {
		k := container.Key{Namespace: "k8s.io", ID: id}
		eventually(t, 15*time.Second, name+" running", func() bool {
			c, ok := w.Container(k)
			return ok && c.State == StateRunning
		})
		c, _ := w.Container(k)
		want := Pod{Namespace: "shop", Name: "cart", UID: pod.UID, ContainerName: name, SandboxID: pod.SandboxID}
		if c.Pod == nil || *c.Pod != want {
			t.Errorf("container %s: Pod = %+v, want %+v", name, c.Pod, want)
		}
		if c.Manager != ManagerKubelet {
			t.Errorf("container %s: Manager = %s", name, c.Manager)
		}
	}
	sb, ok := w.Container(container.Key{Namespace: "k8s.io", ID: pod.SandboxID})
	if !ok {
		t.Fatalf("sandbox %s not in inventory", pod.SandboxID)
	}
	want := Pod{Namespace: "shop", Name: "cart", UID: pod.UID, Sandbox: true, SandboxID: pod.SandboxID}
	if sb.Pod == nil || *sb.Pod != want {
		t.Errorf("sandbox Pod = %+v, want %+v", sb.Pod, want)
	}
	app, _ := w.Container(container.Key{Namespace: "k8s.io", ID: pod.ContainerIDs["app"]})
	if app.NetNSInode == 0 || app.NetNSInode != sb.NetNSInode {
		t.Errorf("app netns inode %d, sandbox %d: want the same, non-zero", app.NetNSInode, sb.NetNSInode)
	}
}

func TestExitClassification(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	ns := uniqueNS(t)
	image := env.WorkloadImage(t, ns)
	w := startRuntime(t, env, Config{Namespaces: []string{ns}})

	env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "three", Image: image, Args: []string{"exit", "3", "--after", "200ms"}})
	ev := w.waitForKey(container.Key{Namespace: ns, ID: "three"}, EventExited)
	if ev.Exit == nil || ev.Exit.Code != 3 || ev.Exit.Reason != ExitError || ev.Exit.At.IsZero() {
		t.Errorf("exit 3: %+v", ev.Exit)
	}
	if c, _ := w.Container(container.Key{Namespace: ns, ID: "three"}); c.State != StateStopped || c.LastExit == nil || c.LastExit.Code != 3 || c.Pid != 0 {
		t.Errorf("inventory after exit 3: %+v", c)
	}

	_, task := env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "killed", Image: image, Args: []string{"sleep"}})
	w.waitForKey(container.Key{Namespace: ns, ID: "killed"}, EventStarted)
	if err := task.Kill(namespaces.WithNamespace(context.Background(), ns), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ev = w.waitForKey(container.Key{Namespace: ns, ID: "killed"}, EventExited)
	if ev.Exit == nil || ev.Exit.Code != 137 || ev.Exit.Reason != ExitSignal || ev.Exit.Signal != "KILL" {
		t.Errorf("SIGKILL: %+v", ev.Exit)
	}

	env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "oom", Image: image, Args: []string{"oom", "--mb", "64"}, MemoryLimit: 32 << 20})
	ev = w.waitForKey(container.Key{Namespace: ns, ID: "oom"}, EventExited)
	if ev.Exit == nil || ev.Exit.Reason != ExitOOMKilled || ev.Exit.Signal != "KILL" {
		t.Errorf("OOM: %+v", ev.Exit)
	}
}

func TestPauseResume(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	ns := uniqueNS(t)
	image := env.BusyboxImage(t, ns)
	w := startRuntime(t, env, Config{Namespaces: []string{ns}})
	_, task := env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "p", Image: image, Args: []string{"sleep", "600"}})
	k := container.Key{Namespace: ns, ID: "p"}
	w.waitForKey(k, EventStarted)
	ctx := namespaces.WithNamespace(context.Background(), ns)
	if err := task.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if ev := w.waitForKey(k, EventPaused); ev.Container.State != StatePaused {
		t.Errorf("paused event state %s", ev.Container.State)
	}
	if w.NetNSPath(k) == "" {
		t.Error("paused task has no NetNSPath")
	}
	if err := task.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if ev := w.waitForKey(k, EventResumed); ev.Container.State != StateRunning {
		t.Errorf("resumed event state %s", ev.Container.State)
	}
}

// TestContainerdRestart is not parallel: it kills the package's containerd.
func TestContainerdRestart(t *testing.T) {
	env := testenv.Containerd(t)
	ns := uniqueNS(t)
	image := env.BusyboxImage(t, ns)
	w := startRuntime(t, env, Config{Namespaces: []string{ns}, CallTimeout: 2 * time.Second})
	env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "stays", Image: image, Args: []string{"sleep", "600"}})
	_, doomed := env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "dies", Image: image, Args: []string{"sleep", "600"}})
	w.waitForKey(container.Key{Namespace: ns, ID: "stays"}, EventStarted)
	w.waitForKey(container.Key{Namespace: ns, ID: "dies"}, EventStarted)

	env.Kill(t)
	w.waitFor(20*time.Second, "unavailable", func(ev Event) bool { return ev.Type == EventUnavailable })
	if w.Available() {
		t.Error("Available() while containerd is down")
	}
	// The task exits while containerd is down: its shim reaps it, nobody
	// can publish the exit event.
	if err := syscall.Kill(int(doomed.Pid()), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	env.Start(t)

	// The exit comes from the resync's listing, or from the event the shim
	// still delivers once containerd is back: before or after
	// EventAvailable.
	var exit *Exit
	available := false
	w.waitFor(20*time.Second, "exit and available", func(ev Event) bool {
		switch {
		case ev.Type == EventAvailable:
			available = true
		case ev.Type == EventExited && ev.Key == container.Key{Namespace: ns, ID: "dies"}:
			if exit != nil {
				t.Errorf("exit reported twice: %+v then %+v", exit, ev.Exit)
			}
			exit = ev.Exit
		}
		return available && exit != nil
	})
	if exit.Reason != ExitSignal || exit.Signal != "KILL" || exit.Code != 137 {
		t.Errorf("exit while disconnected: %+v", exit)
	}
	if c, _ := w.Container(container.Key{Namespace: ns, ID: "stays"}); c.State != StateRunning {
		t.Errorf("surviving container: %+v", c)
	}
	if c, _ := w.Container(container.Key{Namespace: ns, ID: "dies"}); c.State != StateStopped || c.LastExit == nil || c.LastExit.Code != 137 {
		t.Errorf("dead container: %+v", c)
	}
	// The new session follows events again.
	env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "after", Image: image, Args: []string{"sleep", "600"}})
	w.waitForKey(container.Key{Namespace: ns, ID: "after"}, EventStarted)
	if n := reconnectsExported(t, w.Collector()); n < 1 {
		t.Errorf("vigil_agent_runtime_reconnects_total = %v after a reconnect", n)
	}
}

// reconnectsExported gathers c and returns the value of
// vigil_agent_runtime_reconnects_total.
func reconnectsExported(t *testing.T, c metrics.Collector) float64 {
	t.Helper()
	mfs, err := expotest.Gatherer{c}.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "vigil_agent_runtime_reconnects_total" && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("vigil_agent_runtime_reconnects_total: no single series gathered")
	return 0
}

// TestHangingContainerd is not parallel: it freezes the package's
// containerd with SIGSTOP, a runtime that hangs rather than dies.
func TestHangingContainerd(t *testing.T) {
	env := testenv.Containerd(t)
	pid := containerdPid(t, env)
	w := startRuntime(t, env, Config{Namespaces: []string{uniqueNS(t)}, CallTimeout: 300 * time.Millisecond, ProbeInterval: 200 * time.Millisecond})
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	w.waitFor(10*time.Second, "unavailable", func(ev Event) bool { return ev.Type == EventUnavailable })
	if got := w.metrics.callTimeouts.With("version").Value(); got < 1 {
		t.Errorf("version timeouts = %v, want >= 1", got)
	}
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	w.waitFor(20*time.Second, "available", func(ev Event) bool { return ev.Type == EventAvailable })
	if w.Latency() <= 0 || w.Version() == "" {
		t.Errorf("latency %v, version %q", w.Latency(), w.Version())
	}
}

// containerdPid finds the process serving env's socket.
func containerdPid(t *testing.T, env *testenv.Env) int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmd), "\x00")
		if filepath.Base(args[0]) == "containerd" && strings.Contains(string(cmd), env.Dir) {
			return pid
		}
	}
	t.Fatalf("no containerd process with %s in its command line", env.Dir)
	return 0
}

func TestStats(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	ns := uniqueNS(t)
	image := env.WorkloadImage(t, ns)
	w := startRuntime(t, env, Config{Namespaces: []string{ns}})
	api := startRuntime(t, env, Config{Namespaces: []string{ns}, StatsSource: StatsSourceMetricsAPI})
	const limit = 64 << 20
	env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "busy", Image: image, Args: []string{"spin"}, MemoryLimit: limit})
	k := container.Key{Namespace: ns, ID: "busy"}
	w.waitForKey(k, EventStarted)
	api.waitForKey(k, EventStarted)
	ctx := context.Background()

	read := func(r *watcher) Stats {
		t.Helper()
		st, err := r.Stats(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(st) != 1 || st[0].Key != k {
			t.Fatalf("Stats = %+v, want one reading of %v", st, k)
		}
		return st[0]
	}
	first := read(w)
	time.Sleep(time.Second)
	second := read(w)
	if second.CPUUsageSeconds <= first.CPUUsageSeconds || second.CPUUserSeconds+second.CPUSystemSeconds <= 0 {
		t.Errorf("CPU of a spinning container went from %+v to %+v in 1 s", first, second)
	}
	if second.MemoryLimitBytes != limit || second.MemoryUsageBytes == 0 || second.MemoryUsageBytes > limit ||
		second.MemoryWorkingSetBytes > second.MemoryUsageBytes || second.PidsCurrent == 0 {
		t.Errorf("memory/pids: %+v", second)
	}
	if n := w.metrics.openFiles.Load(); n < 10 {
		t.Errorf("%d cgroup files open, want the container's kept open", n)
	}

	// The Metrics API reading, taken between two cgroup readings, must lie
	// between them for the cumulative CPU counter and agree on memory.
	before := read(w)
	viaAPI := read(api)
	after := read(w)
	if viaAPI.CPUUsageSeconds < before.CPUUsageSeconds || viaAPI.CPUUsageSeconds > after.CPUUsageSeconds {
		t.Errorf("Metrics API CPU %v s outside the cgroup readings [%v, %v]", viaAPI.CPUUsageSeconds, before.CPUUsageSeconds, after.CPUUsageSeconds)
	}
	if viaAPI.MemoryLimitBytes != limit || absDiff(viaAPI.MemoryUsageBytes, after.MemoryUsageBytes) > 2<<20 ||
		absDiff(viaAPI.MemoryWorkingSetBytes, after.MemoryWorkingSetBytes) > 2<<20 || viaAPI.PidsCurrent != after.PidsCurrent {
		t.Errorf("Metrics API and cgroup disagree:\napi    %+v\ncgroup %+v", viaAPI, after)
	}
}

// TestStatsSpec: a container with a memory limit (set by its OCI spec)
// and a CPU quota, shares and memory reservation (written into its cgroup,
// as an update would: testenv's container spec sets only the memory limit)
// shows them in its cgroup reading, and a spinning container under a 0.2
// CPU quota shows throttled periods.
func TestStatsSpec(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	ns := uniqueNS(t)
	image := env.WorkloadImage(t, ns)
	w := startRuntime(t, env, Config{Namespaces: []string{ns}})
	const limit, reservation = 64 << 20, 32 << 20
	env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "capped", Image: image, Args: []string{"spin"}, MemoryLimit: limit})
	k := container.Key{Namespace: ns, ID: "capped"}
	w.waitForKey(k, EventStarted)

	l, err := detectCgroupLayout(env.CgroupRoot)
	if err != nil {
		t.Fatal(err)
	}
	files := cgroupFiles(l, filepath.Join("/", env.CgroupParent, ns, "capped"))
	write := func(f cgroupFile, v string) {
		t.Helper()
		if err := os.WriteFile(files[f], []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	wantShares := uint64(512)
	if l.version == cgroupV2 {
		write(fCPUQuota, "20000 100000")
		write(fCPUShares, "20") // weight 20 is 500 shares as cAdvisor converts
		wantShares = 500
	} else {
		write(fCPUPeriod, "100000")
		write(fCPUQuota, "20000")
		write(fCPUShares, "512")
	}
	write(fMemReservation, fmt.Sprint(reservation))

	ctx := context.Background()
	var last Stats
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := w.Stats(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(st) == 1 && st[0].Key == k {
			last = st[0]
			if last.CPUThrottledPeriods > 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("a spinning container under a 0.2 CPU quota shows no throttled period in 20 s: %+v", last)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if last.CPUQuotaMicros != 20000 || last.CPUPeriodMicros != 100000 || last.CPUShares != wantShares ||
		last.MemoryLimitBytes != limit || last.MemoryReservationBytes != reservation ||
		last.CPUPeriods < last.CPUThrottledPeriods {
		t.Errorf("spec in the reading: quota %d period %d shares %d (want %d) limit %d reservation %d periods %d throttled %d",
			last.CPUQuotaMicros, last.CPUPeriodMicros, last.CPUShares, wantShares, last.MemoryLimitBytes, last.MemoryReservationBytes,
			last.CPUPeriods, last.CPUThrottledPeriods)
	}
}

// TestStatsBlockIO: a container that writes and reads 256 KiB with
// O_DIRECT (so that the I/O is charged to its cgroup, not to the page
// cache's writeback) shows at least that in its block I/O bytes and
// operations. On cgroup v1 the kernel (6.x here) counts the
// blkio.throttle.* statistics only for a cgroup with a throttle rule on
// the device, so the test sets a rule far above what it does (1 TiB/s) on
// the disk under the temporary directory, where the private containerd
// keeps its snapshots; without one, v1 block I/O reads 0 (docs/metrics.md).
func TestStatsBlockIO(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	ns := uniqueNS(t)
	w := startRuntime(t, env, Config{Namespaces: []string{ns}})
	env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "disk", Image: env.BusyboxImage(t, ns), Args: []string{"sh", "-c",
		"sleep 2 && dd if=/dev/zero of=/f bs=4096 count=64 oflag=direct && dd if=/f of=/dev/null bs=4096 iflag=direct && sleep 1000"}})
	k := container.Key{Namespace: ns, ID: "disk"}
	w.waitForKey(k, EventStarted)
	l, err := detectCgroupLayout(env.CgroupRoot)
	if err != nil {
		t.Fatal(err)
	}
	if l.version == cgroupV1 {
		dev := wholeDisk(t, os.TempDir())
		dir := filepath.Join(l.blkio, env.CgroupParent, ns, "disk")
		for _, f := range []string{"blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device"} {
			if err := os.WriteFile(filepath.Join(dir, f), []byte(dev+" 1099511627776"), 0o644); err != nil {
				t.Fatalf("throttle rule on %s: %v", dev, err)
			}
		}
	}
	const size = 64 * 4096
	var last Stats
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := w.Stats(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(st) == 1 && st[0].Key == k {
			last = st[0]
			if last.BlkioWriteBytes >= size && last.BlkioReadBytes >= size && last.BlkioWriteOps >= 1 && last.BlkioReadOps >= 1 {
				return
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(env.LogPathOf(ns, "disk"))
			t.Fatalf("256 KiB written and read with O_DIRECT not in the block I/O counters in 20 s: read %d B in %d ops, written %d B in %d ops; container log:\n%s",
				last.BlkioReadBytes, last.BlkioReadOps, last.BlkioWriteBytes, last.BlkioWriteOps, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// wholeDisk returns "MAJ:MIN" of the disk (not the partition) holding dir.
func wholeDisk(t *testing.T, dir string) string {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	dev := fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	sys := filepath.Join("/sys/dev/block", dev)
	if _, err := os.Stat(filepath.Join(sys, "partition")); err == nil {
		real, err := filepath.EvalSymlinks(sys) // .../block/vda/vda1
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(filepath.Dir(real), "dev"))
		if err != nil {
			t.Fatal(err)
		}
		dev = strings.TrimSpace(string(b))
	}
	return dev
}

func absDiff(a, b uint64) uint64 {
	if a > b {
		return a - b
	}
	return b - a
}

func TestControl(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	ns := uniqueNS(t)
	image := env.BusyboxImage(t, ns)
	w := startRuntime(t, env, Config{Namespaces: []string{ns}, LogDir: t.TempDir()})
	ctx := context.Background()

	env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "x", Image: image, Args: []string{"sleep", "600"}, Env: []string{"GREETING=hello"},
		Labels: map[string]string{"tier": "web"}})
	k := container.Key{Namespace: ns, ID: "x"}
	w.waitForKey(k, EventStarted)

	t.Run("exec", func(t *testing.T) {
		res, err := w.Exec(ctx, k, []string{"sh", "-c", "echo $GREETING; echo oops >&2; exit 4"}, 0)
		if err != nil || res.ExitCode != 4 || !strings.Contains(string(res.Output), "hello") || !strings.Contains(string(res.Output), "oops") {
			t.Errorf("Exec = %+v (%q), %v", res, res.Output, err)
		}
		res, err = w.Exec(ctx, k, []string{"sh", "-c", "yes | head -c 100000"}, 1000)
		if err != nil || len(res.Output) != 1000 {
			t.Errorf("capped Exec: %d bytes, %v", len(res.Output), err)
		}
		// A background child holding stdout must not hold Exec (nor leak
		// the exec process) past the shell's exit.
		bstart := time.Now()
		res, err = w.Exec(ctx, k, []string{"sh", "-c", "echo bg; sleep 60 & exit 3"}, 0)
		if err != nil || res.ExitCode != 3 || !strings.Contains(string(res.Output), "bg") {
			t.Errorf("Exec leaving a background child = %+v (%q), %v", res, res.Output, err)
		}
		if d := time.Since(bstart); d > 20*time.Second {
			t.Errorf("Exec leaving a background child took %s: it waited for the child", d)
		}
		tctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err = w.Exec(tctx, k, []string{"sleep", "30"}, 0)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Exec past its deadline: err = %v", err)
		}
		if time.Since(start) > 10*time.Second {
			t.Errorf("Exec past its deadline took %s", time.Since(start))
		}
		if _, err := w.Exec(ctx, container.Key{Namespace: ns, ID: "nope"}, []string{"true"}, 0); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("Exec in a missing container: %v", err)
		}
	})

	t.Run("kill", func(t *testing.T) {
		if err := w.Kill(ctx, container.Key{Namespace: ns, ID: "nope"}, syscall.SIGKILL); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("Kill of a missing container: %v", err)
		}
		if err := w.Restart(ctx, k); !errors.Is(err, errdefs.ErrConflict) {
			t.Errorf("Restart of a running task: %v", err)
		}
		if err := w.Kill(ctx, k, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if ev := w.waitForKey(k, EventExited); ev.Exit.Signal != "KILL" {
			t.Errorf("Kill: exit %+v", ev.Exit)
		}
	})

	t.Run("restart", func(t *testing.T) {
		old, _ := w.Container(k)
		if err := w.Restart(ctx, k); err != nil {
			t.Fatal(err)
		}
		ev := w.waitForKey(k, EventStarted)
		if ev.Container.Pid == 0 || ev.Container.Pid == old.Pid || ev.Container.Labels["tier"] != "web" {
			t.Errorf("restarted: %+v (old pid %d)", ev.Container, old.Pid)
		}
		res, err := w.Exec(ctx, k, []string{"sh", "-c", "echo $GREETING"}, 0)
		if err != nil || strings.TrimSpace(string(res.Output)) != "hello" {
			t.Errorf("restarted task lost its spec: %q, %v", res.Output, err)
		}
	})

	t.Run("stop", func(t *testing.T) {
		// busybox sleep as pid 1 ignores SIGTERM: Stop must escalate.
		if err := w.Stop(ctx, k, 300*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		if ev := w.waitForKey(k, EventExited); ev.Exit.Signal != "KILL" {
			t.Errorf("Stop: exit %+v, want KILL after the grace period", ev.Exit)
		}
		if err := w.Stop(ctx, k, time.Second); err != nil {
			t.Errorf("Stop of an exited task: %v", err)
		}
	})
}

// TestRestartKeepsLog: a task whose output went to a file:// URI is
// restarted into the same file, stderr included, and so is the restarted
// task in turn. The task closes its stdout before it writes to stderr:
// given the file:// URI, the shim closes the file when stdout ends, and the
// first run (started with that URI by testenv) loses its stderr; the
// restarted runs must not.
func TestRestartKeepsLog(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	ns := uniqueNS(t)
	image := env.BusyboxImage(t, ns)
	w := startRuntime(t, env, Config{Namespaces: []string{ns}, LogDir: t.TempDir()})
	env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "echo", Image: image, Args: []string{"sh", "-c", "echo ran-once; exec 1>&-; sleep 0.2; echo err-once >&2"},
		Labels: map[string]string{"vigil.io/restart-policy": "always"}})
	k := container.Key{Namespace: ns, ID: "echo"}
	w.waitForKey(k, EventExited)
	for run := 2; run <= 3; run++ {
		if err := w.Restart(context.Background(), k); err != nil {
			t.Fatal(err)
		}
		ev := w.waitForKey(k, EventExited)
		if ev.Exit.Reason != ExitCompleted || ev.Container.Labels["vigil.io/restart-policy"] != "always" {
			t.Errorf("restarted run: %+v, labels %v", ev.Exit, ev.Container.Labels)
		}
		var got []byte
		eventually(t, 10*time.Second, fmt.Sprintf("%d runs in the log, the last with its stderr", run), func() bool {
			got, _ = os.ReadFile(env.LogPathOf(ns, "echo"))
			return strings.Count(string(got), "ran-once") == run && strings.HasSuffix(string(got), "ran-once\nerr-once\n")
		}, func() string { return fmt.Sprintf("the file holds %q", got) })
	}
}

// TestRestartRequireTaskGone: when someone else deleted the exited task
// (an operator's stop), Restart with RequireTask refuses with ErrTaskGone
// and makes no new task.
func TestRestartRequireTaskGone(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	ns := uniqueNS(t)
	image := env.BusyboxImage(t, ns)
	w := startRuntime(t, env, Config{Namespaces: []string{ns}, LogDir: t.TempDir()})
	env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "gone", Image: image, Args: []string{"true"}})
	k := container.Key{Namespace: ns, ID: "gone"}
	w.waitForKey(k, EventExited)

	ctx := namespaces.WithNamespace(context.Background(), ns)
	cont := env.DeleteTask(t, ns, "gone")

	if err := w.Restart(context.Background(), k, RequireTask()); !errors.Is(err, ErrTaskGone) {
		t.Errorf("Restart with RequireTask of a deleted task: %v, want ErrTaskGone", err)
	}
	if task, err := cont.Task(ctx, nil); err == nil {
		t.Errorf("task %s exists after a refused Restart", task.ID())
	} else if !errors.Is(translateErr(err), errdefs.ErrNotFound) {
		t.Errorf("looking for a task: %v", err)
	}
}

// TestRestartResumesInterrupted: a restart interrupted after the old task
// was deleted (no task left), or after the new task was created but before
// it was started, is finished with ResumeInterrupted; without it, a created
// task is refused and nothing changes.
func TestRestartResumesInterrupted(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	ns := uniqueNS(t)
	image := env.BusyboxImage(t, ns)
	logDir := t.TempDir()
	w := startRuntime(t, env, Config{Namespaces: []string{ns}, LogDir: logDir})
	ctx := namespaces.WithNamespace(context.Background(), ns)
	outputs := map[string]TaskOutput{}
	for _, id := range []string{"notask", "created", "previous"} {
		env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: id, Image: image, Args: []string{"sh", "-c", "echo ran; exec sleep 600 <&-"}})
		k := container.Key{Namespace: ns, ID: id}
		outputs[id] = w.waitForKey(k, EventStarted).Container.Output
		// The shim copies the task's output to the log asynchronously: a
		// kill and delete before it has copied "ran" lose it (seen under
		// load, where the log then held only the second run's line).
		eventually(t, 10*time.Second, id+": first run's output in its log", func() bool {
			b, _ := os.ReadFile(env.LogPathOf(ns, id))
			return string(b) == "ran\n"
		})
		if err := w.Kill(ctx, k, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		w.waitForKey(k, EventExited)
	}

	// Where the task's output goes, as containerd has it (testenv gives a
	// file:// URI).
	if got, want := outputs["previous"].Stdout, "file://"+env.LogPathOf(ns, "previous"); got != want {
		t.Errorf("Output.Stdout %q, want %q", got, want)
	}

	// As far as the interrupted restarts got: the exited task deleted.
	env.DeleteTask(t, ns, "previous")
	env.DeleteTask(t, ns, "notask")
	cont := env.DeleteTask(t, ns, "created")
	half, err := cont.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	halfPid := int(half.Pid())
	if halfPid == 0 {
		t.Fatal("created task has no pid")
	}
	k := container.Key{Namespace: ns, ID: "created"}
	if err := w.Restart(ctx, k); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("Restart of a created task without ResumeInterrupted: %v, want ErrConflict", err)
	}
	if st, err := half.Status(ctx); err != nil || st.Status != client.Created {
		t.Errorf("created task after a refused Restart: %v, %v", st.Status, err)
	}

	for _, id := range []string{"notask", "created"} {
		k := container.Key{Namespace: ns, ID: id}
		if err := w.Restart(ctx, k, ResumeInterrupted()); err != nil {
			t.Fatalf("%s: Restart with ResumeInterrupted: %v", id, err)
		}
		ev := w.waitForKey(k, EventStarted)
		if ev.Container.Pid == 0 || int(ev.Container.Pid) == halfPid {
			t.Errorf("%s: started %+v (the created task's pid was %d)", id, ev.Container, halfPid)
		}
		// The old task is gone, and with it where its output went: the new
		// one writes to LogDir.
		eventually(t, 10*time.Second, id+": output in LogDir", func() bool {
			b, _ := os.ReadFile(filepath.Join(logDir, ns, id+".log"))
			return string(b) == "ran\n"
		})
	}
	if err := syscall.Kill(halfPid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("the replaced created task's process %d: kill 0 = %v, want ESRCH", halfPid, err)
	}
	// Told where the deleted task's output went, the new task's goes there
	// too.
	k = container.Key{Namespace: ns, ID: "previous"}
	if err := w.Restart(ctx, k, ResumeInterrupted(), PreviousOutput(outputs["previous"])); err != nil {
		t.Fatalf("previous: Restart with ResumeInterrupted and PreviousOutput: %v", err)
	}
	w.waitForKey(k, EventStarted)
	eventually(t, 10*time.Second, "previous: both runs' output in the container's log", func() bool {
		b, _ := os.ReadFile(env.LogPathOf(ns, "previous"))
		return string(b) == "ran\nran\n"
	}, func() string {
		b, err := os.ReadFile(env.LogPathOf(ns, "previous"))
		return fmt.Sprintf("log holds %q (%v)", b, err)
	})
	if _, err := os.Stat(filepath.Join(logDir, ns, "previous.log")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("previous: a log in LogDir (%v), want none", err)
	}
}

// testLog sends the runtime's logs to the test's log.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
