package aggregator

import (
	"github.com/prometheus/client_golang/prometheus"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// Message kinds (label kind of the message counters).
var messageKinds = []string{
	"hello", "snapshot", "container_event", "resource_samples", "network_samples",
	"network_event", "peer_view", "command_result", "node_status", "unknown",
}

// Reasons a message or stream is rejected (label reason).
var rejectReasons = []string{
	"duplicate", "malformed", "oversized", "invalid", "no_hello", "identity", "replaced",
}

// selfMetrics are the aggregator's own metrics, built with client_golang on
// the registry passed in Config.
type selfMetrics struct {
	streams        prometheus.Gauge
	messages       *prometheus.CounterVec
	bytes          *prometheus.CounterVec
	rejected       *prometheus.CounterVec
	lag            prometheus.Histogram
	acks           prometheus.Counter
	commands       *prometheus.CounterVec
	scrapeDuration *prometheus.GaugeVec
	scrapeSeries   *prometheus.GaugeVec
	scrapeBytes    *prometheus.GaugeVec
}

func newSelfMetrics(reg prometheus.Registerer, fleet *Fleet) (*selfMetrics, error) {
	m := &selfMetrics{
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vigil_aggregator_streams_connected",
			Help: "Agent streams currently connected.",
		}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_aggregator_messages_received_total",
			Help: "Agent messages received, by kind (duplicates included).",
		}, []string{"kind"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_aggregator_received_bytes_total",
			Help: "Protobuf bytes of agent messages received, by kind.",
		}, []string{"kind"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_aggregator_messages_rejected_total",
			Help: "Agent messages not applied, by reason: duplicate (already applied), malformed, oversized, invalid, no_hello, identity (hello for another node than the certificate), replaced (stream replaced by a newer one).",
		}, []string{"reason"}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vigil_aggregator_ingest_lag_seconds",
			Help:    "Time from an agent sending a message (sent_at) to the aggregator applying it.",
			Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 5, 10, 30, 60, 300},
		}),
		acks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_aggregator_acks_sent_total",
			Help: "Cumulative acknowledgements sent to agents.",
		}),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_aggregator_commands_total",
			Help: "Commands offered to agents, by result: queued, unavailable (node not connected or queue full), sent.",
		}, []string{"result"}),
		scrapeDuration: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_aggregator_exposition_duration_seconds",
			Help: "Duration of the last /metrics exposition of each shard (\"all\" without shard parameters).",
		}, []string{"shard"}),
		scrapeSeries: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_aggregator_exposition_series",
			Help: "Fleet series written by the last /metrics exposition of each shard.",
		}, []string{"shard"}),
		scrapeBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_aggregator_exposition_bytes",
			Help: "Uncompressed bytes of fleet series written by the last /metrics exposition of each shard.",
		}, []string{"shard"}),
	}
	for _, k := range messageKinds {
		m.messages.WithLabelValues(k)
		m.bytes.WithLabelValues(k)
	}
	for _, r := range rejectReasons {
		m.rejected.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{
		m.streams, m.messages, m.bytes, m.rejected, m.lag, m.acks, m.commands,
		m.scrapeDuration, m.scrapeSeries, m.scrapeBytes, fleetCollector{fleet},
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func kindOf(m *vigilv1.AgentMessage) string {
	switch m.GetBody().(type) {
	case *vigilv1.AgentMessage_Hello:
		return "hello"
	case *vigilv1.AgentMessage_Snapshot:
		return "snapshot"
	case *vigilv1.AgentMessage_ContainerEvent:
		return "container_event"
	case *vigilv1.AgentMessage_ResourceSamples:
		return "resource_samples"
	case *vigilv1.AgentMessage_NetworkSamples:
		return "network_samples"
	case *vigilv1.AgentMessage_NetworkEvent:
		return "network_event"
	case *vigilv1.AgentMessage_PeerView:
		return "peer_view"
	case *vigilv1.AgentMessage_CommandResult:
		return "command_result"
	case *vigilv1.AgentMessage_NodeStatus:
		return "node_status"
	}
	return "unknown"
}

// fleetCollector exposes fleet-level counts at scrape time.
type fleetCollector struct{ fleet *Fleet }

var (
	nodesDesc = prometheus.NewDesc("vigil_aggregator_nodes",
		"Nodes the aggregator knows, by stream state (up, stale, down).", []string{"state"}, nil)
	containersDesc = prometheus.NewDesc("vigil_aggregator_containers",
		"Containers the agents report, sandboxes included.", nil, nil)
)

var _ prometheus.Collector = fleetCollector{}

func (fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- nodesDesc
	ch <- containersDesc
}

func (c fleetCollector) Collect(ch chan<- prometheus.Metric) {
	byState, containers := c.fleet.counts()
	for _, s := range []vigilv1.NodeState{vigilv1.NodeState_NODE_STATE_UP, vigilv1.NodeState_NODE_STATE_STALE, vigilv1.NodeState_NODE_STATE_DOWN} {
		ch <- prometheus.MustNewConstMetric(nodesDesc, prometheus.GaugeValue, float64(byState[s]), stateName(s))
	}
	ch <- prometheus.MustNewConstMetric(containersDesc, prometheus.GaugeValue, float64(containers))
}

func stateName(s vigilv1.NodeState) string {
	switch s {
	case vigilv1.NodeState_NODE_STATE_UP:
		return "up"
	case vigilv1.NodeState_NODE_STATE_STALE:
		return "stale"
	case vigilv1.NodeState_NODE_STATE_DOWN:
		return "down"
	}
	return "unknown"
}
