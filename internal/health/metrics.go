package health

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics is the cost and outcome of probing. The vectors are not
// registered anywhere: the Scheduler's Collector exposes them on the
// registry the caller passes it to.
//
// Label values are bounded: kind is one of exec, http, tcp, grpc; result is
// success or failure; reason is timeout, error or unhealthy.
type metrics struct {
	probes   *prometheus.CounterVec
	duration *prometheus.HistogramVec
	failures *prometheus.CounterVec
	delayed  prometheus.Counter
	targets  *prometheus.Desc
	count    func() int
}

func newMetrics(count func() int) *metrics {
	return &metrics{
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_agent_health_probes_total",
			Help: "Health probes run by the agent, by probe kind and result (success, failure).",
		}, []string{"kind", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vigil_agent_health_probe_duration_seconds",
			Help:    "Duration of health probes, by probe kind.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"kind"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_agent_health_probe_failures_total",
			Help: "Failed health probes, by probe kind and reason: timeout, error (the probe could not be carried out), unhealthy (the check answered no).",
		}, []string{"kind", "reason"}),
		delayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_agent_health_probes_delayed_total",
			Help: "Health probes that came due while every worker was busy and had to wait for one.",
		}),
		targets: prometheus.NewDesc("vigil_agent_health_targets",
			"Containers the agent is health-checking.", nil, nil),
		count: count,
	}
}

func (m *metrics) observe(kind Kind, r Result, failed string) {
	k := kind.String()
	m.duration.WithLabelValues(k).Observe(r.Duration.Seconds())
	if r.OK {
		m.probes.WithLabelValues(k, "success").Inc()
		return
	}
	m.probes.WithLabelValues(k, "failure").Inc()
	m.failures.WithLabelValues(k, failed).Inc()
}

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	m.probes.Describe(ch)
	m.duration.Describe(ch)
	m.failures.Describe(ch)
	m.delayed.Describe(ch)
	ch <- m.targets
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	m.probes.Collect(ch)
	m.duration.Collect(ch)
	m.failures.Collect(ch)
	m.delayed.Collect(ch)
	ch <- prometheus.MustNewConstMetric(m.targets, prometheus.GaugeValue, float64(m.count()))
}

// Collector returns the scheduler's metrics, for the caller to register on
// its registry: vigil_agent_health_probes_total{kind,result},
// vigil_agent_health_probe_duration_seconds{kind},
// vigil_agent_health_probe_failures_total{kind,reason},
// vigil_agent_health_probes_delayed_total and vigil_agent_health_targets.
// Safe to collect concurrently with probing.
func (s *Scheduler) Collector() prometheus.Collector { return s.metrics }

var _ prometheus.Collector = (*metrics)(nil)
