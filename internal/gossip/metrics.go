package gossip

import (
	"github.com/vigilhq/vigil/internal/metrics"
)

// The agent's self-metrics about gossip. Label values are bounded: state
// is one of alive, suspect, dead, left; transport is udp or tcp.
var (
	membersDesc = metrics.NewDesc("vigil_agent_gossip_members",
		"Peers in this agent's gossip view, by state (the agent itself not counted).", metrics.GaugeType, "state")
	txBytesDesc = metrics.NewDesc("vigil_agent_gossip_transmit_bytes_total",
		"Gossip bytes sent, by transport (udp: probes and gossip; tcp: joins and push/pull syncs).", metrics.CounterType, "transport")
	rxBytesDesc = metrics.NewDesc("vigil_agent_gossip_receive_bytes_total",
		"Gossip bytes received, by transport.", metrics.CounterType, "transport")
	txPacketsDesc = metrics.NewDesc("vigil_agent_gossip_transmit_packets_total",
		"Gossip UDP packets sent.", metrics.CounterType)
	rxPacketsDesc = metrics.NewDesc("vigil_agent_gossip_receive_packets_total",
		"Gossip UDP packets received.", metrics.CounterType)
	streamsDesc = metrics.NewDesc("vigil_agent_gossip_streams_total",
		"Gossip TCP streams opened, dialed or accepted.", metrics.CounterType)
	joinsDesc = metrics.NewDesc("vigil_agent_gossip_joins_total",
		"Joins of the gossip cluster, by result (ok: a seed answered; failed: none did).", metrics.CounterType, "result")
	eventDropsDesc = metrics.NewDesc("vigil_agent_gossip_event_drops_total",
		"Membership events dropped because the queue to the view was full; each overflow rebuilds the view.", metrics.CounterType)
	resyncsDesc = metrics.NewDesc("vigil_agent_gossip_resyncs_total",
		"Rebuilds of the gossip view from the member list after dropped events.", metrics.CounterType)
	conflictsDesc = metrics.NewDesc("vigil_agent_gossip_name_conflicts_total",
		"Times two addresses claimed one member name (a node back with a new address before its old self was declared dead, or a misconfiguration).", metrics.CounterType)
	keyReloadsDesc = metrics.NewDesc("vigil_agent_gossip_key_reloads_total",
		"Reloads of the gossip key file that changed the keyring, by result (ok, error: the keys in use stayed).", metrics.CounterType, "result")
	isolatedDesc = metrics.NewDesc("vigil_agent_gossip_isolated",
		"1 while this agent finds itself Isolated: its stream to the aggregator down and no gossip peer answering its probes (it then refuses remote commands).", metrics.GaugeType)
	healthDesc = metrics.NewDesc("vigil_agent_gossip_health_score",
		"memberlist's awareness score: 0 is healthy; higher means this agent misses its own probes' deadlines (a slow or overloaded node) and stretches its timeouts.", metrics.GaugeType)
)

var _ metrics.Collector = (*Member)(nil)

// Collect writes the member's self-metrics (register the Member on the
// agent's self-metrics registry). Safe at any time; before Run it writes
// the view (empty) and zero counters.
func (m *Member) Collect(w *metrics.Writer) {
	counts := map[State]int{}
	m.mu.RLock()
	for _, v := range m.views {
		counts[v.State]++
	}
	m.mu.RUnlock()
	for _, s := range []State{StateAlive, StateSuspect, StateDead, StateLeft} {
		w.Sample(membersDesc, float64(counts[s]), s.String())
	}
	tr := m.Traffic()
	w.Sample(txBytesDesc, float64(tr.PacketBytesSent), "udp")
	w.Sample(txBytesDesc, float64(tr.StreamBytesSent), "tcp")
	w.Sample(rxBytesDesc, float64(tr.PacketBytesReceived), "udp")
	w.Sample(rxBytesDesc, float64(tr.StreamBytesReceived), "tcp")
	w.Sample(txPacketsDesc, float64(tr.PacketsSent))
	w.Sample(rxPacketsDesc, float64(tr.PacketsReceived))
	w.Sample(streamsDesc, float64(tr.StreamsOpened))
	w.Sample(joinsDesc, float64(m.stats.joins.Load()), "ok")
	w.Sample(joinsDesc, float64(m.stats.joinFailures.Load()), "failed")
	w.Sample(eventDropsDesc, float64(m.stats.eventsDropped.Load()))
	w.Sample(resyncsDesc, float64(m.stats.resyncs.Load()))
	w.Sample(conflictsDesc, float64(m.stats.conflicts.Load()))
	w.Sample(keyReloadsDesc, float64(m.stats.keyReloads.Load()), "ok")
	w.Sample(keyReloadsDesc, float64(m.stats.keyReloadErrors.Load()), "error")
	score := 0
	if ml := m.ml.Load(); ml != nil {
		score = ml.GetHealthScore()
	}
	w.Sample(healthDesc, float64(score))
	isolated := 0.0
	if m.isolated.Load() {
		isolated = 1
	}
	w.Sample(isolatedDesc, isolated)
}
