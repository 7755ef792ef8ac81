package network

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// monitorStats are the monitor's own counters, read by its collector.
type monitorStats struct {
	opened, closed atomic.Uint64 // namespaces whose sockets were opened / closed
	readErrors     atomic.Uint64
	delivered      atomic.Uint64
	coalesced      atomic.Uint64
	dropped        atomic.Uint64
	resyncs        atomic.Uint64
	linkDumps      atomic.Uint64        // full link dumps
	statsDumps     atomic.Uint64        // counters-only dumps
	cycle          prometheus.Histogram // read-cycle wall time; set by New
}

// newCycleHistogram returns the read-cycle duration histogram
// (vigil_agent_network_read_duration_seconds).
func newCycleHistogram() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "vigil_agent_network_read_duration_seconds",
		Help:    "Wall time of one full network read cycle (every open namespace).",
		Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1},
	})
}

// Self-metrics. Label sets are fixed: `outcome` takes the three values below.
var (
	descNamespaces = prometheus.NewDesc("vigil_agent_network_namespaces_open",
		"Network namespaces the agent holds netlink sockets in, the host's included.", nil, nil)
	descSockets = prometheus.NewDesc("vigil_agent_network_sockets_open",
		"Netlink sockets the agent holds for network monitoring (two per open namespace).", nil, nil)
	descOpened = prometheus.NewDesc("vigil_agent_network_namespaces_opened_total",
		"Network namespaces whose sockets were opened.", nil, nil)
	descClosed = prometheus.NewDesc("vigil_agent_network_namespaces_closed_total",
		"Network namespaces whose sockets were closed.", nil, nil)
	descReadErrors = prometheus.NewDesc("vigil_agent_network_read_errors_total",
		"Namespaces that could not be read in a cycle.", nil, nil)
	descEvents = prometheus.NewDesc("vigil_agent_network_events_total",
		"Link events by outcome: delivered to the consumer, coalesced with a pending event of the same link, or dropped because too many links had events pending.",
		[]string{"outcome"}, nil)
	descDumps = prometheus.NewDesc("vigil_agent_network_link_reads_total",
		"Per-namespace link reads by kind: full (RTM_GETLINK, after a link notification) or stats (RTM_GETSTATS, counters only).",
		[]string{"kind"}, nil)
	descResyncs = prometheus.NewDesc("vigil_agent_network_resyncs_total",
		"Times link notifications were lost (socket buffer overflow or truncation) and re-learnt.", nil, nil)
)

// Collector returns a collector of the monitor's own metrics, to register on
// the caller's registry. Values are read at scrape time.
func (m *Monitor) Collector() prometheus.Collector { return (*monitorCollector)(m) }

type monitorCollector Monitor

var _ prometheus.Collector = (*monitorCollector)(nil)

func (c *monitorCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descNamespaces, descSockets, descOpened, descClosed, descReadErrors, descEvents, descDumps, descResyncs} {
		ch <- d
	}
	ch <- c.stats.cycle.Desc()
}

func (c *monitorCollector) Collect(ch chan<- prometheus.Metric) {
	m := (*Monitor)(c)
	s := &m.stats
	ch <- prometheus.MustNewConstMetric(descNamespaces, prometheus.GaugeValue, float64(m.OpenNamespaces()))
	ch <- prometheus.MustNewConstMetric(descSockets, prometheus.GaugeValue, float64(m.openSockets()))
	ch <- prometheus.MustNewConstMetric(descOpened, prometheus.CounterValue, float64(s.opened.Load()))
	ch <- prometheus.MustNewConstMetric(descClosed, prometheus.CounterValue, float64(s.closed.Load()))
	ch <- s.cycle
	ch <- prometheus.MustNewConstMetric(descReadErrors, prometheus.CounterValue, float64(s.readErrors.Load()))
	ch <- prometheus.MustNewConstMetric(descEvents, prometheus.CounterValue, float64(s.delivered.Load()), "delivered")
	ch <- prometheus.MustNewConstMetric(descEvents, prometheus.CounterValue, float64(s.coalesced.Load()), "coalesced")
	ch <- prometheus.MustNewConstMetric(descEvents, prometheus.CounterValue, float64(s.dropped.Load()), "dropped")
	ch <- prometheus.MustNewConstMetric(descDumps, prometheus.CounterValue, float64(s.linkDumps.Load()), "full")
	ch <- prometheus.MustNewConstMetric(descDumps, prometheus.CounterValue, float64(s.statsDumps.Load()), "stats")
	ch <- prometheus.MustNewConstMetric(descResyncs, prometheus.CounterValue, float64(s.resyncs.Load()))
}
