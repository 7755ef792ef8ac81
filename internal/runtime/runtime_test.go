package runtime

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/metrics/expotest"
)

func TestConfigValidation(t *testing.T) {
	r, err := New(Config{Address: "/run/containerd/containerd.sock"})
	if err != nil {
		t.Fatal(err)
	}
	if r.cfg.CgroupRoot != DefaultCgroupRoot || r.cfg.StatsSource != StatsSourceCgroup || r.cfg.CallTimeout != DefaultCallTimeout ||
		cap(r.Events()) != DefaultEventBuffer || r.cfg.Logger == nil {
		t.Errorf("defaults not applied: %+v", r.cfg)
	}
	for _, bad := range []Config{
		{},
		{Address: "x", StatsSource: "procfs"},
		{Address: "x", Namespaces: []string{"k8s.io", "bad/ns"}},
		{Address: "x", Namespaces: []string{""}},
		{Address: "x", CallTimeout: -time.Second},
	} {
		if _, err := New(bad); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("New(%+v): err = %v, want ErrInvalid", bad, err)
		}
	}
}

func running(pid uint32) *entry {
	return &entry{c: Container{State: StateRunning, Pid: pid}, taskPresent: true}
}

func stopped(code uint32, at time.Time) *entry {
	e := classifyExit(code, at, false)
	return &entry{c: Container{State: StateStopped, LastExit: &e}, taskPresent: true}
}

func types(evs []Event) []EventType {
	var out []EventType
	for _, e := range evs {
		out = append(out, e.Type)
	}
	return out
}

func TestDiff(t *testing.T) {
	k := container.Key{Namespace: "default", ID: "web"}
	t1, t2 := time.Unix(100, 0), time.Unix(200, 0)
	noTask := &entry{c: Container{State: StateStopped, LastExit: stopped(1, t1).c.LastExit}}
	for _, tc := range []struct {
		name     string
		old, cur *entry
		resync   bool
		want     []EventType
	}{
		{"first sync: added only", nil, running(10), false, []EventType{EventAdded}},
		{"new while away, running", nil, running(10), true, []EventType{EventAdded, EventStarted}},
		{"new while away, exited: added only, with its exit", nil, stopped(3, t1), true, []EventType{EventAdded}},
		{"unchanged", running(10), running(10), true, nil},
		{"exited while away", running(10), stopped(3, t1), true, []EventType{EventExited}},
		{"same exit again", stopped(3, t1), stopped(3, t1), true, nil},
		{"ran and exited while away", stopped(3, t1), stopped(0, t2), true, []EventType{EventStarted, EventExited}},
		{"restarted while away", running(10), running(11), true, []EventType{EventStarted}},
		{"started while away", &entry{c: Container{State: StateCreated}}, running(10), true, []EventType{EventStarted}},
		{"paused", running(10), &entry{c: Container{State: StatePaused, Pid: 10}, taskPresent: true}, true, []EventType{EventPaused}},
		{"resumed", &entry{c: Container{State: StatePaused, Pid: 10}, taskPresent: true}, running(10), true, []EventType{EventResumed}},
		{"task deleted", stopped(3, t1), noTask, true, []EventType{EventTaskDeleted}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evs := diff(k, tc.old, tc.cur, tc.resync, t2)
			if got := types(evs); !slices.Equal(got, tc.want) {
				t.Fatalf("events = %v, want %v", got, tc.want)
			}
			for _, ev := range evs {
				if ev.Key != k || ev.Container == nil {
					t.Errorf("event %+v lacks key or container", ev)
				}
				if ev.Type == EventExited && (ev.Exit == nil || *ev.Exit != *tc.cur.c.LastExit) {
					t.Errorf("exit event carries %+v, want %+v", ev.Exit, tc.cur.c.LastExit)
				}
				if ev.Container == &tc.cur.c {
					t.Error("event aliases the inventory")
				}
			}
		})
	}
}

func TestCloneIsDeep(t *testing.T) {
	c := Container{Labels: map[string]string{"a": "b"}, Pod: &Pod{Name: "p"}, LastExit: &Exit{Code: 1},
		Healthcheck: &Healthcheck{Test: []string{"CMD", "true"}}}
	d := c.clone()
	d.Labels["a"] = "x"
	d.Pod.Name = "q"
	d.LastExit.Code = 2
	d.Healthcheck.Test[1] = "false"
	if c.Labels["a"] != "b" || c.Pod.Name != "p" || c.LastExit.Code != 1 || c.Healthcheck.Test[1] != "true" {
		t.Errorf("clone aliases the original: %+v", c)
	}
}

func TestCappedBuffer(t *testing.T) {
	b := &cappedBuffer{limit: 5}
	for _, s := range []string{"abc", "defgh", "ij"} {
		if n, err := b.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	if got := string(b.Bytes()); got != "abcde" {
		t.Errorf("kept %q, want %q", got, "abcde")
	}
}

func TestEventFilters(t *testing.T) {
	r, _ := New(Config{Address: "x"})
	if f := r.eventFilters(); len(f) != 1 || !strings.HasPrefix(f[0], "topic~=") {
		t.Errorf("filters = %q", f)
	}
	r, _ = New(Config{Address: "x", Namespaces: []string{"a", "b"}})
	if f := r.eventFilters(); len(f) != 2 || !strings.HasPrefix(f[1], `namespace=="b",topic~=`) {
		t.Errorf("filters = %q", f)
	}
	if !r.wantNamespace("a") || r.wantNamespace("c") {
		t.Error("wantNamespace ignores the configured namespaces")
	}
}

func TestCollector(t *testing.T) {
	r, err := New(Config{Address: "x"})
	if err != nil {
		t.Fatal(err)
	}
	r.metrics.countEvent(EventExited)
	r.metrics.countEvent(EventExited)
	r.metrics.countTimeout("version")
	r.metrics.reconnects.Add(3)
	r.metrics.openFiles.Add(12)
	reg := expotest.Gatherer{r.Collector()}
	want := `
# HELP vigil_agent_runtime_events_total Lifecycle events emitted by the runtime watcher, by type.
# TYPE vigil_agent_runtime_events_total counter
vigil_agent_runtime_events_total{type="exited"} 2
# HELP vigil_agent_runtime_api_call_timeouts_total containerd API calls that got no answer within the call timeout (a hanging runtime), by call.
# TYPE vigil_agent_runtime_api_call_timeouts_total counter
vigil_agent_runtime_api_call_timeouts_total{call="version"} 1
# HELP vigil_agent_runtime_reconnects_total Times the connection to containerd was lost or could not be made and was retried.
# TYPE vigil_agent_runtime_reconnects_total counter
vigil_agent_runtime_reconnects_total 3
# HELP vigil_agent_runtime_cgroup_files_open cgroup files held open by the stats collector.
# TYPE vigil_agent_runtime_cgroup_files_open gauge
vigil_agent_runtime_cgroup_files_open 12
# HELP vigil_agent_runtime_available 1 when containerd answers and the inventory is in sync with it, else 0.
# TYPE vigil_agent_runtime_available gauge
vigil_agent_runtime_available 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"vigil_agent_runtime_events_total", "vigil_agent_runtime_api_call_timeouts_total",
		"vigil_agent_runtime_reconnects_total", "vigil_agent_runtime_cgroup_files_open", "vigil_agent_runtime_available"); err != nil {
		t.Error(err)
	}
}

func TestDecodeMetricsRejectsUnknownType(t *testing.T) {
	var st Stats
	if err := decodeMetrics("io.containerd.cgroups.v3.Metrics", nil, &st); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("err = %v, want ErrInvalid", err)
	}
}

// TestCallCallerDeadline: when the caller's context has ended, the error
// says so (errors.Is its cause) whatever code containerd answered; a shim
// that hit the same deadline answers Unknown (a CI failure of TestControl's
// exec past its deadline, on a loaded machine). The fault cannot be made on
// demand through a real containerd.
func TestCallCallerDeadline(t *testing.T) {
	r, err := New(Config{Address: "x"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	<-ctx.Done()
	err = r.call(ctx, "exec_start", func(context.Context) error {
		return status.Error(codes.Unknown, "context deadline exceeded: unknown")
	})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "containerd exec_start") {
		t.Errorf("err = %v, want it to wrap context.DeadlineExceeded", err)
	}
	// With the caller's context alive, an error is containerd's.
	err = r.call(context.Background(), "task_get", func(context.Context) error {
		return status.Error(codes.NotFound, "no such task")
	})
	if !errors.Is(err, errdefs.ErrNotFound) || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want ErrNotFound only", err)
	}
}
