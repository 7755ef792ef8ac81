package health

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
)

// SchedulerConfig configures a Scheduler. Zero fields take the defaults.
type SchedulerConfig struct {
	// Exec runs exec probes; nil makes every exec probe fail with an error.
	Exec Execer
	// Paused, when set, is asked about a container whose probe timed out
	// or could not be carried out, before the failure is recorded (a check
	// that answered no ran in a live process): a failure while the container is
	// paused (its processes frozen, so nothing in it can answer) is
	// discarded. It counts toward neither unhealthy nor the container's
	// Failures, as no probe runs once the agent knows of a pause; this
	// covers the probes that ran before it knew (the pause event still on
	// its way). An error from Paused, or false, records the failure as
	// usual. The agent asks containerd (runtime.Runtime.Paused): one call
	// per such failure, none for the probes that pass.
	Paused func(ctx context.Context, key container.Key) (bool, error)
	// Workers is the number of probes that may run at once (default 16).
	// Workers start when a probe is due and every started one is busy.
	// A probe that comes due while all workers are busy waits for the next
	// free worker, in due order, and is counted in
	// vigil_agent_health_probes_delayed_total: a hung probe holds a worker
	// only until its timeout (an exec probe at most 2s more), so it delays
	// other probes at worst, never blocks them for good.
	Workers int
	// OutputCap is how many bytes of output a result keeps (default 4096).
	OutputCap int
	// MaxTimeout caps every probe's timeout, whatever a label or an image
	// asks (a probe holds a worker for its timeout); 0 means
	// DefaultMaxTimeout. A timeout is also cut to the probe's interval.
	MaxTimeout time.Duration
	// ChangeBuffer is the capacity of the Changes channel (default 256).
	ChangeBuffer int
	// Logger receives status transitions and failed probes at debug level
	// (the agent logs what it decides); nil means slog.Default().
	Logger *slog.Logger
}

// Change is a health status transition of one container.
type Change struct {
	// Key names the container.
	Key container.Key
	// From and To are the statuses before and after.
	From, To Status
	// Health is the state after the transition.
	Health Health
	// Time is when the probe that caused it finished.
	Time time.Time
}

// Scheduler runs the health checks of many containers: one goroutine keeps
// a timer heap of due probes and hands them to a bounded pool of workers;
// nothing runs per container between probes. As in Docker, a container's
// first probe comes one interval after its task started, and later probes
// keep that phase (StartedAt + n*Interval): an image HEALTHCHECK with
// Docker's defaults turns unhealthy after 90 s, as it does under Docker. A
// container found already running (an agent restart) is probed at the
// next point of its own phase, so containers started at different times
// do not probe together.
//
// Add, Update, Remove, Health and Changes are safe for concurrent use, before
// and while Run runs.
type Scheduler struct {
	log       *slog.Logger
	paused    func(ctx context.Context, key container.Key) (bool, error)
	workers   int
	prober    *prober
	metrics   *probeMetrics
	started   atomic.Int32 // workers started by Run
	changes   chan Change
	wake      chan struct{}
	work      chan *entry
	runCalled bool

	mu      sync.Mutex
	entries map[container.Key]*entry
	due     dueHeap
}

// entry is one target. Its fields are guarded by Scheduler.mu, except
// delayed, which only Run touches. An entry is in exactly one place: the
// heap (index >= 0), Run's ready queue, or a worker.
type entry struct {
	key     container.Key
	cfg     Config
	target  Target
	machine *Machine
	probes  uint64
	fails   uint64
	at      time.Time // when the next probe is due
	index   int       // position in the heap; -1 when not in it
	gen     uint64    // bumped by Update: a probe of an older config is discarded
	removed bool
	delayed bool
}

// NewScheduler returns a scheduler; Run starts it.
func NewScheduler(cfg SchedulerConfig) (*Scheduler, error) {
	if cfg.Workers < 0 || cfg.OutputCap < 0 || cfg.ChangeBuffer < 0 || cfg.MaxTimeout < 0 {
		return nil, fmt.Errorf("health scheduler: negative workers %d, output cap %d or change buffer %d: %w",
			cfg.Workers, cfg.OutputCap, cfg.ChangeBuffer, errdefs.ErrInvalid)
	}
	if cfg.Workers == 0 {
		cfg.Workers = 16
	}
	if cfg.OutputCap == 0 {
		cfg.OutputCap = DefaultOutputCap
	}
	if cfg.ChangeBuffer == 0 {
		cfg.ChangeBuffer = 256
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Scheduler{
		log:     cfg.Logger,
		paused:  cfg.Paused,
		workers: cfg.Workers,
		prober:  newProber(cfg.Exec, cfg.OutputCap, cfg.MaxTimeout),
		changes: make(chan Change, cfg.ChangeBuffer),
		wake:    make(chan struct{}, 1),
		work:    make(chan *entry),
		entries: map[container.Key]*entry{},
	}
	s.metrics = newMetrics(s.targets, func() int { return int(s.started.Load()) })
	return s, nil
}

// Changes returns the channel of status transitions. The agent must drain
// it: a worker that finds it full waits until there is room (or Run ends),
// and its container is not probed meanwhile, so no transition is ever lost
// and each container's transitions arrive in order; a slow reader delays
// probes (see Workers) rather than dropping them. A transition of a
// container may still arrive shortly after its Remove. The channel is never
// closed.
func (s *Scheduler) Changes() <-chan Change { return s.changes }

// Add starts probing the container key with cfg against tgt. The container
// starts in StatusStarting. It fails with errdefs.ErrConflict if key is
// already probed and errdefs.ErrInvalid for an invalid cfg.
func (s *Scheduler) Add(key container.Key, cfg Config, tgt Target) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	now := time.Now()
	if tgt.StartedAt.IsZero() {
		tgt.StartedAt = now
	}
	tgt.Key = key
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.entries[key]; ok {
		return fmt.Errorf("health check of %s: %w: already added", key, errdefs.ErrConflict)
	}
	e := &entry{key: key, cfg: cfg, target: tgt, machine: NewMachine(cfg, tgt.StartedAt), index: -1}
	e.at = nextInPhase(tgt.StartedAt, cfg.Interval, now)
	s.entries[key] = e
	heap.Push(&s.due, e)
	s.poke()
	return nil
}

// Update replaces the check and target of a probed container. A new
// tgt.StartedAt (a new task) starts the state over at StatusStarting,
// without a Change, and restarts the Probes and Failures counts at zero
// (they then count the new task's probes; the agent resets its baseline on
// a new task too); otherwise the state, history and counts stay. A probe
// running with the old configuration is discarded. An Update with the same
// cfg and tgt as before changes nothing (not even when the next probe is
// due). It fails with errdefs.ErrNotFound if key is not probed.
func (s *Scheduler) Update(key container.Key, cfg Config, tgt Target) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	now := time.Now()
	if tgt.StartedAt.IsZero() {
		tgt.StartedAt = now
	}
	tgt.Key = key
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[key]
	if !ok {
		return fmt.Errorf("health check of %s: %w", key, errdefs.ErrNotFound)
	}
	newTask := !tgt.StartedAt.Equal(e.target.StartedAt)
	if !newTask && tgt.NetNS == e.target.NetNS && sameConfig(cfg, e.cfg) {
		return nil
	}
	switch {
	case newTask:
		e.machine = NewMachine(cfg, tgt.StartedAt)
		e.probes, e.fails = 0, 0
	case cfg.Kind != e.cfg.Kind:
		e.machine = NewMachine(cfg, tgt.StartedAt)
	default:
		e.machine.cfg = cfg
		e.machine.h.Source = cfg.Source
	}
	e.cfg, e.target = cfg, tgt
	e.gen++
	if e.index >= 0 {
		e.at = nextInPhase(tgt.StartedAt, cfg.Interval, now)
		heap.Fix(&s.due, e.index)
		s.poke()
	}
	return nil
}

// sameConfig reports whether a and b describe the same check (a nil and an
// empty Command are the same).
func sameConfig(a, b Config) bool {
	if !slices.Equal(a.Command, b.Command) {
		return false
	}
	a.Command, b.Command = nil, nil
	return reflect.DeepEqual(a, b)
}

// Remove stops probing key; a probe in flight is discarded. Removing an
// unknown key does nothing.
func (s *Scheduler) Remove(key container.Key) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[key]
	if !ok {
		return
	}
	delete(s.entries, key)
	e.removed = true
	if e.index >= 0 {
		heap.Remove(&s.due, e.index)
	}
}

// Health returns the current health of key, and false if key is not probed.
func (s *Scheduler) Health(key container.Key) (Health, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[key]
	if !ok {
		return Health{}, false
	}
	return e.health(), true
}

func (e *entry) health() Health {
	h := e.machine.Health()
	h.Probes, h.Failures = e.probes, e.fails
	return h
}

func (s *Scheduler) targets() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries)
}

// poke wakes Run to look at the heap again. It never blocks.
func (s *Scheduler) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Run probes until ctx is done, then waits for its workers and returns nil.
// It may be called once.
func (s *Scheduler) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.runCalled {
		s.mu.Unlock()
		return errors.New("health scheduler: Run called twice")
	}
	s.runCalled = true
	s.mu.Unlock()

	// Workers start when a probe finds every started one busy, up to
	// s.workers: a node without health checks keeps none (their stacks are
	// memory on every node), a busy one grows to what it needs.
	var wg sync.WaitGroup
	defer wg.Wait()

	var ready []*entry // due, waiting for a worker, in due order
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		s.mu.Lock()
		now := time.Now()
		for len(s.due) > 0 && !s.due[0].at.After(now) {
			ready = append(ready, heap.Pop(&s.due).(*entry))
		}
		wait := time.Hour
		if len(s.due) > 0 {
			wait = s.due[0].at.Sub(now)
		}
		s.mu.Unlock()

	handout:
		for len(ready) > 0 {
			select {
			case s.work <- ready[0]:
				ready[0].delayed = false
				ready = ready[1:]
			default:
				if int(s.started.Load()) == s.workers {
					break handout
				}
				s.started.Add(1)
				wg.Go(func() { s.worker(ctx) })
				select { // the new worker (or one that just finished) takes it
				case s.work <- ready[0]:
					ready[0].delayed = false
					ready = ready[1:]
				case <-ctx.Done():
					return nil
				}
			}
		}
		for _, e := range ready {
			if !e.delayed {
				e.delayed = true
				s.metrics.delayed.Inc()
			}
		}

		var send chan *entry
		var head *entry
		if len(ready) > 0 {
			send, head = s.work, ready[0]
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case send <- head:
			head.delayed = false
			ready = ready[1:]
		case <-timer.C:
		case <-s.wake:
		}
	}
}

// worker runs the probes Run hands it until ctx is done.
func (s *Scheduler) worker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-s.work:
			if !s.probe(ctx, e) {
				return
			}
		}
	}
}

// probe runs one probe of e, records it, delivers a transition, and puts e
// back in the heap. It returns false when ctx ended while it waited to
// deliver.
func (s *Scheduler) probe(ctx context.Context, e *entry) bool {
	s.mu.Lock()
	if e.removed {
		s.mu.Unlock()
		return true
	}
	cfg, tgt, gen := e.cfg, e.target, e.gen
	s.mu.Unlock()

	r, failed := s.prober.run(ctx, &cfg, &tgt)
	if ctx.Err() != nil {
		return false // shutting down: the result says nothing about the container
	}
	end := r.Start.Add(r.Duration)
	s.metrics.observe(cfg.Kind, r, failed)
	discard := false
	s.mu.Lock()
	// A check that answered no (failed "unhealthy") ran in a process that
	// is not frozen: only timeouts and errors ask.
	ask := !r.OK && failed != "unhealthy" && s.paused != nil && !e.removed && e.gen == gen
	s.mu.Unlock()
	if ask {
		pctx, cancel := context.WithTimeout(ctx, pausedCheckTimeout)
		paused, err := s.paused(pctx, e.key)
		cancel()
		switch {
		case ctx.Err() != nil:
			return false
		case err != nil:
			s.log.Debug("cannot tell whether a container whose probe failed is paused; the failure counts",
				"namespace", e.key.Namespace, "id", e.key.ID, "err", err)
		case paused:
			discard = true
			s.log.Debug("health probe failed while the container is paused; discarded",
				"namespace", e.key.Namespace, "id", e.key.ID, "reason", failed, "output", r.Output)
		}
	}

	var change *Change
	s.mu.Lock()
	if !e.removed && e.gen == gen && !discard {
		e.probes++
		streak := e.machine.h.FailingStreak
		before := e.machine.Record(r)
		if e.machine.h.FailingStreak > streak {
			// A failure that counts: not one within the start period while
			// starting (a server still coming up), as Docker counts them.
			e.fails++
		}
		if after := e.machine.Status(); after != before {
			change = &Change{Key: e.key, From: before, To: after, Health: e.health(), Time: end}
		}
	}
	s.mu.Unlock()

	if change != nil {
		s.log.Debug("health status changed", "namespace", e.key.Namespace, "id", e.key.ID,
			"from", change.From.String(), "to", change.To.String(), "probe", cfg.String(), "output", r.Output)
		select {
		case s.changes <- *change:
		case <-ctx.Done():
			return false
		}
	} else if !r.OK && !discard {
		s.log.Debug("health probe failed", "namespace", e.key.Namespace, "id", e.key.ID, "reason", failed, "output", r.Output)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if e.removed {
		return true
	}
	if e.gen != gen {
		// Updated while probing: start over on the new configuration.
		e.at = nextInPhase(e.target.StartedAt, e.cfg.Interval, time.Now())
	} else {
		// Keep the phase; a probe that overran its interval pushes the next
		// one to an interval after it ended.
		e.at = e.at.Add(cfg.Interval)
		if e.at.Before(end) {
			e.at = end.Add(cfg.Interval)
		}
	}
	heap.Push(&s.due, e)
	s.poke()
	return true
}

// nextInPhase is the first probe time of a task started at start with
// interval iv that is not before now: start + n*iv with n >= 1, as Docker
// times its probes (the first one interval after the start). A start time
// in the future (clocks apart) counts from now.
func nextInPhase(start time.Time, iv time.Duration, now time.Time) time.Time {
	if start.After(now) {
		start = now
	}
	first := start.Add(iv)
	if !first.Before(now) {
		return first
	}
	n := (now.Sub(first) + iv - 1) / iv
	return first.Add(n * iv)
}

// pausedCheckTimeout bounds the question whether a container whose probe
// failed is paused.
const pausedCheckTimeout = 5 * time.Second

// dueHeap orders entries by due time.
type dueHeap []*entry

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h dueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *dueHeap) Push(x any) {
	e := x.(*entry)
	e.index = len(*h)
	*h = append(*h, e)
}
func (h *dueHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	e.index = -1
	*h = old[:len(old)-1]
	return e
}
