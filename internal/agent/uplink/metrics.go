package uplink

import (
	"github.com/vigilhq/vigil/internal/metrics"
)

// Metric descriptions. The kind label takes the eight message kinds
// (snapshot, container_event, resource_samples, network_samples,
// network_event, node_status, peer_view, command_result); reason takes the
// four snapshot reasons.
var (
	descBuffered = metrics.NewDesc("vigil_agent_uplink_buffer_messages",
		"Messages held until the aggregator acknowledges them.", metrics.GaugeType)
	descCapacity = metrics.NewDesc("vigil_agent_uplink_buffer_capacity_messages",
		"Capacity of the uplink buffer.", metrics.GaugeType)
	descDropped = metrics.NewDesc("vigil_agent_uplink_dropped_messages_total",
		"Messages lost because the uplink buffer was full; a lost state change is repaired by a fresh snapshot.", metrics.CounterType, "kind")
	descCoalesced = metrics.NewDesc("vigil_agent_uplink_coalesced_messages_total",
		"Messages replaced by a newer one of the same kind before they were acknowledged (samples, node status, peer view).", metrics.CounterType, "kind")
	descSuperseded = metrics.NewDesc("vigil_agent_uplink_superseded_messages_total",
		"Held messages not sent because a snapshot carrying their content replaced them.", metrics.CounterType)
	descOversized = metrics.NewDesc("vigil_agent_uplink_oversized_messages_total",
		"Messages refused because they exceed the message size limit.", metrics.CounterType, "kind")
	descSnapshots = metrics.NewDesc("vigil_agent_uplink_snapshots_total",
		"Snapshots sent, by why they were sent.", metrics.CounterType, "reason")
	descReconnects = metrics.NewDesc("vigil_agent_uplink_reconnects_total",
		"Streams to the aggregator that ended and were dialed again.", metrics.CounterType)
	descConnected = metrics.NewDesc("vigil_agent_uplink_connected",
		"1 while a stream to the aggregator is established, else 0.", metrics.GaugeType)
	descSent = metrics.NewDesc("vigil_agent_uplink_sent_messages_total",
		"Messages written to the stream, resends included.", metrics.CounterType, "kind")
	descSentBytes = metrics.NewDesc("vigil_agent_uplink_sent_bytes_total",
		"Encoded bytes of the messages written to the stream, resends included.", metrics.CounterType, "kind")
	descAckLag = metrics.NewDesc("vigil_agent_uplink_ack_lag_seconds",
		"Time between writing a message and receiving its acknowledgement, for the last acknowledgement.", metrics.GaugeType)
	descAcked = metrics.NewDesc("vigil_agent_uplink_acknowledged_sequence",
		"Highest sequence number the aggregator acknowledged (restarts at 0 with the agent).", metrics.GaugeType)
	descCommands = metrics.NewDesc("vigil_agent_uplink_commands_received_total",
		"Commands received from the aggregator.", metrics.CounterType)
	descCommandsRefused = metrics.NewDesc("vigil_agent_uplink_commands_refused_total",
		"Commands answered as failed because the command queue was full.", metrics.CounterType)
)

// Collector returns a collector of the uplink's metrics, built at scrape
// time from its current figures. Register it on the agent's registry.
func (u *Uplink) Collector() metrics.Collector { return collector{u} }

type collector struct{ u *Uplink }

func (c collector) Collect(w *metrics.Writer) {
	u := c.u
	u.mu.Lock()
	s := u.stats
	s.snapshots = make(map[string]uint64, len(u.stats.snapshots))
	for k, v := range u.stats.snapshots {
		s.snapshots[k] = v
	}
	buffered, capacity, acked := len(u.buf.entries), u.buf.capacity, u.buf.acked
	u.mu.Unlock()

	gauge := w.Sample
	counter := func(d *metrics.Desc, v uint64, labels ...string) { w.Sample(d, float64(v), labels...) }
	gauge(descBuffered, float64(buffered))
	gauge(descCapacity, float64(capacity))
	for k := kind(0); k < numKinds; k++ {
		counter(descDropped, s.dropped[k], k.String())
		counter(descOversized, s.oversized[k], k.String())
		counter(descSent, s.sent[k], k.String())
		counter(descSentBytes, s.sentBytes[k], k.String())
		if k.latestWins() {
			counter(descCoalesced, s.coalesced[k], k.String())
		}
	}
	counter(descSuperseded, s.superseded)
	for _, r := range snapshotReasons {
		counter(descSnapshots, s.snapshots[r], r)
	}
	counter(descReconnects, s.reconnects)
	connected := 0.0
	if u.connected.Load() {
		connected = 1
	}
	gauge(descConnected, connected)
	gauge(descAckLag, s.ackLag.Seconds())
	gauge(descAcked, float64(acked))
	counter(descCommands, s.commandsReceived)
	counter(descCommandsRefused, s.commandsRefused)
}

// The certificate keeper's metrics (only an agent that bootstraps its
// certificate has them).
var (
	descCertExpiry = metrics.NewDesc("vigil_agent_node_certificate_expiry_timestamp_seconds",
		"When the node's current certificate expires (its not-after), in unix seconds; 0 before the first one is obtained.", metrics.GaugeType)
	descCertRenewalFailures = metrics.NewDesc("vigil_agent_node_certificate_renewal_failures_total",
		"Renewals of the node certificate that failed (each is retried with backoff until the certificate expires).", metrics.CounterType)
)

// Collector returns a collector of the keeper's metrics, built at scrape
// time. Register it on the agent's registry.
func (k *Keeper) Collector() metrics.Collector { return keeperCollector{k} }

type keeperCollector struct{ k *Keeper }

func (c keeperCollector) Collect(w *metrics.Writer) {
	w.Sample(descCertExpiry, float64(c.k.notAfter.Load()))
	w.Sample(descCertRenewalFailures, float64(c.k.renewFailures.Load()))
}
