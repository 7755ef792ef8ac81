package health

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/runtime"
	"github.com/vigilhq/vigil/internal/testenv"
)

// ctrExec is the test's Execer: a task exec through the containerd client,
// as the agent's runtime does it (the runtime package needs its Run loop
// for that, which is not this package's to start).
type ctrExec struct {
	c   *client.Client
	seq atomic.Int64
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	cap int
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.cap - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (e *ctrExec) Exec(ctx context.Context, key container.Key, args []string, outputCap int) (runtime.ExecResult, error) {
	ctx = namespaces.WithNamespace(ctx, key.Namespace)
	bg := context.WithoutCancel(ctx)
	cont, err := e.c.LoadContainer(ctx, key.ID)
	if err != nil {
		return runtime.ExecResult{}, err
	}
	task, err := cont.Task(ctx, nil)
	if err != nil {
		return runtime.ExecResult{}, err
	}
	spec, err := cont.Spec(ctx)
	if err != nil {
		return runtime.ExecResult{}, err
	}
	p := *spec.Process
	p.Args, p.Terminal = args, false
	out := &syncBuffer{cap: outputCap}
	proc, err := task.Exec(ctx, fmt.Sprintf("probe-%d", e.seq.Add(1)), &p, cio.NewCreator(cio.WithStreams(nil, out, out)))
	if err != nil {
		return runtime.ExecResult{}, err
	}
	defer proc.Delete(bg, client.WithProcessKill)
	exitC, err := proc.Wait(bg)
	if err != nil {
		return runtime.ExecResult{}, err
	}
	if err := proc.Start(ctx); err != nil {
		return runtime.ExecResult{}, err
	}
	select {
	case st := <-exitC:
		code, _, err := st.Result()
		if err != nil {
			return runtime.ExecResult{}, err
		}
		proc.IO().Wait()
		out.mu.Lock()
		defer out.mu.Unlock()
		return runtime.ExecResult{ExitCode: int(code), Output: bytes.Clone(out.buf.Bytes())}, nil
	case <-ctx.Done():
		proc.Kill(bg, syscall.SIGKILL)
		return runtime.ExecResult{}, ctx.Err()
	}
}

// imageHealthcheck reads the Docker Healthcheck from an image's config in
// containerd, as the runtime does for runtime.Container.Healthcheck.
func imageHealthcheck(t *testing.T, c *client.Client, ns, ref string) *runtime.Healthcheck {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), ns)
	img, err := c.GetImage(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := img.Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := content.ReadBlob(ctx, img.ContentStore(), desc)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Config struct {
			Healthcheck *testenv.DockerHealthcheck
		} `json:"config"`
	}
	if err := json.Unmarshal(blob, &cfg); err != nil {
		t.Fatal(err)
	}
	hc := cfg.Config.Healthcheck
	if hc == nil {
		t.Fatalf("image %s has no Healthcheck in its config", ref)
	}
	return &runtime.Healthcheck{Test: hc.Test, Interval: hc.Interval, Timeout: hc.Timeout, StartPeriod: hc.StartPeriod, Retries: hc.Retries}
}

// TestContainerProbes runs the workload in a real container whose network
// namespace has nothing published, with an image that carries a Docker
// HEALTHCHECK and no labels: the image's check is probed through task exec,
// an HTTP check reaches the container through its task's /proc/PID/ns/net,
// and flipping the workload unhealthy turns the container unhealthy after
// Retries failures.
func TestContainerProbes(t *testing.T) {
	env := testenv.Containerd(t)
	const ns = "vigil-health"
	hc := testenv.DockerHealthcheck{
		Test:     []string{"CMD-SHELL", "wget -q -O- http://127.0.0.1:8080/healthz"},
		Interval: time.Second, Timeout: 3 * time.Second, Retries: 2,
	}
	ref := env.HealthcheckImage(t, ns, hc)
	netns := testenv.NewNetNS(t)
	_, task := env.RunContainer(t, testenv.ContainerSpec{
		Namespace: ns, Image: ref, NetNSPath: netns.Path,
		Args: []string{"serve", "--http", ":8080"},
	})
	c := env.Client(t)
	conts, err := c.Containers(namespaces.WithNamespace(context.Background(), ns))
	if err != nil || len(conts) == 0 {
		t.Fatalf("containers: %v, %v", conts, err)
	}
	var key container.Key
	for _, cont := range conts {
		if tk, err := cont.Task(namespaces.WithNamespace(context.Background(), ns), nil); err == nil && tk.Pid() == task.Pid() {
			key = container.Key{Namespace: ns, ID: cont.ID()}
		}
	}
	if key.ID == "" {
		t.Fatal("cannot find the container of the task")
	}

	// No labels: the image's HEALTHCHECK is the check.
	cfg, ok, err := ParseConfig(nil, imageHealthcheck(t, c, ns, ref), runtime.ManagerVigil)
	if err != nil || !ok {
		t.Fatalf("ParseConfig: %+v, %v, %v", cfg, ok, err)
	}
	want := []string{"/bin/sh", "-c", hc.Test[1]}
	if cfg.Kind != KindExec || cfg.Source != SourceImage || strings.Join(cfg.Command, "|") != strings.Join(want, "|") ||
		cfg.Interval != time.Second || cfg.Retries != 2 {
		t.Fatalf("config from the image: %+v", cfg)
	}
	target := Target{Key: key, NetNS: NetNSOfPid(task.Pid())}
	httpCfg := Config{Kind: KindHTTP, Source: SourceLabel, Addr: netip.MustParseAddrPort("127.0.0.1:8080"), Path: "/healthz",
		Interval: time.Second, Timeout: 2 * time.Second, Retries: 2}

	exec := &ctrExec{c: c}
	p := newProber(exec, 64, 0)
	// The workload may need a moment to listen.
	var r Result
	var failed string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if r, failed = p.run(context.Background(), &cfg, &target); r.OK {
			break
		}
	}
	if !r.OK || r.Code != 0 {
		t.Fatalf("exec probe of a healthy workload: %+v (%s)", r, failed)
	}
	if len(r.Output) > 64 {
		t.Errorf("output of %d bytes over the cap", len(r.Output))
	}
	if r, failed := p.run(context.Background(), &httpCfg, &target); !r.OK || r.Code != 200 {
		t.Fatalf("HTTP probe through /proc/%d/ns/net: %+v (%s)", task.Pid(), r, failed)
	}
	// A command that fails, and one that hangs past its timeout.
	bad := cfg
	bad.Command = []string{"/bin/sh", "-c", "echo nope; exit 3"}
	if r, failed := p.run(context.Background(), &bad, &target); r.OK || r.Code != 3 || failed != "unhealthy" || !strings.Contains(r.Output, "nope") {
		t.Errorf("failing command: %+v (%s)", r, failed)
	}
	hang := cfg
	hang.Command, hang.Timeout = []string{"sleep", "60"}, 500*time.Millisecond
	start := time.Now()
	if r, failed := p.run(context.Background(), &hang, &target); r.OK || failed != "timeout" {
		t.Errorf("hanging command: %+v (%s)", r, failed)
	}
	if d := time.Since(start); d > 500*time.Millisecond+execGrace+time.Second {
		t.Errorf("hanging command held the probe for %s", d)
	}

	// Through the scheduler: healthy, then flipped unhealthy from outside.
	s := startScheduler(t, SchedulerConfig{Exec: exec})
	if err := s.Add(key, cfg, target); err != nil {
		t.Fatal(err)
	}
	collectChanges(t, s, 1, StatusHealthy, 15*time.Second)
	toggle := Config{Kind: KindHTTP, Addr: httpCfg.Addr, Path: "/toggle", Timeout: 2 * time.Second}
	if r, _ := p.run(context.Background(), &toggle, &target); r.Code != http.StatusOK {
		t.Fatalf("toggle: %+v", r)
	}
	flipped := time.Now()
	ch := collectChanges(t, s, 1, StatusUnhealthy, 15*time.Second)[key]
	if ch.Health.FailingStreak != 2 || ch.Time.Sub(flipped) < time.Second {
		t.Errorf("unhealthy after %s with streak %d; want 2 failures a second apart", ch.Time.Sub(flipped), ch.Health.FailingStreak)
	}
	if last := ch.Health.Last[len(ch.Health.Last)-1]; last.OK || last.Code == 0 {
		t.Errorf("last result %+v", last)
	}
}

// TestFailuresWhilePausedDiscarded pauses a real container behind the
// scheduler's back (as an operator's `ctr task pause` does, with the agent
// yet to hear of it): its HTTP probes time out against the frozen server,
// and each failure is discarded once Paused says so: the container stays
// healthy with no failure counted. After the resume a real failure (the
// workload flipped unhealthy: a check answering no, which does not ask)
// still counts.
func TestFailuresWhilePausedDiscarded(t *testing.T) {
	env := testenv.Containerd(t)
	const ns = "vigil-health-paused"
	netns := testenv.NewNetNS(t)
	_, task := env.RunContainer(t, testenv.ContainerSpec{
		Namespace: ns, ID: "frozen", Image: env.WorkloadImage(t, ns), NetNSPath: netns.Path,
		Args: []string{"serve", "--http", ":8080"},
	})
	key := container.Key{Namespace: ns, ID: "frozen"}
	ctx := namespaces.WithNamespace(context.Background(), ns)
	var asked, discarded atomic.Int64
	paused := func(ctx context.Context, k container.Key) (bool, error) {
		asked.Add(1)
		if k != key {
			return false, fmt.Errorf("asked about %v", k)
		}
		st, err := task.Status(namespaces.WithNamespace(ctx, k.Namespace))
		if err != nil {
			return false, err
		}
		p := st.Status == client.Paused || st.Status == client.Pausing
		if p {
			discarded.Add(1)
		}
		return p, nil
	}
	s := startScheduler(t, SchedulerConfig{Paused: paused})
	cfg := Config{Kind: KindHTTP, Source: SourceLabel, Addr: netip.MustParseAddrPort("127.0.0.1:8080"), Path: "/healthz",
		Interval: 300 * time.Millisecond, Timeout: 200 * time.Millisecond, Retries: 1, StartPeriod: 15 * time.Second}
	if err := s.Add(key, cfg, Target{Key: key, NetNS: NetNSOfPid(task.Pid())}); err != nil {
		t.Fatal(err)
	}
	collectChanges(t, s, 1, StatusHealthy, 15*time.Second)
	if err := task.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	// One failure would make it unhealthy (Retries 1); wait for several.
	deadline := time.After(20 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for discarded.Load() < 4 {
		select {
		case ch := <-s.Changes():
			t.Fatalf("change while paused: %v -> %v (%+v)", ch.From, ch.To, ch.Health.Last)
		case <-deadline:
			t.Fatalf("%d failed probes found the container paused in 20s, want 4", discarded.Load())
		case <-tick.C:
		}
	}
	h, _ := s.Health(key)
	if h.Status != StatusHealthy || h.FailingStreak != 0 || h.Failures != 0 {
		t.Fatalf("while paused: %v, streak %d, %d failures; want healthy, none", h.Status, h.FailingStreak, h.Failures)
	}
	if err := task.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	// The frozen server answers again, then is flipped unhealthy: that
	// failure is the workload's, and counts.
	p := newProber(nil, 64, 0)
	toggle := Config{Kind: KindHTTP, Addr: cfg.Addr, Path: "/toggle", Timeout: 2 * time.Second}
	tgt := Target{Key: key, NetNS: NetNSOfPid(task.Pid())}
	if r, _ := p.run(context.Background(), &toggle, &tgt); r.Code != http.StatusOK {
		t.Fatalf("toggle: %+v", r)
	}
	collectChanges(t, s, 1, StatusUnhealthy, 15*time.Second)
	if h, _ := s.Health(key); h.Failures != 1 {
		t.Errorf("after the resume: %d failures counted, want 1 (Paused asked %d times, %d paused)", h.Failures, asked.Load(), discarded.Load())
	}
}
