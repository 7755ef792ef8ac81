package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vigilhq/vigil/internal/agent/uplink"
	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/gossip"
	"github.com/vigilhq/vigil/internal/health"
	"github.com/vigilhq/vigil/internal/metrics"
	"github.com/vigilhq/vigil/internal/network"
	"github.com/vigilhq/vigil/internal/pki"
	"github.com/vigilhq/vigil/internal/restart"
	"github.com/vigilhq/vigil/internal/runtime"
	"github.com/vigilhq/vigil/internal/statedir"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// Agent is the node side of Vigil. Create it with New and call Run once.
//
// One goroutine (the loop in Run) owns every container's restart and health
// state and makes every decision, so decisions about one container never
// race. Slow work (task restarts and stops, probes, stats reads, the stream)
// runs elsewhere and reports back to the loop through channels. Readers (the
// uplink's snapshot, the local /metrics) take a read lock on the containers.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	store *statedir.Store
	rt    *runtime.Runtime
	up    *uplink.Uplink // nil when standalone
	probe *health.Scheduler
	// What the apply steps use (apply.go): rt, probe and up (nil when
	// standalone) behind the agent's own interfaces.
	tasks    taskControl
	prober   prober
	reporter reporter
	net      *network.Monitor // nil when network monitoring is off
	gm       *gossip.Member   // nil when gossip is off
	reg      *metrics.Registry
	self     *selfMetrics

	bootID string
	// kernelBoot is the kernel's boot id, "" when unknown; rebooted is set
	// when it differs from the one the state dir recorded, that is when the
	// node restarted since the agent last ran (tasks do not survive that).
	// Loop goroutine only, once Run has begun; bootRecorded: the state dir
	// has this boot's id.
	kernelBoot             string
	rebooted, bootRecorded bool
	// started is when Run began: a restart marked begun before it was the
	// previous run's.
	started time.Time

	mu         sync.RWMutex // guards containers and netSnapshot
	containers map[container.Key]*tracked
	lastNet    []*vigilv1.NetworkNamespace
	lastStats  map[container.Key]*vigilv1.ResourceSample
	// fsUsage is the last writable-layer usage per container
	// (fsUsageSampler).
	fsUsage fsUsage

	due chan container.Key // restart timers fire here
	// replies wait for the state dir to hold what they report
	// (replyWhenDurable).
	replyMu   sync.Mutex
	replies   []durableReply
	flushKick chan struct{}     // the state holds changes for the flusher
	samples   chan sampleResult // the sampler's results for the loop
	// heartbeat is when the loop last turned (unix nanoseconds): /healthz
	// fails when it is old.
	heartbeat atomic.Int64
	runCalled atomic.Bool
	actions   chan actionResult // restarts, stops and commands report here
	done      chan struct{}     // closed when the loop ends
	wg        sync.WaitGroup    // action goroutines
	// work is the context of the runtime and of actions: it outlives the
	// loop's by up to ShutdownGrace, so that actions in flight finish.
	work           context.Context
	actionsRunning atomic.Int32
	nowFunc        func() time.Time // clock, for tests

	// isolated holds why the agent is Isolated (its stream down and no
	// gossip peer answering), nil when it is not; written by gossipLoop,
	// read by onCommand, which refuses remote commands meanwhile.
	isolated atomic.Pointer[string]

	// Loop goroutine only: containerd's first inventory has been applied,
	// and releaseStartupMemory has run.
	inventoryLoaded, startupReleased bool
	// heldCommands arrived before the first inventory was applied; they
	// are decided on once it is (loop goroutine only).
	heldCommands []*vigilv1.Command

	// restartHook, when set (tests only), wraps the call that replaces a
	// task, after the restart's durable mark: it may stand for the agent
	// dying mid-restart (not calling restart), or delay what follows it.
	restartHook func(ctx context.Context, k container.Key, restart func(context.Context) error) error
	// commandHook, when set (tests only), wraps an accepted command's
	// action: it may stand for the agent dying while carrying it out.
	commandHook func(ctx context.Context, cmd *vigilv1.Command, run func(context.Context) error) error
	// crossRecheck is how long a failed probe blamed on this node's network
	// waits before its peers are asked again (defaultCrossRecheck; tests
	// shorten it before Run).
	crossRecheck time.Duration
}

// tracked is the agent's state of one container. The loop goroutine writes
// it under a.mu; readers hold a.mu.RLock.
type tracked struct {
	c        runtime.Container
	identity string

	policy  restart.Policy
	tracker *restart.Tracker

	healthCfg *health.Config // nil: not probed
	// labelErrors: what configure could not use of the labels, each
	// naming the label and why (Container.label_errors).
	labelErrors []string
	probeHealth *health.Health // the prober's view, as last taken in; nil: not probed
	netCause    string         // why the network makes it unhealthy (NetworkAffectsHealth); "" when it does not
	netCauseAt  time.Time      // when netCause was last judged
	// crossChecking: peers are being asked about a failed probe
	// (startCrossCheck); crossNodeAt: when they last blamed this node's
	// network for it (zero: they did not, or no longer: the probe passed,
	// the task stopped or restarted, a recheck did not blame the node). The
	// health sent upstream carries the blame while it is set
	// (decideHealthBlame).
	crossChecking bool
	crossNodeAt   time.Time
	// failuresCounted is how many of the prober's failures for the current
	// task are already in the lifetime counter.
	failuresCounted uint64
	// probesReported is the prober's probe count for the current task when
	// its results were last taken into health: a higher count at the next
	// sample means new results to report (coalesced, once per interval).
	probesReported uint64
	// probedSince is the start time of the task the prober was last given.
	probedSince time.Time

	timer *time.Timer // pending restart, nil when none

	// expectDelete is set while our own Restart deletes the old task, so its
	// task-delete event is not taken for an operator's stop.
	expectDelete bool
	// inFlight is set while a restart or stop of ours runs.
	inFlight bool
	// commandRestart is the id of the RESTART command carrying out an
	// operator's restart of the container ("" when none): the exit its
	// stop causes and the start it makes are the command's (decideExit,
	// decideStart). The start clears it (which may come after the
	// command's result), and so does the command's end when it failed. In
	// memory only: a command interrupted by the agent's death is not
	// carried out again.
	commandRestart string
	// dueWhileBusy records a restart that came due while inFlight; it runs
	// when the action in flight finishes, unless that action was the very
	// restart that came due.
	dueWhileBusy bool
	// restartFrom is the restart count when the restart in flight began: a
	// higher count when it finishes means its task started (and, with a
	// restart due again, exited) before its result came back.
	restartFrom uint64
	// resume is set when the agent found, at start-up, a restart of its own
	// that an earlier run began and did not finish: it is finished without
	// requiring the old task (which that run may have deleted already).
	resume bool
	// createRetries counts the tries of the pending restart that an earlier,
	// interrupted create blocked (createRetry).
	createRetries int
	// unavailableRetries counts the tries of the pending restart in a row
	// that containerd did not answer (unavailableRetry).
	unavailableRetries int
	// shimLostRetries counts the restarts in a row whose shim containerd
	// lost since the task last started (shimLostRetryMax).
	shimLostRetries int

	// conditions are its network namespace's conditions (domain values;
	// the protocol's are built in containerProto).
	conditions []network.Condition

	// lastExit is the last exit the agent saw or inferred, kept in the state
	// dir: reported when containerd no longer has the exited task (after an
	// agent restart it lists such a container as created, without an exit).
	lastExit *runtime.Exit
	// announced: its ADDED event was sent, by this run or an earlier one.
	announced bool
}

// New validates cfg and builds the agent; nothing runs until Run.
func New(cfg Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	store, err := statedir.Open(statedir.Config{Dir: cfg.StateDir, Logger: log.With("component", "statedir")})
	if err != nil {
		return nil, err
	}
	// What New opened is released when a later step fails.
	ok := false
	defer func() {
		if !ok {
			store.Close()
		}
	}()
	a := &Agent{
		cfg:        cfg,
		log:        log,
		store:      store,
		reg:        metrics.NewRegistry(),
		containers: map[container.Key]*tracked{},
		lastStats:  map[container.Key]*vigilv1.ResourceSample{},
		due:        make(chan container.Key, 256),
		flushKick:  make(chan struct{}, 1),
		samples:    make(chan sampleResult, 1),
		actions:    make(chan actionResult, 256),
		done:       make(chan struct{}),
		nowFunc:    time.Now,
		kernelBoot: kernelBootID(),
	}
	a.crossRecheck = defaultCrossRecheck
	a.bootID = a.kernelBoot
	if a.bootID == "" {
		// Not Linux: the aggregator then sees every agent start as a reboot.
		var r [16]byte
		_, _ = rand.Read(r[:])
		a.bootID = hex.EncodeToString(r[:])
	}
	a.rt, err = runtime.New(runtime.Config{
		Address:     cfg.ContainerdAddress,
		Namespaces:  cfg.Namespaces,
		CgroupRoot:  cfg.CgroupRoot,
		StatsSource: cfg.StatsSource,
		CallTimeout: cfg.RuntimeCallTimeout,
		LogDir:      cfg.StateDir + "/logs",
		LogMaxBytes: cfg.ContainerLogMaxBytes,
		Logger:      log, // the runtime names itself
	})
	if err != nil {
		return nil, err
	}
	a.probe, err = health.NewScheduler(health.SchedulerConfig{
		Workers:    cfg.HealthWorkers,
		MaxTimeout: cfg.MaxProbeTimeout,
		Exec:       a.rt,
		Paused:     a.rt.Paused,
		Logger:     log.With("component", "health"),
	})
	if err != nil {
		return nil, err
	}
	a.tasks, a.prober = a.rt, a.probe
	if cfg.Network {
		ncfg := network.DefaultConfig()
		ncfg.Logger = log // the monitor names itself
		a.net, err = network.New(ncfg)
		if err != nil {
			return nil, err
		}
	}
	if cfg.AggregatorAddress != "" {
		ucfg := uplink.Config{
			Address:      cfg.AggregatorAddress,
			NodeName:     cfg.NodeName,
			AgentVersion: cfg.Version,
			BootID:       a.bootID,
			Capabilities: a.capabilities(),
			OnHelloAck:   a.gossipSeedsFromHello, // gossip_seeds.go
			BufferSize:   cfg.BufferSize,
			// The aggregator's default limit: a snapshot of a few hundred
			// containers with probe output can pass the uplink's own 4 MiB.
			MaxMessageBytes: 16 << 20,
			Logger:          log, // the uplink names itself
		}
		if !cfg.Insecure {
			ucfg.TLS, err = pki.ClientConfig(cfg.TLS, cfg.TLSServerName)
			if err != nil {
				return nil, err
			}
		}
		a.up, err = uplink.New(ucfg, a.snapshot)
		if err != nil {
			return nil, err
		}
		a.reporter = a.up
	}
	if cfg.Gossip.enabled() {
		a.gm, err = newGossip(cfg)
		if err != nil {
			return nil, err
		}
	}
	a.self = newSelfMetrics(a)
	a.reg.Register(
		metrics.ProcessCollector(),
		a.rt.Collector(),
		a.probe.Collector(),
		a.self,
	)
	if a.net != nil {
		a.reg.Register(a.net.Collector())
	}
	if a.up != nil {
		a.reg.Register(a.up.Collector())
	}
	if a.gm != nil {
		a.reg.Register(a.gm)
	}
	ok = true
	return a, nil
}

func (a *Agent) capabilities() []string {
	caps := []string{"health", "restart"}
	if a.cfg.Network {
		caps = append(caps, "network")
	}
	if a.cfg.Gossip.enabled() {
		caps = append(caps, "gossip")
	}
	return caps
}

// Registry is the agent's metrics registry (its self-metrics).
func (a *Agent) Registry() *metrics.Registry { return a.reg }

// Run runs the agent until ctx ends. It returns nil on a clean shutdown, or
// the first error of a part that cannot go on. It may be called once: a
// second call fails (the state dir is released when the first returns).
func (a *Agent) Run(ctx context.Context) error {
	if !a.runCalled.CompareAndSwap(false, true) {
		return fmt.Errorf("agent: Run called twice: %w", errdefs.ErrConflict)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.log.Info("vigil agent starting", "node", a.cfg.NodeName, "version", a.cfg.Version,
		"containerd", a.cfg.ContainerdAddress, "aggregator", a.cfg.AggregatorAddress, "state_dir", a.cfg.StateDir)

	var (
		wg   sync.WaitGroup
		errc = make(chan error, 8)
	)
	// The runtime and the actions run until the actions in flight have
	// finished, after the rest has stopped (bounded by ShutdownGrace).
	work, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	a.work = work
	start := func(name string, fn func(context.Context) error) {
		runCtx := ctx
		if name == "runtime" {
			runCtx = work
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(runCtx); err != nil && !errors.Is(err, context.Canceled) {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	a.started = a.now()
	if prev := a.store.BootID(); a.kernelBoot != "" && prev != "" && prev != a.kernelBoot {
		a.rebooted = true
		a.log.Info("the node restarted since the agent last ran: containers that ran then have lost their tasks",
			"previous_boot_id", prev, "boot_id", a.kernelBoot)
	}
	a.recoverCommands()
	start("runtime", a.rt.Run)
	start("health", a.probe.Run)
	start("statedir", a.flusher)
	start("sampler", a.sampler)
	if a.cfg.FSUsageInterval > 0 {
		start("fs-usage", a.fsUsageSampler)
	}
	if a.net != nil {
		start("network", a.net.Run)
	}
	if a.up != nil {
		start("uplink", a.up.Run)
	}
	if a.gm != nil {
		// The member leaves the cluster gracefully when ctx ends (peers
		// see this node "left", not "dead"), within its LeaveTimeout.
		start("gossip", a.gm.Run)
		start("gossip-report", a.gossipLoop)
	}
	var srv *http.Server
	if a.cfg.MetricsListen != "" {
		lis, err := net.Listen("tcp", a.cfg.MetricsListen)
		if err != nil {
			cancel()
			stopWork()
			wg.Wait()
			return fmt.Errorf("metrics listen %s: %w", a.cfg.MetricsListen, err)
		}
		srv = &http.Server{Handler: a.httpHandler(), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("metrics server: %w", err)
			}
		}()
	}

	loopErr := a.loop(ctx, errc)
	cancel()
	if srv != nil {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = srv.Shutdown(sctx)
		scancel()
	}
	a.mu.Lock()
	for _, t := range a.containers {
		if t.timer != nil {
			t.timer.Stop()
		}
	}
	a.mu.Unlock()
	a.drainActions()
	stopWork()
	a.wg.Wait()
	wg.Wait()
	if err := a.store.Close(); err != nil {
		a.log.Error("cannot write to the state dir at exit", "err", err)
	}
	a.log.Info("vigil agent stopped")
	return loopErr
}

// drainActions waits up to ShutdownGrace for the container actions in
// flight (restarts, stops) to finish, so that stopping the agent does not
// leave a container half restarted. Their results are not reported: the
// next agent reads what they did from containerd.
func (a *Agent) drainActions() {
	n := a.actionsRunning.Load()
	if n == 0 {
		return
	}
	done := make(chan struct{})
	go func() {
		a.wg.Wait()
		close(done)
	}()
	a.log.Info("waiting for container actions in flight", "actions", n, "up_to", a.cfg.ShutdownGrace)
	t := time.NewTimer(a.cfg.ShutdownGrace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		a.log.Warn("container actions still in flight after the shutdown grace; abandoned, the next agent finishes them",
			"actions", a.actionsRunning.Load(), "shutdown_grace", a.cfg.ShutdownGrace)
	}
}

// kernelBootID returns the kernel's boot id, "" when it cannot be read.
func kernelBootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
