package remediation

import (
	"fmt"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the engine's series. Label sets are bounded: action (4
// values), result (the outcomes, expired, unknown, cancelled), reason
// (Reasons), code (webhookCodes, the HTTP status codes the handler writes).
type metrics struct {
	remediations *prometheus.CounterVec
	suppressed   *prometheus.CounterVec
	webhook      *prometheus.CounterVec
	duration     prometheus.Histogram
	storm        prometheus.Gauge
}

// results are the values of vigil_remediations_total's result label.
var results = []string{string(OutcomeSucceeded), string(OutcomeFailed), string(OutcomeFenced), string(OutcomeExpired),
	string(OutcomeDuplicate), string(OutcomeNotFound), string(OutcomeRefused), ResultUnknown, ResultCancelled}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		remediations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_remediations_total",
			Help: "Remediation commands that ended, by action as sent and result (the agent's outcome, or expired, unknown, cancelled).",
		}, []string{"action", "result"}),
		suppressed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_remediations_suppressed_total",
			Help: "Alerts and requests that made no command, by reason (duplicate, cooldown, budget, storm, fenced, dry_run, target_unknown, node_down, resolved, owner, escalated, store_unavailable, refused, node_network).",
		}, []string{"reason"}),
		webhook: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_remediation_webhook_requests_total",
			Help: "Alertmanager webhook requests to /api/v1/alerts, by HTTP status code answered.",
		}, []string{"code"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vigil_remediation_duration_seconds",
			Help:    "From the webhook (or request) received to the command's result recorded.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}),
		storm: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vigil_remediation_storm_active",
			Help: "1 while the storm guard holds every alert-driven action (as this replica last evaluated it), else 0.",
		}),
	}
	for _, c := range []prometheus.Collector{m.remediations, m.suppressed, m.webhook, m.duration, m.storm} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("remediation metrics: %w", err)
		}
	}
	// Every series a dashboard divides by exists from the start.
	for _, a := range Actions {
		for _, r := range results {
			m.remediations.WithLabelValues(a.String(), r)
		}
	}
	for _, r := range Reasons {
		m.suppressed.WithLabelValues(string(r))
	}
	for _, c := range webhookCodes {
		m.webhook.WithLabelValues(strconv.Itoa(c))
	}
	return m, nil
}
