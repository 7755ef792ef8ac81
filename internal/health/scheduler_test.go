package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/metrics/expotest"
)

// flipServer is a real HTTP server on loopback whose answer can be flipped
// between 200 and 503, counting the requests it gets.
type flipServer struct {
	srv     *httptest.Server
	sick    atomic.Bool
	hits    atomic.Int64
	address netip.AddrPort
}

func newFlipServer(t *testing.T) *flipServer {
	f := &flipServer{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.hits.Add(1)
		if f.sick.Load() {
			http.Error(w, "sick", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("fine"))
	}))
	t.Cleanup(f.srv.Close)
	f.address = netip.MustParseAddrPort(strings.TrimPrefix(f.srv.URL, "http://"))
	return f
}

func httpConfig(addr netip.AddrPort, interval time.Duration) Config {
	return Config{Kind: KindHTTP, Source: SourceLabel, Addr: addr, Path: "/healthz",
		Interval: interval, Timeout: time.Second, Retries: 2}
}

func startScheduler(t *testing.T, cfg SchedulerConfig) *Scheduler {
	t.Helper()
	s, err := NewScheduler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return s
}

// collectChanges reads n changes to status to, failing after timeout. Other
// changes fail the test.
func collectChanges(t *testing.T, s *Scheduler, n int, to Status, timeout time.Duration) map[container.Key]Change {
	t.Helper()
	got := map[container.Key]Change{}
	deadline := time.After(timeout)
	for len(got) < n {
		select {
		case c := <-s.Changes():
			if c.To != to {
				t.Fatalf("unexpected change %v: %v -> %v (%+v)", c.Key, c.From, c.To, c.Health.Last)
			}
			if _, dup := got[c.Key]; dup {
				t.Fatalf("two changes to %v for %v", to, c.Key)
			}
			got[c.Key] = c
		case <-deadline:
			t.Fatalf("%d of %d changes to %v after %s", len(got), n, to, timeout)
		}
	}
	return got
}

func TestScheduler(t *testing.T) {
	// A second between probes: a probe's timeout is cut to its interval,
	// and a loaded CI machine can take a few hundred milliseconds to answer
	// one on loopback.
	const n, interval = 50, time.Second
	s := startScheduler(t, SchedulerConfig{Workers: 4})
	reg := expotest.Gatherer{s.Collector()}
	time.Sleep(50 * time.Millisecond)
	if w := s.started.Load(); w != 0 {
		t.Errorf("%d workers started with nothing to probe, want 0", w)
	}

	servers := make([]*flipServer, n)
	keys := make([]container.Key, n)
	for i := range n {
		servers[i] = newFlipServer(t)
		keys[i] = container.Key{Namespace: "test", ID: fmt.Sprintf("c%02d", i)}
		if err := s.Add(keys[i], httpConfig(servers[i].address, interval), Target{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Add(keys[0], httpConfig(servers[0].address, interval), Target{}); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("second Add: %v, want ErrConflict", err)
	}

	// Every container turns healthy.
	for _, c := range collectChanges(t, s, n, StatusHealthy, time.Minute) {
		if c.From != StatusStarting || c.Health.Status != StatusHealthy || len(c.Health.Last) == 0 || !c.Health.Last[len(c.Health.Last)-1].OK {
			t.Errorf("change %+v", c)
		}
	}

	// Ten turn unhealthy after Retries failures, and report why.
	for i := range 10 {
		servers[i].sick.Store(true)
	}
	changes := collectChanges(t, s, 10, StatusUnhealthy, time.Minute)
	for i := range 10 {
		c, ok := changes[keys[i]]
		if !ok {
			t.Fatalf("no unhealthy change for %v", keys[i])
		}
		last := c.Health.Last[len(c.Health.Last)-1]
		if c.From != StatusHealthy || c.Health.FailingStreak != 2 || last.Code != 503 || !strings.Contains(last.Output, "sick") {
			t.Errorf("unhealthy change %+v", c)
		}
	}
	// One success brings one back.
	servers[0].sick.Store(false)
	if c := collectChanges(t, s, 1, StatusHealthy, time.Minute)[keys[0]]; c.From != StatusUnhealthy {
		t.Errorf("recovery %+v", c)
	}

	// Removed containers are no longer probed.
	for i := 40; i < n; i++ {
		s.Remove(keys[i])
		if _, ok := s.Health(keys[i]); ok {
			t.Errorf("Health(%v) after Remove", keys[i])
		}
	}
	// A probe in flight at Remove may still land, within its timeout (the
	// interval).
	time.Sleep(2 * interval)
	var hits [n]int64
	for i := 40; i < n; i++ {
		hits[i] = servers[i].hits.Load()
	}
	time.Sleep(3 * interval)
	for i := 40; i < n; i++ {
		if got := servers[i].hits.Load(); got != hits[i] {
			t.Errorf("%v got %d probes after Remove", keys[i], got-hits[i])
		}
	}
	if servers[39].hits.Load() == 0 {
		t.Error("a kept container was never probed")
	}

	// The metrics count what happened.
	if got := s.metrics.probes.With("http", "success").Value(); got < n {
		t.Errorf("successful http probes %v, want at least %d", got, n)
	}
	if got := s.metrics.failures.With("http", "unhealthy").Value(); got < 20 {
		t.Errorf("unhealthy http failures %v, want at least 20", got)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP vigil_agent_health_targets Containers the agent is health-checking.
# TYPE vigil_agent_health_targets gauge
vigil_agent_health_targets 40
`), "vigil_agent_health_targets"); err != nil {
		t.Error(err)
	}
	if v, ok := gathered(t, reg, "vigil_agent_health_workers"); !ok || v < 1 || v > 4 {
		t.Errorf("vigil_agent_health_workers = %v (%v), want 1 to 4", v, ok)
	}
	if n, err := testutil.GatherAndCount(reg, "vigil_agent_health_probe_duration_seconds"); err != nil || n != 1 {
		t.Errorf("duration histograms: %d, %v; want 1 (kind http)", n, err)
	}
}

// TestSchedulerBusyWorkers checks that probes of hung servers hold their
// worker only until their timeout, that the other containers' probes are
// delayed (and counted) but still run, and that the hung containers turn
// unhealthy.
func TestSchedulerBusyWorkers(t *testing.T) {
	s := startScheduler(t, SchedulerConfig{Workers: 2})
	hung := make(chan struct{})
	t.Cleanup(func() { close(hung) })
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hung:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	slowAddr := netip.MustParseAddrPort(strings.TrimPrefix(slow.URL, "http://"))
	for i := range 2 {
		// A timeout is cut to the interval (prober.timeout): both 300ms.
		cfg := httpConfig(slowAddr, 300*time.Millisecond)
		cfg.Timeout, cfg.Retries = 300*time.Millisecond, 1
		if err := s.Add(container.Key{Namespace: "test", ID: fmt.Sprint("hung", i)}, cfg, Target{}); err != nil {
			t.Fatal(err)
		}
	}
	fine := newFlipServer(t)
	if err := s.Add(container.Key{Namespace: "test", ID: "fine"}, httpConfig(fine.address, 100*time.Millisecond), Target{}); err != nil {
		t.Fatal(err)
	}
	got := map[string]Status{}
	deadline := time.After(15 * time.Second)
	for len(got) < 3 {
		select {
		case c := <-s.Changes():
			got[c.Key.ID] = c.To
			if c.To == StatusUnhealthy && !strings.Contains(c.Health.Last[len(c.Health.Last)-1].Output, "timed out") {
				t.Errorf("hung probe output %q", c.Health.Last[len(c.Health.Last)-1].Output)
			}
		case <-deadline:
			t.Fatalf("changes so far: %v", got)
		}
	}
	if got["hung0"] != StatusUnhealthy || got["hung1"] != StatusUnhealthy || got["fine"] != StatusHealthy {
		t.Errorf("statuses %v", got)
	}
	if d := s.metrics.delayed.Value(); d == 0 {
		t.Error("no probe counted as delayed with every worker hung")
	}
	if w := s.started.Load(); int(w) != s.workers {
		t.Errorf("%d workers started with every one hung, want all %d", w, s.workers)
	}
	if got := s.metrics.failures.With("http", "timeout").Value(); got < 2 {
		t.Errorf("timeouts counted: %v", got)
	}
}

func TestSchedulerUpdate(t *testing.T) {
	s := startScheduler(t, SchedulerConfig{})
	srv := newFlipServer(t)
	key := container.Key{Namespace: "test", ID: "u"}
	if err := s.Update(key, httpConfig(srv.address, 100*time.Millisecond), Target{}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Update of an unknown key: %v, want ErrNotFound", err)
	}
	if err := s.Add(key, Config{Kind: KindHTTP}, Target{}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Add of an invalid config: %v, want ErrInvalid", err)
	}
	started := time.Now()
	if err := s.Add(key, httpConfig(srv.address, 100*time.Millisecond), Target{StartedAt: started}); err != nil {
		t.Fatal(err)
	}
	collectChanges(t, s, 1, StatusHealthy, 5*time.Second)

	// Same task, new config: the state stays.
	cfg := httpConfig(srv.address, 200*time.Millisecond)
	if err := s.Update(key, cfg, Target{StartedAt: started}); err != nil {
		t.Fatal(err)
	}
	if h, _ := s.Health(key); h.Status != StatusHealthy {
		t.Errorf("after a config update: %v", h.Status)
	}
	// A new task: starting over, then healthy again.
	if err := s.Update(key, cfg, Target{StartedAt: started.Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	if h, _ := s.Health(key); h.Status != StatusStarting || len(h.Last) != 0 {
		t.Errorf("after a new task: %+v", h)
	}
	if c := collectChanges(t, s, 1, StatusHealthy, 5*time.Second)[key]; c.From != StatusStarting {
		t.Errorf("change %+v", c)
	}
}

// TestSchedulerUpdateCounts checks what Update does to the probe counts: a
// new task restarts them at zero (the agent's baseline restarts too, so
// keeping them would count failures twice); an Update that changes nothing
// leaves the counts, the generation and the due time alone.
func TestSchedulerUpdateCounts(t *testing.T) {
	s := startScheduler(t, SchedulerConfig{ChangeBuffer: 1024})
	srv := newFlipServer(t)
	srv.sick.Store(true)
	key := container.Key{Namespace: "test", ID: "counts"}
	started := time.Now()
	cfg := httpConfig(srv.address, 20*time.Millisecond)
	if err := s.Add(key, cfg, Target{StartedAt: started}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if h, _ := s.Health(key); h.Failures >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no two failed probes within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// The same config (a fresh copy of its Command too) and target: nothing changes.
	s.mu.Lock()
	e := s.entries[key]
	gen, at := e.gen, e.at
	s.mu.Unlock()
	same := cfg
	same.Command = []string{}
	if err := s.Update(key, same, Target{StartedAt: started}); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	if e.gen != gen || !e.at.Equal(at) {
		t.Errorf("an Update without a change moved gen %d -> %d, due %v -> %v", gen, e.gen, at, e.at)
	}
	s.mu.Unlock()
	if h, _ := s.Health(key); h.Failures < 2 {
		t.Errorf("an Update without a change reset the counts: %d probes, %d failures", h.Probes, h.Failures)
	}

	// A new task, with an interval long enough that no probe runs before
	// the counts are read: they start over.
	idle := httpConfig(srv.address, time.Hour)
	if err := s.Update(key, idle, Target{StartedAt: started.Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	if h, _ := s.Health(key); h.Probes != 0 || h.Failures != 0 || h.Status != StatusStarting {
		t.Errorf("after a new task: %d probes, %d failures, %v; want 0, 0, starting", h.Probes, h.Failures, h.Status)
	}
}

// TestSchedulerStartPeriodFailures: failures within the start period, while
// starting, are not counted (a server still coming up is not a failing
// workload, as Docker has it); the same failures after it are.
func TestSchedulerStartPeriodFailures(t *testing.T) {
	s := startScheduler(t, SchedulerConfig{ChangeBuffer: 1024})
	srv := newFlipServer(t)
	srv.sick.Store(true)
	inPeriod := container.Key{Namespace: "test", ID: "starting"}
	after := container.Key{Namespace: "test", ID: "started"}
	cfg := httpConfig(srv.address, 20*time.Millisecond)
	cfg.StartPeriod = time.Hour
	if err := s.Add(inPeriod, cfg, Target{StartedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(after, cfg, Target{StartedAt: time.Now().Add(-2 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		h1, _ := s.Health(inPeriod)
		h2, _ := s.Health(after)
		if h1.Probes >= 3 && h2.Failures >= 3 {
			if h1.Failures != 0 || h1.Status != StatusStarting {
				t.Errorf("within the start period: %d failures of %d probes, %v; want 0 and starting", h1.Failures, h1.Probes, h1.Status)
			}
			if h2.Failures != h2.Probes || h2.Status != StatusUnhealthy {
				t.Errorf("after the start period: %d failures of %d probes, %v; want all and unhealthy", h2.Failures, h2.Probes, h2.Status)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("too few probes within 5s: %+v, %+v", h1, h2)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSchedulerPausedAnswer: a failure is discarded only when Paused says
// the container is paused; an error from Paused (containerd unreachable, a
// fault the real runtime cannot produce on demand) counts the failure.
// Only failures that may come from a frozen process ask (a probe that could
// not be carried out, or timed out): not passing probes, nor a check that
// answered no (a live process answered).
func TestSchedulerPausedAnswer(t *testing.T) {
	srv := newFlipServer(t)
	// Nothing listens there: the probes fail with an error.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := netip.MustParseAddrPort(l.Addr().String())
	l.Close()
	frozen := container.Key{Namespace: "test", ID: "frozen"}
	unknown := container.Key{Namespace: "test", ID: "unknown"}
	answered := container.Key{Namespace: "test", ID: "answered"}
	fine := container.Key{Namespace: "test", ID: "fine"}
	var mu sync.Mutex
	asked := map[container.Key]int{}
	s := startScheduler(t, SchedulerConfig{ChangeBuffer: 1024, Paused: func(_ context.Context, k container.Key) (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		asked[k]++
		if k == unknown {
			return false, errors.New("containerd unreachable")
		}
		return k == frozen || k == answered, nil
	}})
	cfg := httpConfig(srv.address, 20*time.Millisecond)
	old := Target{StartedAt: time.Now().Add(-time.Hour)}
	if err := s.Add(fine, cfg, old); err != nil {
		t.Fatal(err)
	}
	healthy := collectChanges(t, s, 1, StatusHealthy, 5*time.Second)
	if _, ok := healthy[fine]; !ok {
		t.Fatalf("changes %v", healthy)
	}
	s.Remove(fine)
	srv.sick.Store(true)
	if err := s.Add(answered, cfg, old); err != nil {
		t.Fatal(err)
	}
	deadCfg := httpConfig(dead, 20*time.Millisecond)
	for _, k := range []container.Key{frozen, unknown} {
		if err := s.Add(k, deadCfg, old); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		h1, _ := s.Health(frozen)
		h2, _ := s.Health(unknown)
		h3, _ := s.Health(answered)
		mu.Lock()
		n := asked[frozen]
		mu.Unlock()
		if n >= 3 && h2.Failures >= 3 && h3.Failures >= 3 {
			if h1.Failures != 0 || h1.Probes != 0 || h1.Status != StatusStarting {
				t.Errorf("paused: %d failures of %d probes, %v; want none recorded", h1.Failures, h1.Probes, h1.Status)
			}
			if h2.Status != StatusUnhealthy || h2.Failures != h2.Probes {
				t.Errorf("Paused failing: %d failures of %d probes, %v; want all and unhealthy", h2.Failures, h2.Probes, h2.Status)
			}
			if h3.Status != StatusUnhealthy {
				t.Errorf("a check answering no: %v, want unhealthy", h3.Status)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("too few probes within 5s: %+v (asked %d), %+v, %+v", h1, n, h2, h3)
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if asked[fine] != 0 || asked[answered] != 0 {
		t.Errorf("Paused asked %d times about a passing container, %d about a check answering no; want 0", asked[fine], asked[answered])
	}
}

func TestNewSchedulerInvalid(t *testing.T) {
	if _, err := NewScheduler(SchedulerConfig{Workers: -1}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("negative workers: %v", err)
	}
	s, err := NewScheduler(SchedulerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Run(ctx); err == nil {
		t.Error("second Run succeeded")
	}
}

// gathered is the value of the one series of family name in g.
func gathered(t *testing.T, g expotest.Gatherer, name string) (float64, bool) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return expotest.Value(mfs, name)
}

// TestFirstProbeOneIntervalAfterStart: as in Docker, a new task's first
// probe comes one interval after it started (not at a random point of the
// first interval), and a task found already running is probed on its own
// phase: start + n*interval.
func TestFirstProbeOneIntervalAfterStart(t *testing.T) {
	const interval = 600 * time.Millisecond
	s := startScheduler(t, SchedulerConfig{Workers: 2})
	var mu sync.Mutex
	hits := map[string][]time.Time{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits[r.URL.Path] = append(hits[r.URL.Path], time.Now())
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	addr := netip.MustParseAddrPort(strings.TrimPrefix(srv.URL, "http://"))
	cfg := func(path string) Config {
		c := httpConfig(addr, interval)
		c.Path = path
		return c
	}
	fresh := time.Now()
	// A task that started 1.5 intervals ago: its next point is at 2.
	old := fresh.Add(-3 * interval / 2)
	if err := s.Add(container.Key{Namespace: "t", ID: "fresh"}, cfg("/fresh"), Target{StartedAt: fresh}); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(container.Key{Namespace: "t", ID: "old"}, cfg("/old"), Target{StartedAt: old}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		nf, no := len(hits["/fresh"]), len(hits["/old"])
		mu.Unlock()
		if nf >= 2 && no >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("probes after 20s: fresh %d, old %d", nf, no)
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	check := func(name string, start time.Time, n int, at time.Time) {
		want := start.Add(time.Duration(n) * interval)
		// Never early; late only by scheduling (a loaded machine).
		if at.Before(want.Add(-5*time.Millisecond)) || at.After(want.Add(interval/2)) {
			t.Errorf("%s: probe %d at %v after start, want %v", name, n, at.Sub(start), want.Sub(start))
		}
	}
	check("fresh", fresh, 1, hits["/fresh"][0])
	check("fresh", fresh, 2, hits["/fresh"][1])
	check("old", old, 2, hits["/old"][0])
	check("old", old, 3, hits["/old"][1])
}

func TestNextInPhase(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	iv := 10 * time.Second
	for _, tc := range []struct {
		now  time.Duration // after start
		want time.Duration
	}{
		{0, 10 * time.Second},
		{3 * time.Second, 10 * time.Second},
		{10 * time.Second, 10 * time.Second},
		{10*time.Second + 1, 20 * time.Second},
		{95 * time.Second, 100 * time.Second},
		{-5 * time.Second, 5 * time.Second}, // start in the future: from now
	} {
		if got := nextInPhase(start, iv, start.Add(tc.now)).Sub(start); got != tc.want {
			t.Errorf("now start%+v: next at start+%v, want start+%v", tc.now, got, tc.want)
		}
	}
}
