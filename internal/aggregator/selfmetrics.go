package aggregator

import (
	"sync"
	"sync/atomic"
	"time"

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
	"duplicate", "malformed", "oversized", "invalid", "no_hello", "identity", "replaced", "too_many_streams", "held_elsewhere", "hello_over_quota",
}

// Results of a command offered to an agent (label result).
var commandResults = []string{"queued", "unavailable", "sent"}

// selfMetrics are the aggregator's own metrics, built with client_golang on
// the registry passed in Config. Every series whose label values are known
// in advance exists from the start at 0, so that rate() and increase() see
// its first increment and "none" is told from "not exported"; per-node and
// per-replica series exist from when the node or replica is known
// (nodeSeen, replicas.onReplicas) until it is forgotten.
type selfMetrics struct {
	streams      prometheus.Gauge
	messages     *prometheus.CounterVec
	bytes        *prometheus.CounterVec
	rejected     *prometheus.CounterVec
	lag          prometheus.Histogram
	acks         prometheus.Counter
	commands     *prometheus.CounterVec
	expositions  *expositionStats
	authRefused  *prometheus.CounterVec
	quota        *prometheus.CounterVec
	insecure     prometheus.Gauge
	suspectSelf  prometheus.Gauge
	historyDrop  prometheus.Counter
	issued       *prometheus.CounterVec
	bootRefused  *prometheus.CounterVec
	watchers     prometheus.Gauge
	watchDropped *prometheus.CounterVec
	// leader is read at scrape time from leaderOf (nil: not yet set, 0).
	leader     prometheus.GaugeFunc
	leaderOf   atomic.Pointer[func() bool]
	heldNodes  prometheus.Gauge
	peerErrors *prometheus.CounterVec
	tlsRefused prometheus.Counter
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
			Help: "Agent messages not applied, by reason: duplicate (already applied), malformed, oversized, invalid, no_hello, identity (hello for another node than the certificate), replaced (stream replaced by a newer one), held_elsewhere (another replica holds the node), hello_over_quota (a hello over a quota, counted here and not under the node it claims, which is not verified yet).",
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
		expositions: newExpositionStats(time.Now),
		tlsRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_aggregator_tls_handshakes_refused_total",
			Help: "TLS handshakes that failed on the gRPC listener: a client certificate expired, not signed by a CA of --tls-ca, or none when one is needed; a client that does not speak TLS.",
		}),
		authRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_aggregator_auth_refused_total",
			Help: "Calls refused by the role check, by the caller's role (none: no usable credential; unknown: a method outside the role table) and gRPC method or HTTP route.",
		}, []string{"role", "method"}),
		quota: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_aggregator_quota_exceeded_total",
			Help: "Agent streams cut off for going over a quota, by node and cap (containers, network_namespaces, interfaces_per_namespace, exit_pairs, labels, string_bytes, message_bytes); every cap of a node is there at 0 from when its stream is accepted until it is forgotten.",
		}, []string{"node", "cap"}),
		insecure: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vigil_aggregator_insecure",
			Help: "1 when the aggregator serves without TLS (--insecure: every call allowed, loopback only), else 0.",
		}),
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_aggregator_node_certificates_issued_total",
			Help: "Node certificates signed, by kind: bootstrap (with a token) or renew (with the node's certificate).",
		}, []string{"kind"}),
		bootRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_aggregator_bootstrap_refused_total",
			Help: "Bootstrap and renewal requests refused, by reason: token (unknown or revoked), csr (malformed), bound (the node name is bound to another key), limit (a new node name beyond --max-node-bindings), identity (renewal for another node).",
		}, []string{"reason"}),
		historyDrop: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_aggregator_event_history_dropped_total",
			Help: "Container events not kept in the event history (vigilctl events --since): its write queue was full or the store refused the write. Live watchers still got them.",
		}),
		suspectSelf: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vigil_aggregator_fleet_condition_suspect",
			Help: "1 when more than half the nodes last changed condition together: the aggregator's or the network's failure is likelier than the nodes' (see its log), else 0.",
		}),
		watchers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vigil_aggregator_watchers",
			Help: "WatchEvents subscribers connected.",
		}),
		watchDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_aggregator_watchers_dropped_total",
			Help: "WatchEvents streams ended because the watcher fell behind (more changes waited for it than the watch buffer holds), by the feed that overflowed first: local (this replica's changes) or shared (the other replicas', from the shared store's event history). The stream ends with ResourceExhausted naming the time to watch again from.",
		}, []string{"feed"}),
		heldNodes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vigil_aggregator_held_nodes",
			Help: "Nodes whose stream this replica holds under its lease in the shared store (with bbolt: the nodes connected).",
		}),
		peerErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_aggregator_peer_errors_total",
			Help: "Fleet-wide reads that got no answer from another replica (the result was partial), by replica; at 0 from when the replica registers until it leaves.",
		}, []string{"replica"}),
	}
	m.leader = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "vigil_aggregator_leader",
		Help: "1 when this replica runs the housekeeping that must run once (the elected replica with etcd, as of a lease renewal within the TTL; always with bbolt), else 0.",
	}, func() float64 {
		if f := m.leaderOf.Load(); f != nil {
			return boolGauge((*f)())
		}
		return 0
	})
	for _, k := range []string{"bootstrap", "renew"} {
		m.issued.WithLabelValues(k)
	}
	for _, r := range []string{"token", "csr", "bound", "limit", "identity"} {
		m.bootRefused.WithLabelValues(r)
	}
	for _, k := range messageKinds {
		m.messages.WithLabelValues(k)
		m.bytes.WithLabelValues(k)
	}
	for _, r := range rejectReasons {
		m.rejected.WithLabelValues(r)
	}
	for _, r := range commandResults {
		m.commands.WithLabelValues(r)
	}
	for _, f := range watchFeeds {
		m.watchDropped.WithLabelValues(f)
	}
	for _, c := range []prometheus.Collector{
		m.streams, m.messages, m.bytes, m.rejected, m.lag, m.acks, m.commands,
		m.expositions, fleetCollector{fleet}, m.authRefused, m.quota, m.insecure, m.suspectSelf, m.historyDrop, m.issued, m.bootRefused, m.watchers,
		m.watchDropped, m.leader, m.heldNodes, m.peerErrors, m.tlsRefused,
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// nodeSeen creates node's per-node series at 0 (one per quota cap), so
// that its first refusal is an increase rate() sees. Idempotent;
// nodeForgotten removes them.
func (m *selfMetrics) nodeSeen(node string) {
	for _, c := range quotaCaps {
		m.quota.WithLabelValues(node, c)
	}
}

// nodeForgotten removes node's per-node series (it is forgotten here, or
// another replica shows it now).
func (m *selfMetrics) nodeForgotten(node string) {
	m.quota.DeletePartialMatch(prometheus.Labels{"node": node})
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
	seqGapsDesc = prometheus.NewDesc("vigil_aggregator_sequence_gaps_total",
		"Messages of a node's stream applied after a gap in its sequence numbers (messages the agent dropped), by node; a node appears at 0 once it is known and goes when it is forgotten. Each gap asks the agent for a snapshot.", []string{"node"}, nil)
)

var _ prometheus.Collector = fleetCollector{}

func (fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- nodesDesc
	ch <- containersDesc
	ch <- seqGapsDesc
}

func (c fleetCollector) Collect(ch chan<- prometheus.Metric) {
	byState, containers := c.fleet.counts()
	for _, s := range []vigilv1.NodeState{vigilv1.NodeState_NODE_STATE_UP, vigilv1.NodeState_NODE_STATE_STALE, vigilv1.NodeState_NODE_STATE_DOWN} {
		ch <- prometheus.MustNewConstMetric(nodesDesc, prometheus.GaugeValue, float64(byState[s]), stateName(s))
	}
	ch <- prometheus.MustNewConstMetric(containersDesc, prometheus.GaugeValue, float64(containers))
	for _, n := range c.fleet.list() {
		n.mu.Lock()
		gaps := n.seqGaps
		n.mu.Unlock()
		ch <- prometheus.MustNewConstMetric(seqGapsDesc, prometheus.CounterValue, float64(gaps), n.name)
	}
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

// Bounds of the per-shard exposition figures: the shard label comes from the
// scraper's query, so a shard not scraped for expositionTTL is dropped (no
// stale series after resharding) and at most maxExpositionShards are kept
// (the least recently scraped is dropped first).
const (
	expositionTTL       = 10 * time.Minute
	maxExpositionShards = 256
)

var (
	expositionDurationDesc = prometheus.NewDesc("vigil_aggregator_exposition_duration_seconds",
		"Duration of the last /metrics exposition of each shard (\"all\" without shard parameters); a shard not scraped for 10 minutes is dropped.", []string{"shard"}, nil)
	expositionSeriesDesc = prometheus.NewDesc("vigil_aggregator_exposition_series",
		"Fleet series written by the last /metrics exposition of each shard.", []string{"shard"}, nil)
	expositionBytesDesc = prometheus.NewDesc("vigil_aggregator_exposition_bytes",
		"Uncompressed bytes of fleet series written by the last /metrics exposition of each shard.", []string{"shard"}, nil)
)

// expositionStats holds the figures of the last exposition of each shard
// recently scraped, and exposes them as a collector. Safe for concurrent use.
type expositionStats struct {
	now func() time.Time

	mu      sync.Mutex
	byShard map[string]exposition
}

type exposition struct {
	duration      time.Duration
	series, bytes int
	at            time.Time
}

var _ prometheus.Collector = (*expositionStats)(nil)

func newExpositionStats(now func() time.Time) *expositionStats {
	return &expositionStats{now: now, byShard: make(map[string]exposition)}
}

// record stores the figures of an exposition of shard that just ended.
func (e *expositionStats) record(shard string, duration time.Duration, series, bytes int) {
	now := e.now()
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.byShard[shard]; !ok && len(e.byShard) >= maxExpositionShards {
		e.expire(now)
		if len(e.byShard) >= maxExpositionShards {
			oldest := ""
			for k, v := range e.byShard {
				if oldest == "" || v.at.Before(e.byShard[oldest].at) {
					oldest = k
				}
			}
			delete(e.byShard, oldest)
		}
	}
	e.byShard[shard] = exposition{duration: duration, series: series, bytes: bytes, at: now}
}

// expire drops shards not scraped for expositionTTL; e.mu is held.
func (e *expositionStats) expire(now time.Time) {
	for k, v := range e.byShard {
		if now.Sub(v.at) > expositionTTL {
			delete(e.byShard, k)
		}
	}
}

func (e *expositionStats) Describe(ch chan<- *prometheus.Desc) {
	ch <- expositionDurationDesc
	ch <- expositionSeriesDesc
	ch <- expositionBytesDesc
}

func (e *expositionStats) Collect(ch chan<- prometheus.Metric) {
	e.mu.Lock()
	e.expire(e.now())
	shards := make(map[string]exposition, len(e.byShard))
	for k, v := range e.byShard {
		shards[k] = v
	}
	e.mu.Unlock()
	for shard, v := range shards {
		ch <- prometheus.MustNewConstMetric(expositionDurationDesc, prometheus.GaugeValue, v.duration.Seconds(), shard)
		ch <- prometheus.MustNewConstMetric(expositionSeriesDesc, prometheus.GaugeValue, float64(v.series), shard)
		ch <- prometheus.MustNewConstMetric(expositionBytesDesc, prometheus.GaugeValue, float64(v.bytes), shard)
	}
}
