package health

import (
	"github.com/vigilhq/vigil/internal/metrics"
)

// probeMetrics is the cost and outcome of probing. The families are not
// registered anywhere: the Scheduler's Collector exposes them on the
// registry the caller passes it to.
//
// Label values are bounded: kind is one of exec, http, tcp, grpc; result is
// success or failure; reason is timeout, error or unhealthy.
type probeMetrics struct {
	probes   *metrics.CounterVec
	duration *metrics.HistogramVec
	failures *metrics.CounterVec
	delayed  *metrics.Counter
	count    func() int
	workers  func() int
}

var (
	descTargets = metrics.NewDesc("vigil_agent_health_targets",
		"Containers the agent is health-checking.", metrics.GaugeType)
	descWorkers = metrics.NewDesc("vigil_agent_health_workers",
		"Probe workers started: they start when a probe is due and every started one is busy, up to the scheduler's worker limit.", metrics.GaugeType)
)

func newMetrics(count, workers func() int) *probeMetrics {
	return &probeMetrics{
		probes: metrics.NewCounterVec("vigil_agent_health_probes_total",
			"Health probes run by the agent, by probe kind and result (success, failure).", "kind", "result"),
		duration: metrics.NewHistogramVec("vigil_agent_health_probe_duration_seconds",
			"Duration of health probes, by probe kind.",
			[]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}, "kind"),
		failures: metrics.NewCounterVec("vigil_agent_health_probe_failures_total",
			"Failed health probes, by probe kind and reason: timeout, error (the probe could not be carried out), unhealthy (the check answered no).", "kind", "reason"),
		delayed: metrics.NewCounter("vigil_agent_health_probes_delayed_total",
			"Health probes that came due while every worker was busy and had to wait for one."),
		count:   count,
		workers: workers,
	}
}

// observe records one probe's outcome; failed is the failure reason when
// r is not OK.
func (m *probeMetrics) observe(kind Kind, r Result, failed string) {
	k := kind.String()
	m.duration.With(k).Observe(r.Duration.Seconds())
	if r.OK {
		m.probes.With(k, "success").Inc()
		return
	}
	m.probes.With(k, "failure").Inc()
	m.failures.With(k, failed).Inc()
}

// Collect implements metrics.Collector.
func (m *probeMetrics) Collect(w *metrics.Writer) {
	m.probes.Collect(w)
	m.duration.Collect(w)
	m.failures.Collect(w)
	m.delayed.Collect(w)
	w.Sample(descTargets, float64(m.count()))
	w.Sample(descWorkers, float64(m.workers()))
}

// Collector returns the scheduler's metrics, for the caller to register on
// its registry: vigil_agent_health_probes_total{kind,result},
// vigil_agent_health_probe_duration_seconds{kind},
// vigil_agent_health_probe_failures_total{kind,reason},
// vigil_agent_health_probes_delayed_total, vigil_agent_health_targets and
// vigil_agent_health_workers.
// Safe to collect concurrently with probing.
func (s *Scheduler) Collector() metrics.Collector { return s.metrics }
