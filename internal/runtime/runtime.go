package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/netns"
)

// Stats sources.
const (
	StatsSourceCgroup     = "cgroup"      // read the cgroup filesystem (default)
	StatsSourceMetricsAPI = "metrics-api" // containerd's task Metrics API (for VM-isolated runtimes)
)

// Defaults applied by New to zero Config fields.
const (
	DefaultCgroupRoot    = "/sys/fs/cgroup"
	DefaultCallTimeout   = 5 * time.Second
	DefaultEventBuffer   = 1024
	DefaultProbeInterval = 10 * time.Second
	defaultMaxBackoff    = 5 * time.Second
	defaultMinBackoff    = 100 * time.Millisecond
	defaultExecOutputCap = 64 << 10
)

// Config configures a Runtime. The zero value of every field but Address
// has a default.
type Config struct {
	// Address is containerd's socket path (required).
	Address string
	// Namespaces to watch; empty means all of them, including namespaces
	// created later.
	Namespaces []string
	// CgroupRoot is where the cgroup filesystem is mounted (default
	// /sys/fs/cgroup). The layout below it (v1 hierarchies or the v2
	// unified root) is detected on the first Stats call.
	CgroupRoot string
	// StatsSource is StatsSourceCgroup (default) or StatsSourceMetricsAPI.
	StatsSource string
	// CallTimeout bounds each containerd call (default 5s). A call that
	// times out is counted, and when it is one of Run's own calls the
	// runtime is reported unavailable (hanging) and the session is rebuilt.
	CallTimeout time.Duration
	// ProbeInterval is how often Run asks containerd for its version to
	// measure latency and detect a hang while the event stream is quiet
	// (default 10s).
	ProbeInterval time.Duration
	// LogDir is where Restart sends a new task's stdout and stderr
	// (LogDir/<namespace>/<id>.log) when the old task's IO cannot be
	// reused; empty discards the output in that case.
	LogDir string
	// LogMaxBytes caps each log file Restart makes under LogDir (default
	// 10 MiB): a file over it is rotated to <id>.log.1 (one older
	// generation is kept), so a container takes at most about twice the
	// cap plus what it writes in one LogRotateInterval (sizes are checked
	// that often). Files a task's creator chose are never rotated. Files of a
	// container are removed when it is deleted.
	LogMaxBytes int64
	// LogRotateInterval is how often the sizes are checked (default 10s).
	LogRotateInterval time.Duration
	// EventBuffer is the capacity of the Events channel (default 1024).
	EventBuffer int
	// Logger receives the runtime's logs; nil means slog.Default().
	Logger *slog.Logger
}

var nsName = regexp.MustCompile(`^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`)

func (c *Config) validate() error {
	if c.Address == "" {
		return fmt.Errorf("runtime config: Address (containerd socket) is required: %w", errdefs.ErrInvalid)
	}
	for _, ns := range c.Namespaces {
		if len(ns) > 76 || !nsName.MatchString(ns) {
			return fmt.Errorf("runtime config: namespace %q is not a valid containerd namespace: %w", ns, errdefs.ErrInvalid)
		}
	}
	switch c.StatsSource {
	case "":
		c.StatsSource = StatsSourceCgroup
	case StatsSourceCgroup, StatsSourceMetricsAPI:
	default:
		return fmt.Errorf("runtime config: StatsSource %q: want %q or %q: %w", c.StatsSource, StatsSourceCgroup, StatsSourceMetricsAPI, errdefs.ErrInvalid)
	}
	if c.CgroupRoot == "" {
		c.CgroupRoot = DefaultCgroupRoot
	}
	if c.CallTimeout < 0 || c.ProbeInterval < 0 || c.EventBuffer < 0 || c.LogMaxBytes < 0 || c.LogRotateInterval < 0 {
		return fmt.Errorf("runtime config: CallTimeout, ProbeInterval, EventBuffer, LogMaxBytes and LogRotateInterval must not be negative: %w", errdefs.ErrInvalid)
	}
	if c.LogMaxBytes == 0 {
		c.LogMaxBytes = DefaultLogMaxBytes
	}
	if c.LogRotateInterval == 0 {
		c.LogRotateInterval = DefaultLogRotateInterval
	}
	if c.CallTimeout == 0 {
		c.CallTimeout = DefaultCallTimeout
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = DefaultProbeInterval
	}
	if c.EventBuffer == 0 {
		c.EventBuffer = DefaultEventBuffer
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Runtime is the agent's view of one containerd. Create it with New, then
// call Run once; every other method is safe for concurrent use, before,
// during and after Run.
type Runtime struct {
	cfg     Config
	log     *slog.Logger
	events  chan Event
	metrics *selfMetrics

	started atomic.Bool
	client  atomic.Pointer[apiClient] // nil while disconnected

	available atomic.Bool
	// logMu orders a log's rotation and its removal with its container.
	logMu sync.Mutex
	// hung: the last session ended because a call got no answer in time
	// (cleared once containerd answers again); reconnected counts the
	// sessions that came up after an earlier one had (containerd restarted,
	// or its socket or a hang was lost and found again).
	hung        atomic.Bool
	everUp      atomic.Bool
	reconnected atomic.Uint64
	latency     atomic.Int64 // ns of the last probe
	version     atomic.Pointer[string]

	mu     sync.RWMutex
	inv    map[container.Key]*entry // written only by Run's goroutine
	synced bool                     // the first full sync is done (Run's goroutine only)

	images imageCache

	leftovers leftoverMarks // tasks Restart clears, for Event.Leftover

	hostNetNS uint64 // inode of the agent's own network namespace

	stats statsState
	// layout is the cgroup layout once detected (cgroupLayout).
	layout atomic.Pointer[cgroupLayout]
}

// New validates cfg and returns a Runtime; it does not connect.
func New(cfg Config) (*Runtime, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	r := &Runtime{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "runtime"),
		events:  make(chan Event, cfg.EventBuffer),
		metrics: newSelfMetrics(),
		inv:     make(map[container.Key]*entry),
	}
	r.images.entries = make(map[string]imageMeta)
	if id, err := netns.IDOf(netns.Self); err == nil {
		r.hostNetNS = id.Ino
	}
	r.stats.readers = make(map[container.Key]*statsReader)
	return r, nil
}

// Events returns the lifecycle event channel. It is bounded (Config.
// EventBuffer): when the consumer lags and the channel is full, Run blocks
// (it stops reading containerd's event stream, which buffers in containerd)
// rather than drop a lifecycle event. The channel is closed when Run
// returns.
func (r *Runtime) Events() <-chan Event { return r.events }

// Available reports whether containerd answered the last probe and the
// inventory is in sync with it.
func (r *Runtime) Available() bool { return r.available.Load() }

// Hung reports whether containerd is unavailable because its calls get no
// answer within the call timeout (a hanging runtime), rather than because
// its socket is gone.
func (r *Runtime) Hung() bool { return r.hung.Load() }

// Reconnects counts the connections to containerd made again after one
// had been up: containerd restarted, or came back after a hang or a lost
// socket.
func (r *Runtime) Reconnects() uint64 { return r.reconnected.Load() }

// Version is containerd's version as last reported, "" before the first
// connection.
func (r *Runtime) Version() string {
	if v := r.version.Load(); v != nil {
		return *v
	}
	return ""
}

// Latency is the duration of the last successful probe call (Version),
// containerd's API round trip as the agent sees it; 0 before the first.
func (r *Runtime) Latency() time.Duration { return time.Duration(r.latency.Load()) }

// Containers returns a snapshot of the inventory (deep copies, in no
// particular order).
func (r *Runtime) Containers() []Container {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]Container, 0, len(r.inv))
	for _, e := range r.inv {
		out = append(out, e.c.clone())
	}
	return out
}

// Container returns a copy of the container k, and whether it is known.
func (r *Runtime) Container(k container.Key) (Container, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.inv[k]
	if !ok {
		return Container{}, false
	}
	return e.c.clone(), true
}

// NetNSPath returns "/proc/<pid>/ns/net" of k's running (or paused) task,
// "" otherwise.
func (r *Runtime) NetNSPath(k container.Key) string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.inv[k]
	if !ok || e.c.Pid == 0 || (e.c.State != StateRunning && e.c.State != StatePaused) {
		return ""
	}
	return netns.OfPid(e.c.Pid)
}

// Run connects to containerd, subscribes to its events first, then lists
// and reconciles the inventory, and follows the event stream. When the
// socket is lost, containerd restarts, or a call times out, it emits
// EventUnavailable, reconnects with backoff (100ms doubling to 5s), resyncs
// and emits the differences as events (an exit that happened meanwhile is
// reported as EventExited with its status), then EventAvailable. It returns
// nil when ctx ends, after closing Events. Run may be called once.
func (r *Runtime) Run(ctx context.Context) error {
	if !r.started.CompareAndSwap(false, true) {
		return fmt.Errorf("runtime: Run called twice: %w", errdefs.ErrConflict)
	}
	defer close(r.events)
	defer r.stats.closeAll(&r.metrics.openFiles)
	lctx, stopLogs := context.WithCancel(ctx)
	logsDone := make(chan struct{})
	go func() {
		defer close(logsDone)
		r.runLogRotation(lctx)
	}()
	defer func() {
		stopLogs()
		<-logsDone
	}()
	backoff := defaultMinBackoff
	reported := false // EventUnavailable sent since the runtime was last available
	for {
		began := time.Now()
		err := r.session(ctx)
		r.client.Store(nil)
		if ctx.Err() != nil {
			r.available.Store(false)
			return nil
		}
		r.hung.Store(errors.Is(err, context.DeadlineExceeded))
		if r.available.Swap(false) || !reported {
			r.log.Warn("containerd unavailable", "address", r.cfg.Address, "err", err)
			r.emit(ctx, Event{Type: EventUnavailable, Time: time.Now()})
			reported = true
		}
		r.metrics.reconnects.Add(1)
		if time.Since(began) > 2*defaultMaxBackoff {
			backoff = defaultMinBackoff
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, defaultMaxBackoff)
	}
}

// emit sends ev on the events channel, blocking while it is full, until ctx
// ends.
func (r *Runtime) emit(ctx context.Context, ev Event) {
	r.metrics.countEvent(ev.Type)
	if ev.Type == EventRemoved {
		r.removeLogs(ev.Key)
	}
	select {
	case r.events <- ev:
	case <-ctx.Done():
	}
}

// call runs fn with the per-call timeout, records its latency under name,
// counts a timeout (the parent context still alive but the call's deadline
// passed) and translates the error into the errdefs vocabulary.
func (r *Runtime) call(ctx context.Context, name string, fn func(ctx context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, r.cfg.CallTimeout)
	defer cancel()
	start := time.Now()
	err := fn(cctx)
	r.metrics.observeCall(name, time.Since(start))
	if err != nil && ctx.Err() == nil && errors.Is(cctx.Err(), context.DeadlineExceeded) {
		r.metrics.countTimeout(name)
		return fmt.Errorf("containerd %s: no answer within %s (runtime hanging): %w: %w", name, r.cfg.CallTimeout, errdefs.ErrUnavailable, context.DeadlineExceeded)
	}
	if err != nil && ctx.Err() != nil {
		// The caller's context ended: whatever containerd made of it (its
		// shim's deadline can come back as code Unknown), that is why.
		return fmt.Errorf("containerd %s: %w: %w", name, context.Cause(ctx), translateErr(err))
	}
	if err != nil {
		return fmt.Errorf("containerd %s: %w", name, translateErr(err))
	}
	return nil
}
