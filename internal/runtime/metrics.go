package runtime

import (
	"sync/atomic"
	"time"

	"github.com/vigilhq/vigil/internal/metrics"
)

// selfMetrics are the runtime's own figures. Label values are bounded:
// call is one of the fixed call names used in this package, type one of
// the EventType names.
type selfMetrics struct {
	callDuration *metrics.HistogramVec
	callTimeouts *metrics.CounterVec
	reconnects   atomic.Int64
	events       *metrics.CounterVec
	cycle        *metrics.Histogram
	leftovers    *metrics.CounterVec
	openFiles    atomic.Int64
	logRotations atomic.Int64
}

var (
	descReconnects = metrics.NewDesc("vigil_agent_runtime_reconnects_total",
		"Times the connection to containerd was lost or could not be made and was retried.", metrics.CounterType)
	descOpenFiles = metrics.NewDesc("vigil_agent_runtime_cgroup_files_open",
		"cgroup files held open by the stats collector.", metrics.GaugeType)
	descLogRotations = metrics.NewDesc("vigil_agent_runtime_log_rotations_total",
		"Container log files under the agent's log directory rotated at their size cap.", metrics.CounterType)
	descAvailable = metrics.NewDesc("vigil_agent_runtime_available",
		"1 when containerd answers and the inventory is in sync with it, else 0.", metrics.GaugeType)
	descLatency = metrics.NewDesc("vigil_agent_runtime_probe_latency_seconds",
		"Duration of the last successful containerd version probe.", metrics.GaugeType)
)

func newSelfMetrics() *selfMetrics {
	return &selfMetrics{
		callDuration: metrics.NewHistogramVec("vigil_agent_runtime_api_call_duration_seconds",
			"Duration of containerd API calls made by the agent, by call.",
			[]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}, "call"),
		callTimeouts: metrics.NewCounterVec("vigil_agent_runtime_api_call_timeouts_total",
			"containerd API calls that got no answer within the call timeout (a hanging runtime), by call.", "call"),
		events: metrics.NewCounterVec("vigil_agent_runtime_events_total",
			"Lifecycle events emitted by the runtime watcher, by type.", "type"),
		cycle: metrics.NewHistogram("vigil_agent_runtime_stats_cycle_duration_seconds",
			"Wall time of one resource usage collection over all running containers.",
			[]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}),
		leftovers: metrics.NewCounterVec("vigil_agent_runtime_restart_leftovers_total",
			"What an interrupted task create left in containerd that a restart cleared, by kind: shim (a shim without a task, deleted), task (the interrupted restart's created or stopped task, replaced), bundle_wait (a wait for an earlier create still going on).", "kind"),
	}
}

func (m *selfMetrics) observeCall(call string, d time.Duration) {
	m.callDuration.With(call).Observe(d.Seconds())
}

func (m *selfMetrics) countTimeout(call string) { m.callTimeouts.With(call).Inc() }

func (m *selfMetrics) countEvent(t EventType) { m.events.With(t.String()).Inc() }

// countLeftover counts one clean-up of createTask; kind is one of shim,
// task, bundle_wait.
func (m *selfMetrics) countLeftover(kind string) { m.leftovers.With(kind).Inc() }

func (m *selfMetrics) observeCycle(d time.Duration) { m.cycle.Observe(d.Seconds()) }

// Collector returns the runtime's self-metrics, to be registered on the
// agent's registry (once). Collection is safe concurrently with
// everything else.
func (r *Runtime) Collector() metrics.Collector { return (*runtimeCollector)(r) }

type runtimeCollector Runtime

func (c *runtimeCollector) Collect(w *metrics.Writer) {
	m := c.metrics
	r := (*Runtime)(c)
	m.callDuration.Collect(w)
	m.callTimeouts.Collect(w)
	m.events.Collect(w)
	m.cycle.Collect(w)
	m.leftovers.Collect(w)
	w.Sample(descReconnects, float64(m.reconnects.Load()))
	w.Sample(descOpenFiles, float64(m.openFiles.Load()))
	w.Sample(descLogRotations, float64(m.logRotations.Load()))
	avail := 0.0
	if r.Available() {
		avail = 1
	}
	w.Sample(descAvailable, avail)
	w.Sample(descLatency, r.Latency().Seconds())
}
