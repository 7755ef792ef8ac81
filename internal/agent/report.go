package agent

import (
	"context"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/metrics"
	"github.com/vigilhq/vigil/internal/network"
	"github.com/vigilhq/vigil/internal/procstat"
	"github.com/vigilhq/vigil/internal/restart"
	"github.com/vigilhq/vigil/internal/runtime"
	"github.com/vigilhq/vigil/internal/statedir"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// containerProto is a container's full state as the protocol carries it.
func (a *Agent) containerProto(t *tracked) *vigilv1.Container {
	a.mu.RLock()
	pb := baseContainerProto(&t.c)
	pb.Manager = managerProto(t.c.Manager)
	st := t.tracker.State
	pb.RestartCount = a.restartCountLocked(t)
	pb.ExplicitlyStopped = st.ExplicitlyStopped
	if t.c.Manager == runtime.ManagerVigil {
		pb.RestartPolicy = &vigilv1.RestartPolicy{
			Kind:               restartPolicyKindProto(policyKindOrNo(t.policy.Kind)),
			MaxRetries:         uint32(t.policy.MaxRetries),
			RestartOnUnhealthy: t.policy.RestartOnUnhealthy,
			BackoffInitial:     dur(t.policy.Backoff.Initial),
			BackoffMax:         dur(t.policy.Backoff.Max),
			BackoffResetAfter:  dur(t.policy.Backoff.ResetAfter),
		}
		pb.Backoff = &vigilv1.BackoffState{GaveUp: st.GaveUp}
		if st.Pending || st.Running {
			// A backoff is shown only where it is in force: a restart is
			// pending, or the running task's next failure would wait it. A
			// stopped container (an operator's stop, a policy that gave up
			// or said no) has none, whatever its last restarts were.
			pb.Backoff.CurrentDelay = dur(st.CurrentDelay)
			pb.Backoff.ConsecutiveRestarts = uint32(st.ConsecutiveRestarts)
			pb.Backoff.CrashLooping = st.CrashLooping
		}
		if st.Pending {
			pb.Backoff.NextRestartAt = ts(st.NextRestartAt)
		}
	}
	pb.Health = healthReportLocked(t)
	pb.LabelErrors = labelErrorsProto(t.labelErrors)
	for i := range t.conditions {
		pb.Conditions = append(pb.Conditions, t.conditions[i].Proto())
	}
	identity := t.identity
	a.mu.RUnlock()

	a.store.View(func(tx statedir.Tx) {
		if c, ok := tx.LookupCounters(identity); ok {
			pb.Counters = countersProto(c)
		}
	})
	if pb.Counters == nil {
		pb.Counters = &vigilv1.ContainerCounters{}
	}
	return pb
}

// labelErrorsProto bounds a container's label errors for the wire: at
// most maxLabelErrors, each on one line of at most maxLabelErrorBytes (a
// label value is the user's and may be long; the agent's log has it whole).
func labelErrorsProto(errs []string) []string {
	if len(errs) == 0 {
		return nil
	}
	out := make([]string, 0, min(len(errs), maxLabelErrors))
	for _, e := range errs[:min(len(errs), maxLabelErrors)] {
		e = strings.ReplaceAll(e, "\n", "; ")
		if len(e) > maxLabelErrorBytes {
			e = strings.ToValidUTF8(e[:maxLabelErrorBytes-3], "") + "..."
		}
		out = append(out, e)
	}
	return out
}

const (
	maxLabelErrors     = 8
	maxLabelErrorBytes = 512
)

// noHealth is the health of a container without a health check (shared,
// never modified).
var noHealth = &vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_NONE}

func policyKindOrNo(k restart.Kind) restart.Kind {
	if k == 0 {
		return restart.KindNo
	}
	return k
}

// snapshot is the node's full state; the uplink calls it when the
// aggregator needs one.
func (a *Agent) snapshot() *vigilv1.Snapshot {
	type keyed struct {
		k container.Key
		t *tracked
	}
	a.mu.RLock()
	ts := make([]keyed, 0, len(a.containers))
	for k, t := range a.containers {
		ts = append(ts, keyed{k, t})
	}
	netns := a.lastNet
	a.mu.RUnlock()
	sort.Slice(ts, func(i, j int) bool {
		if ts[i].k.Namespace != ts[j].k.Namespace {
			return ts[i].k.Namespace < ts[j].k.Namespace
		}
		return ts[i].k.ID < ts[j].k.ID
	})
	snap := &vigilv1.Snapshot{Network: netns, Status: a.nodeStatus()}
	for _, x := range ts {
		snap.Containers = append(snap.Containers, a.containerProto(x.t))
	}
	return snap
}

// nodeStatus is the agent's own health and cost.
func (a *Agent) nodeStatus() *vigilv1.NodeStatus {
	self, _ := procstat.Read("self") // zeros where there is no /proc
	st := &vigilv1.NodeStatus{
		RuntimeAvailable: a.rt.Available(),
		RuntimeVersion:   a.rt.Version(),
		Agent: &vigilv1.AgentStatus{
			CpuSeconds:             self.CPUSeconds(),
			RssBytes:               self.RSSBytes(),
			RuntimeLatency:         durationpb.New(a.rt.Latency()),
			RuntimeHung:            a.rt.Hung(),
			RuntimeReconnectsTotal: a.rt.Reconnects(),
		},
	}
	if d := a.self.lastCollection(); d > 0 {
		st.Agent.LastCollectionDuration = durationpb.New(d)
	}
	if a.up != nil {
		us := a.up.Stats()
		st.Agent.BufferedMessages = uint32(us.Buffered)
		st.Agent.BufferCapacity = uint32(us.Capacity)
		st.Agent.BufferDroppedTotal = us.Dropped
		st.Agent.ReconnectsTotal = us.Reconnects
	}
	if a.net != nil {
		st.Agent.NetnsHandles = uint32(a.net.OpenNamespaces())
	}
	ss := a.store.Stats()
	st.Agent.StateWriteFailuresTotal = ss.WriteFailures
	st.Agent.StateRecoveredFrom = ss.Recovered
	if !st.RuntimeAvailable {
		st.Conditions = append(st.Conditions, &vigilv1.Condition{
			Type:    vigilv1.ConditionType_CONDITION_TYPE_RUNTIME_UNAVAILABLE,
			Reason:  "ContainerdUnavailable",
			Message: "containerd at " + a.cfg.ContainerdAddress + " does not answer",
		})
	}
	return st
}

func (a *Agent) sendNodeStatus() {
	if a.up != nil {
		a.up.SendNodeStatus(a.nodeStatus())
	}
}

// applyConditions copies each namespace's network conditions onto the
// containers living in it, and reports containers whose conditions changed.
func (a *Agent) applyConditions(ctx context.Context, snap *network.Snapshot) {
	byContainer := map[container.Key][]network.Condition{}
	for i := range snap.Namespaces {
		ns := &snap.Namespaces[i]
		if ns.Host {
			continue
		}
		for _, k := range ns.Containers {
			for j := range ns.Conditions {
				byContainer[k] = append(byContainer[k], ns.Conditions[j])
			}
		}
	}
	var changed, all []*tracked
	a.mu.Lock()
	for k, t := range a.containers {
		next := byContainer[k]
		if !sameConditions(t.conditions, next) {
			t.conditions = next
			changed = append(changed, t)
		}
		all = append(all, t)
	}
	a.mu.Unlock()
	for _, t := range changed {
		a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_CONDITIONS_CHANGED, conditionSummary(t.conditions), nil, nil)
	}
	// Every container, not only the changed ones: a restarted task is judged
	// anew even when its namespace's conditions did not change.
	for _, t := range all {
		a.applyNetworkHealth(ctx, t)
	}
}

func sameConditions(x, y []network.Condition) bool {
	if len(x) != len(y) {
		return false
	}
	for i := range x {
		if x[i].Type != y[i].Type || x[i].Reason != y[i].Reason || x[i].Interface != y[i].Interface {
			return false
		}
	}
	return true
}

func conditionSummary(cs []network.Condition) string {
	if len(cs) == 0 {
		return "network conditions cleared"
	}
	parts := make([]string, 0, len(cs))
	for _, c := range cs {
		p := c.Reason
		if c.Interface != "" {
			p += " (" + c.Interface + ")"
		}
		parts = append(parts, p)
	}
	return "network conditions: " + strings.Join(parts, ", ")
}

// onNetworkEvent forwards a link change upstream at once (not at the next
// sample).
func (a *Agent) onNetworkEvent(ev network.Event) {
	typ := vigilv1.NetworkEventType_NETWORK_EVENT_TYPE_LINK_CHANGED
	switch ev.Type {
	case network.LinkAdded:
		typ = vigilv1.NetworkEventType_NETWORK_EVENT_TYPE_LINK_ADDED
	case network.LinkRemoved:
		typ = vigilv1.NetworkEventType_NETWORK_EVENT_TYPE_LINK_REMOVED
	}
	inode := ev.NetNSInode
	if ev.Host {
		inode = 0
	}
	out := &vigilv1.NetworkEvent{
		Type:      typ,
		Time:      timestamppb.New(ev.Time),
		Interface: ev.Link.Proto(inode),
	}
	for _, r := range ev.Containers {
		out.Containers = append(out.Containers, &vigilv1.ContainerRef{Namespace: r.Namespace, Id: r.ID})
	}
	a.log.Debug("link event", "type", ev.Type.String(), "link", ev.Link.Name, "netns", ev.NetNSInode)
	if a.up != nil {
		a.up.SendNetworkEvent(out)
	}
}

// attachNetwork tells the network monitor where a running container's
// namespace is.
func (a *Agent) attachNetwork(t *tracked) {
	if a.net == nil || t.c.Pid == 0 {
		return
	}
	src := network.Source{PID: t.c.Pid, HostNetwork: t.c.HostNetwork, Primary: t.c.Pod != nil && t.c.Pod.Sandbox}
	if err := a.net.Attach(t.c.Key(), src); err != nil {
		a.log.Debug("network attach", "container", t.c.ID, "err", err)
	}
}

func (a *Agent) detachNetwork(t *tracked) {
	if a.net != nil {
		a.net.Detach(t.c.Key())
	}
}

// selfMetrics are the agent's own metrics beyond those of its parts.
type selfMetrics struct {
	a        *Agent
	statsBuf []runtime.Stats

	contDesc *metrics.Desc
	// The state dir's writes (ok / error), fsyncs, whether unwritten
	// changes are held, and where its state came from at start.
	stateWrites, stateFsyncs, stateDirty, stateRecovered *metrics.Desc
	collHist                                             *metrics.Histogram
	// Per collector (resources, network): whether its last run succeeded
	// and how long it took, as node_exporter reports its collectors.
	collSuccess, collDuration *metrics.Desc
	collMu                    sync.Mutex
	collLast                  map[string]collectorRun
	lastColl                  atomic.Int64 // nanoseconds of the last collection cycle
	// restartHist is the time spent in containerd's delete, create and start
	// of a policy restart; restartLag the time from the exit (containerd's
	// timestamp) to the new task running, backoff included.
	restartHist *metrics.Histogram
	restartLag  *metrics.Histogram
	// restartOverhead is the time from an exit to the restart call, less the
	// delay Vigil chose to wait (backoff and stop window): event delivery,
	// the decision, the durable writes (exit, begun mark) and the timer.
	restartOverhead *metrics.Histogram
	// restartUnavailable counts restarts tried again because containerd
	// did not answer (not counted against the policy).
	restartUnavailable *metrics.Counter
	// restartShimLost counts restarts whose shim containerd lost, by
	// result: retried (off the policy) or counted (against it, past
	// shimLostRetryMax in a row).
	restartShimLost *metrics.CounterVec
	// crossChecks counts the peers' cross-checks of failed probes, by
	// verdict (node, pod, unknown).
	crossChecks *metrics.CounterVec
}

// collectorRun is a collector's last run.
type collectorRun struct {
	ok  bool
	dur time.Duration
}

// observeCollector records a collector's run (sampler goroutine; read by
// scrapes).
func (s *selfMetrics) observeCollector(name string, ok bool, d time.Duration) {
	s.collMu.Lock()
	s.collLast[name] = collectorRun{ok, d}
	s.collMu.Unlock()
}

func newSelfMetrics(a *Agent) *selfMetrics {
	s := &selfMetrics{
		a:        a,
		collLast: map[string]collectorRun{},
		collSuccess: metrics.NewDesc("vigil_agent_collector_success",
			"Whether the collector's last run succeeded (1) or failed (0): resources (cgroup files or containerd's metrics API), network (netlink).", metrics.GaugeType, "collector"),
		collDuration: metrics.NewDesc("vigil_agent_collector_duration_seconds",
			"Wall time of the collector's last run.", metrics.GaugeType, "collector"),
		contDesc: metrics.NewDesc("vigil_agent_containers", "Containers the agent tracks, by containerd namespace and manager.", metrics.GaugeType, "namespace", "manager"),
		stateWrites: metrics.NewDesc("vigil_agent_state_writes_total",
			"Writes of the agent's state dir, by result (ok, error); a failed write is kept in memory and retried.", metrics.CounterType, "result"),
		stateFsyncs: metrics.NewDesc("vigil_agent_state_fsyncs_total",
			"fsync calls of the state dir's writes (the file's and the directory's).", metrics.CounterType),
		stateDirty: metrics.NewDesc("vigil_agent_state_unwritten",
			"1 while the state holds changes not yet on disk (a failed write waiting for its retry, or changes kept for the next write).", metrics.GaugeType),
		stateRecovered: metrics.NewDesc("vigil_agent_state_recovered",
			"1 when the agent's state came, at its start, from the last good copy (the state file was corrupt or missing: the last durable write; marks written since without fsync may be missing) or from nothing (counters restarted from zero).", metrics.GaugeType, "from"),
		collHist: metrics.NewHistogram("vigil_agent_collection_duration_seconds",
			"Wall time of one resource and network collection cycle.",
			[]float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}),
		restartHist: metrics.NewHistogram("vigil_agent_restart_runtime_seconds",
			"Time containerd took to delete the exited task, create a new one and start it, per policy restart.",
			[]float64{.025, .05, .1, .15, .2, .3, .5, 1, 2.5, 5}),
		restartOverhead: metrics.NewHistogram("vigil_agent_restart_overhead_seconds",
			"Time from a task's exit to the agent asking containerd for its replacement, less the backoff and stop window it chose to wait.",
			[]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25}),
		restartUnavailable: metrics.NewCounter("vigil_agent_restart_unavailable_retries_total",
			"Restarts that failed because containerd did not answer in time (or was not connected) and were tried again with a backoff (1 s doubling to 30 s), not counted against the restart policy."),
		restartShimLost: metrics.NewCounterVec("vigil_agent_restart_shim_lost_total",
			"Restarts that failed because containerd lost the task's shim during the create or start (\"ttrpc: closed\"), by result: retried (again after 1 s doubling, not counted against the restart policy) or counted (a failed run for the policy: the sixth and further in a row before a task starts).", "result"),
		crossChecks: metrics.NewCounterVec("vigil_agent_health_cross_checks_total",
			"Failed probes of a pod address that gossip peers were asked to reach (the gossip cross-check, opt-in), by verdict: node (a peer reached it: this node's network is broken, the container is not restarted for it), pod (none did: the failure counts), unknown (no peer answered: the failure counts).", "verdict"),
		restartLag: metrics.NewHistogram("vigil_agent_restart_exit_to_running_seconds",
			"Time from a task's exit to its replacement running, per policy restart (backoff and stop window included).",
			[]float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}),
	}
	// Both results from the start, so that a rate or an increase over them
	// has a series before the first loss.
	s.restartShimLost.With("retried")
	s.restartShimLost.With("counted")
	return s
}

func (s *selfMetrics) observeCollection(d time.Duration) {
	s.collHist.Observe(d.Seconds())
	s.lastColl.Store(int64(d))
}

func (s *selfMetrics) lastCollection() time.Duration {
	return time.Duration(s.lastColl.Load())
}

func (s *selfMetrics) Collect(w *metrics.Writer) {
	type k struct{ ns, mgr string }
	counts := map[k]int{}
	s.a.mu.RLock()
	for _, t := range s.a.containers {
		counts[k{t.c.Namespace, t.c.Manager.String()}]++
	}
	s.a.mu.RUnlock()
	for key, n := range counts {
		w.Sample(s.contDesc, float64(n), key.ns, key.mgr)
	}
	s.collMu.Lock()
	for name, run := range s.collLast {
		w.Sample(s.collSuccess, b2f(run.ok), name)
		w.Sample(s.collDuration, run.dur.Seconds(), name)
	}
	s.collMu.Unlock()
	st := s.a.store.Stats()
	w.Sample(s.stateWrites, float64(st.Writes), "ok")
	w.Sample(s.stateWrites, float64(st.WriteFailures), "error")
	w.Sample(s.stateFsyncs, float64(st.Fsyncs))
	w.Sample(s.stateDirty, b2f(st.Dirty))
	if st.Recovered != "" {
		w.Sample(s.stateRecovered, 1, st.Recovered)
	}
	s.collHist.Collect(w)
	s.restartHist.Collect(w)
	s.restartLag.Collect(w)
	s.restartOverhead.Collect(w)
	s.restartUnavailable.Collect(w)
	s.restartShimLost.Collect(w)
	s.crossChecks.Collect(w)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
