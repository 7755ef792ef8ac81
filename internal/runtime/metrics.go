package runtime

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// selfMetrics are the runtime's own figures. Label values are bounded:
// call is one of the fixed call names used in this package, type one of
// the EventType names.
type selfMetrics struct {
	callDuration *prometheus.HistogramVec
	callTimeouts *prometheus.CounterVec
	reconnects   atomic.Int64
	events       *prometheus.CounterVec
	cycle        prometheus.Histogram
	openFiles    atomic.Int64

	reconnectsDesc, openFilesDesc, availableDesc, latencyDesc *prometheus.Desc
}

func newSelfMetrics() *selfMetrics {
	return &selfMetrics{
		callDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vigil_agent_runtime_api_call_duration_seconds",
			Help:    "Duration of containerd API calls made by the agent, by call.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"call"}),
		callTimeouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_agent_runtime_api_call_timeouts_total",
			Help: "containerd API calls that got no answer within the call timeout (a hanging runtime), by call.",
		}, []string{"call"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_agent_runtime_events_total",
			Help: "Lifecycle events emitted by the runtime watcher, by type.",
		}, []string{"type"}),
		cycle: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vigil_agent_runtime_stats_cycle_duration_seconds",
			Help:    "Wall time of one resource usage collection over all running containers.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		reconnectsDesc: prometheus.NewDesc("vigil_agent_runtime_reconnects_total",
			"Times the connection to containerd was lost or could not be made and was retried.", nil, nil),
		openFilesDesc: prometheus.NewDesc("vigil_agent_runtime_cgroup_files_open",
			"cgroup files held open by the stats collector.", nil, nil),
		availableDesc: prometheus.NewDesc("vigil_agent_runtime_available",
			"1 when containerd answers and the inventory is in sync with it, else 0.", nil, nil),
		latencyDesc: prometheus.NewDesc("vigil_agent_runtime_probe_latency_seconds",
			"Duration of the last successful containerd version probe.", nil, nil),
	}
}

func (m *selfMetrics) observeCall(call string, d time.Duration) {
	m.callDuration.WithLabelValues(call).Observe(d.Seconds())
}

func (m *selfMetrics) countTimeout(call string) { m.callTimeouts.WithLabelValues(call).Inc() }

func (m *selfMetrics) countEvent(t EventType) { m.events.WithLabelValues(t.String()).Inc() }

func (m *selfMetrics) observeCycle(d time.Duration) { m.cycle.Observe(d.Seconds()) }

// Collector returns the runtime's self-metrics, to be registered on the
// agent's registry (once). Collection is safe concurrently with
// everything else.
func (r *Runtime) Collector() prometheus.Collector { return (*runtimeCollector)(r) }

type runtimeCollector Runtime

var _ prometheus.Collector = (*runtimeCollector)(nil)

func (c *runtimeCollector) Describe(ch chan<- *prometheus.Desc) {
	m := c.metrics
	m.callDuration.Describe(ch)
	m.callTimeouts.Describe(ch)
	m.events.Describe(ch)
	m.cycle.Describe(ch)
	ch <- m.reconnectsDesc
	ch <- m.openFilesDesc
	ch <- m.availableDesc
	ch <- m.latencyDesc
}

func (c *runtimeCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.metrics
	r := (*Runtime)(c)
	m.callDuration.Collect(ch)
	m.callTimeouts.Collect(ch)
	m.events.Collect(ch)
	m.cycle.Collect(ch)
	ch <- prometheus.MustNewConstMetric(m.reconnectsDesc, prometheus.CounterValue, float64(m.reconnects.Load()))
	ch <- prometheus.MustNewConstMetric(m.openFilesDesc, prometheus.GaugeValue, float64(m.openFiles.Load()))
	avail := 0.0
	if r.Available() {
		avail = 1
	}
	ch <- prometheus.MustNewConstMetric(m.availableDesc, prometheus.GaugeValue, avail)
	ch <- prometheus.MustNewConstMetric(m.latencyDesc, prometheus.GaugeValue, r.Latency().Seconds())
}
