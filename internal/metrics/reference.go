package metrics

import (
	"fmt"
	"strings"
)

// FamilyDoc describes one family of the fleet exposition for the metrics
// reference (docs/metrics.md, generated from it and checked by a test).
type FamilyDoc struct {
	Name, Type, Help string
	// Labels are the series' labels beyond the identity ones.
	Labels string
	// Replaces is the cAdvisor or kube-state-metrics family it stands for
	// ("" when it has none).
	Replaces string
}

// identityLabels are on every per-container series.
const identityLabels = "node, namespace, pod_namespace, pod, container"

// reference holds what families.go does not: the labels and the family
// each one ports. Every family must have an entry (TestReference).
var reference = [numFamilies]struct{ labels, replaces string }{
	famContainerInfo:               {identityLabels + ", container_id, image, image_id", "kube_pod_container_info (kube-state-metrics)"},
	famContainerRunning:            {identityLabels, "kube_pod_container_status_running"},
	famCPUUsage:                    {identityLabels, "container_cpu_usage_seconds_total (cAdvisor)"},
	famCPUThrottled:                {identityLabels, "container_cpu_cfs_throttled_seconds_total"},
	famCPUPeriods:                  {identityLabels, "container_cpu_cfs_periods_total"},
	famCPUThrottledPeriods:         {identityLabels, "container_cpu_cfs_throttled_periods_total"},
	famSpecCPUQuota:                {identityLabels, "container_spec_cpu_quota (µs; this is / 1e6)"},
	famSpecCPUPeriod:               {identityLabels, "container_spec_cpu_period (µs; this is / 1e6)"},
	famSpecCPUShares:               {identityLabels, "container_spec_cpu_shares"},
	famMemWorkingSet:               {identityLabels, "container_memory_working_set_bytes"},
	famMemRSS:                      {identityLabels, "container_memory_rss"},
	famMemCache:                    {identityLabels, "container_memory_cache"},
	famMemSwap:                     {identityLabels, "container_memory_swap"},
	famMemLimit:                    {identityLabels, "container_spec_memory_limit_bytes"},
	famSpecMemReservation:          {identityLabels, "container_spec_memory_reservation_limit_bytes"},
	famMemFailcnt:                  {identityLabels, "container_memory_failcnt"},
	famMemEvents:                   {identityLabels + ", event", ""},
	famPids:                        {identityLabels, "container_processes / container_threads"},
	famPidsLimit:                   {identityLabels, "container_threads_max"},
	famFsUsage:                     {identityLabels, "container_fs_usage_bytes (the writable layer only)"},
	famFsReadBytes:                 {identityLabels, "container_fs_reads_bytes_total (summed over device)"},
	famFsWriteBytes:                {identityLabels, "container_fs_writes_bytes_total (summed over device)"},
	famFsReads:                     {identityLabels, "container_fs_reads_total (summed over device)"},
	famFsWrites:                    {identityLabels, "container_fs_writes_total (summed over device)"},
	famOOM:                         {identityLabels, "container_oom_events_total"},
	famExits:                       {identityLabels + ", reason, exit_code", ""},
	famRestarts:                    {identityLabels, "kube_pod_container_status_restarts_total"},
	famBackoff:                     {identityLabels, ""},
	famCrashLooping:                {identityLabels, "kube_pod_container_status_waiting_reason{reason=\"CrashLoopBackOff\"}"},
	famGaveUp:                      {identityLabels, ""},
	famLastTerminated:              {identityLabels + ", reason", "kube_pod_container_status_last_terminated_reason"},
	famHealth:                      {identityLabels + ", status", "kube_pod_container_status_ready (roughly)"},
	famHealthBlame:                 {identityLabels + ", blame", ""},
	famProbeFailures:               {identityLabels, "prober_probe_total{result=\"failed\"} (kubelet)"},
	famNetRxBytes:                  {identityLabels + ", interface", "container_network_receive_bytes_total"},
	famNetRxPackets:                {identityLabels + ", interface", "container_network_receive_packets_total"},
	famNetRxErrors:                 {identityLabels + ", interface", "container_network_receive_errors_total"},
	famNetRxDropped:                {identityLabels + ", interface", "container_network_receive_packets_dropped_total"},
	famNetTxBytes:                  {identityLabels + ", interface", "container_network_transmit_bytes_total"},
	famNetTxPackets:                {identityLabels + ", interface", "container_network_transmit_packets_total"},
	famNetTxErrors:                 {identityLabels + ", interface", "container_network_transmit_errors_total"},
	famNetTxDropped:                {identityLabels + ", interface", "container_network_transmit_packets_dropped_total"},
	famNetCondition:                {identityLabels + ", interface, condition, status", "(new; kube_node_status_condition's form)"},
	famNodeUp:                      {"node", "up (of a node's scrape target)"},
	famNodeNetRxBytes:              {"node, interface", "node_network_receive_bytes_total (node_exporter)"},
	famNodeNetRxPackets:            {"node, interface", "node_network_receive_packets_total"},
	famNodeNetRxErrors:             {"node, interface", "node_network_receive_errs_total"},
	famNodeNetRxDropped:            {"node, interface", "node_network_receive_drop_total"},
	famNodeNetTxBytes:              {"node, interface", "node_network_transmit_bytes_total"},
	famNodeNetTxPackets:            {"node, interface", "node_network_transmit_packets_total"},
	famNodeNetTxErrors:             {"node, interface", "node_network_transmit_errs_total"},
	famNodeNetTxDropped:            {"node, interface", "node_network_transmit_drop_total"},
	famNodeNetUp:                   {"node, interface", "node_network_up"},
	famNodeNetCarrierChanges:       {"node, interface", "node_network_carrier_changes_total"},
	famNodePeerReachable:           {"node, peer", ""},
	famNodeCondition:               {"node, condition, status", "kube_node_status_condition"},
	famNodeNetCondition:            {"node, interface, condition, status", "(new; kube_node_status_condition's form)"},
	famNodeAgentBuffered:           {"node", ""},
	famNodeAgentBufferCapacity:     {"node", ""},
	famNodeAgentDropped:            {"node", ""},
	famNodeAgentReconnects:         {"node", ""},
	famNodeAgentStateWriteFailures: {"node", ""},
	famNodeAgentStateRecovered:     {"node, from", ""},
	famNodeAgentCPU:                {"node", "process_cpu_seconds_total of the agent's own target"},
	famNodeAgentRSS:                {"node", "process_resident_memory_bytes of the agent's own target"},
	famNodeAgentRuntimeLatency:     {"node", ""},
	famNodeAgentRuntimeRecoveries:  {"node", ""},
	famNodeAgentCollectionDuration: {"node", ""},
	famNodeAgentNetnsHandles:       {"node", ""},
}

// Reference returns every family of the fleet exposition, in exposition
// order, with its labels and the family it ports.
func Reference() []FamilyDoc {
	out := make([]FamilyDoc, 0, numFamilies)
	for i, f := range families {
		r := reference[i]
		out = append(out, FamilyDoc{Name: f.name, Type: f.typ, Help: f.help, Labels: r.labels, Replaces: r.replaces})
	}
	return out
}

// ReferenceMarkdown renders Reference as the table of docs/metrics.md.
func ReferenceMarkdown() string {
	var b strings.Builder
	b.WriteString("| family | type | labels | meaning | replaces |\n| --- | --- | --- | --- | --- |\n")
	for _, d := range Reference() {
		replaces := d.Replaces
		if replaces == "" {
			replaces = "(new)"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s |\n", d.Name, d.Type, d.Labels, strings.ReplaceAll(d.Help, "|", "\\|"), replaces)
	}
	return b.String()
}
