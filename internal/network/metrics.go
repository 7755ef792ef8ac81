package network

import (
	"sync/atomic"

	"github.com/vigilhq/vigil/internal/metrics"
)

// monitorStats are the monitor's own counters, read by its collector.
type monitorStats struct {
	opened, closed atomic.Uint64 // namespaces whose sockets were opened / closed
	readErrors     atomic.Uint64
	delivered      atomic.Uint64
	coalesced      atomic.Uint64
	dropped        atomic.Uint64
	resyncs        atomic.Uint64
	linkDumps      atomic.Uint64      // full link dumps
	statsDumps     atomic.Uint64      // counters-only dumps
	cycle          *metrics.Histogram // read-cycle wall time; set by New
}

// newCycleHistogram returns the read-cycle duration histogram
// (vigil_agent_network_read_duration_seconds).
func newCycleHistogram() *metrics.Histogram {
	return metrics.NewHistogram("vigil_agent_network_read_duration_seconds",
		"Wall time of one full network read cycle (every open namespace).",
		[]float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1})
}

// Self-metrics. Label sets are fixed: `outcome` takes the three values below.
var (
	descNamespaces = metrics.NewDesc("vigil_agent_network_namespaces_open",
		"Network namespaces the agent holds netlink sockets in, the host's included.", metrics.GaugeType)
	descSockets = metrics.NewDesc("vigil_agent_network_sockets_open",
		"Netlink sockets the agent holds for network monitoring (two per open namespace).", metrics.GaugeType)
	descOpened = metrics.NewDesc("vigil_agent_network_namespaces_opened_total",
		"Network namespaces whose sockets were opened.", metrics.CounterType)
	descClosed = metrics.NewDesc("vigil_agent_network_namespaces_closed_total",
		"Network namespaces whose sockets were closed.", metrics.CounterType)
	descReadErrors = metrics.NewDesc("vigil_agent_network_read_errors_total",
		"Namespaces that could not be read in a cycle.", metrics.CounterType)
	descEvents = metrics.NewDesc("vigil_agent_network_events_total",
		"Link events by outcome: delivered to the consumer, coalesced with a pending event of the same link, or dropped because too many links had events pending.",
		metrics.CounterType, "outcome")
	descDumps = metrics.NewDesc("vigil_agent_network_link_reads_total",
		"Per-namespace link reads by kind: full (RTM_GETLINK, after a link notification) or stats (RTM_GETSTATS, counters only).",
		metrics.CounterType, "kind")
	descResyncs = metrics.NewDesc("vigil_agent_network_resyncs_total",
		"Times link notifications were lost (socket buffer overflow or truncation) and re-learnt.", metrics.CounterType)
)

// Collector returns a collector of the monitor's own metrics, to register on
// the caller's registry. Values are read at scrape time.
func (m *Monitor) Collector() metrics.Collector { return (*monitorCollector)(m) }

type monitorCollector Monitor

func (c *monitorCollector) Collect(w *metrics.Writer) {
	m := (*Monitor)(c)
	s := &m.stats
	w.Sample(descNamespaces, float64(m.OpenNamespaces()))
	w.Sample(descSockets, float64(m.openSockets()))
	w.Sample(descOpened, float64(s.opened.Load()))
	w.Sample(descClosed, float64(s.closed.Load()))
	s.cycle.Collect(w)
	w.Sample(descReadErrors, float64(s.readErrors.Load()))
	w.Sample(descEvents, float64(s.delivered.Load()), "delivered")
	w.Sample(descEvents, float64(s.coalesced.Load()), "coalesced")
	w.Sample(descEvents, float64(s.dropped.Load()), "dropped")
	w.Sample(descDumps, float64(s.linkDumps.Load()), "full")
	w.Sample(descDumps, float64(s.statsDumps.Load()), "stats")
	w.Sample(descResyncs, float64(s.resyncs.Load()))
}
