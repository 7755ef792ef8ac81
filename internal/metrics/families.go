package metrics

import vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"

// family is one metric family of the fleet exposition.
type family struct {
	name string
	typ  string
	help string
}

// Indexes into families. The order is the order of the exposition.
const (
	famContainerInfo = iota
	famContainerRunning
	famCPUUsage
	famCPUThrottled
	famCPUPeriods
	famCPUThrottledPeriods
	famSpecCPUQuota
	famSpecCPUPeriod
	famSpecCPUShares
	famMemWorkingSet
	famMemRSS
	famMemCache
	famMemSwap
	famMemLimit
	famSpecMemReservation
	famMemFailcnt
	famMemEvents
	famPids
	famPidsLimit
	famFsUsage
	famFsReadBytes
	famFsWriteBytes
	famFsReads
	famFsWrites
	famOOM
	famExits
	famRestarts
	famBackoff
	famCrashLooping
	famGaveUp
	famLastTerminated
	famHealth
	famHealthBlame
	famProbeFailures
	famNetRxBytes
	famNetRxPackets
	famNetRxErrors
	famNetRxDropped
	famNetTxBytes
	famNetTxPackets
	famNetTxErrors
	famNetTxDropped
	famNetCondition
	famNodeUp
	famNodeNetRxBytes
	famNodeNetRxPackets
	famNodeNetRxErrors
	famNodeNetRxDropped
	famNodeNetTxBytes
	famNodeNetTxPackets
	famNodeNetTxErrors
	famNodeNetTxDropped
	famNodeNetUp
	famNodeNetCarrierChanges
	famNodePeerReachable
	famNodeCondition
	famNodeNetCondition
	famNodeAgentBuffered
	famNodeAgentBufferCapacity
	famNodeAgentDropped
	famNodeAgentReconnects
	famNodeAgentStateWriteFailures
	famNodeAgentStateRecovered
	famNodeAgentCPU
	famNodeAgentRSS
	famNodeAgentRuntimeLatency
	famNodeAgentRuntimeRecoveries
	famNodeAgentCollectionDuration
	famNodeAgentNetnsHandles
	numFamilies
)

var families = [numFamilies]family{
	famContainerInfo:               {"vigil_container_info", "gauge", "Container identity: always 1; container_id, image and image_id (the image's digest, as cAdvisor and kube-state-metrics name it) are labels of this series only."},
	famContainerRunning:            {"vigil_container_running", "gauge", "1 when the container's task is running (or paused), 0 otherwise."},
	famCPUUsage:                    {"vigil_container_cpu_usage_seconds_total", "counter", "CPU time used by the container's cgroup, user and system, in seconds."},
	famCPUThrottled:                {"vigil_container_cpu_cfs_throttled_seconds_total", "counter", "Time the container's cgroup was throttled by the CFS quota, in seconds."},
	famCPUPeriods:                  {"vigil_container_cpu_cfs_periods_total", "counter", "CFS enforcement periods elapsed for the container's cgroup; only while it has a CPU quota."},
	famCPUThrottledPeriods:         {"vigil_container_cpu_cfs_throttled_periods_total", "counter", "CFS periods in which the container's cgroup was throttled; only while it has a CPU quota."},
	famSpecCPUQuota:                {"vigil_container_spec_cpu_quota_seconds", "gauge", "CPU time the container's cgroup may use per CFS period, in seconds (cAdvisor's container_spec_cpu_quota is in microseconds); only while it has a quota."},
	famSpecCPUPeriod:               {"vigil_container_spec_cpu_period_seconds", "gauge", "CFS period of the container's cgroup, in seconds (cAdvisor's is in microseconds); only while it has a CPU quota. Quota over period is the limit in cores."},
	famSpecCPUShares:               {"vigil_container_spec_cpu_shares", "gauge", "CPU shares of the container's cgroup (cgroup v2 cpu.weight converted to shares as cAdvisor does); only when not the kernel's default (1024 shares, weight 100)."},
	famMemWorkingSet:               {"vigil_container_memory_working_set_bytes", "gauge", "Memory usage minus inactive file cache, as the kubelet computes it."},
	famMemRSS:                      {"vigil_container_memory_rss_bytes", "gauge", "Anonymous memory of the container's cgroup."},
	famMemCache:                    {"vigil_container_memory_cache_bytes", "gauge", "Page cache of the container's cgroup (v1 total_cache, v2 file)."},
	famMemSwap:                     {"vigil_container_memory_swap_bytes", "gauge", "Swap used by the container's cgroup; only when non-zero."},
	famMemLimit:                    {"vigil_container_memory_limit_bytes", "gauge", "Memory limit of the container's cgroup; 0 when unlimited."},
	famSpecMemReservation:          {"vigil_container_spec_memory_reservation_limit_bytes", "gauge", "Memory reservation of the container's cgroup (v1 memory.soft_limit_in_bytes, v2 memory.low); only when set."},
	famMemFailcnt:                  {"vigil_container_memory_failcnt_total", "counter", "Times the container's cgroup hit its memory limit (v1 memory.failcnt, v2 memory.events max); only while it has a limit."},
	famMemEvents:                   {"vigil_container_memory_events_total", "counter", "cgroup v2 memory.events of the container by event: high (usage went over memory.high and was throttled), oom (the OOM killer was invoked); each only once non-zero. max is vigil_container_memory_failcnt_total, oom_kill vigil_container_oom_events_total."},
	famPids:                        {"vigil_container_pids", "gauge", "Processes and threads in the container's cgroup."},
	famPidsLimit:                   {"vigil_container_pids_limit", "gauge", "Most processes and threads the container's cgroup may hold (pids.max); only when limited."},
	famFsUsage:                     {"vigil_container_fs_usage_bytes", "gauge", "Disk space used by the container's writable layer (what it wrote into its root filesystem), measured less often than the other series (a walk of the layer); only once measured."},
	famFsReadBytes:                 {"vigil_container_fs_reads_bytes_total", "counter", "Bytes read from block devices by the container's cgroup, all devices summed; the four block I/O series only once the cgroup did block I/O."},
	famFsWriteBytes:                {"vigil_container_fs_writes_bytes_total", "counter", "Bytes written to block devices by the container's cgroup, all devices summed."},
	famFsReads:                     {"vigil_container_fs_reads_total", "counter", "Read operations on block devices by the container's cgroup, all devices summed."},
	famFsWrites:                    {"vigil_container_fs_writes_total", "counter", "Write operations on block devices by the container's cgroup, all devices summed."},
	famOOM:                         {"vigil_container_oom_events_total", "counter", "OOM kill events of the workload, counted by the agent over the workload's lifetime."},
	famExits:                       {"vigil_container_exits_total", "counter", "Task exits of the workload by reason and exit code, counted by the agent over the workload's lifetime."},
	famRestarts:                    {"vigil_container_restarts_total", "counter", "Restarts of the workload performed by Vigil or observed from its owner."},
	famBackoff:                     {"vigil_container_restart_backoff_seconds", "gauge", "Current restart backoff delay of the container; 0 when none."},
	famCrashLooping:                {"vigil_container_crash_looping", "gauge", "1 while the agent restarts the container with a growing backoff because it keeps exiting soon after it starts, 0 otherwise."},
	famGaveUp:                      {"vigil_container_restart_gave_up", "gauge", "1 when the container's restart policy reached its limit (on-failure:N) and the agent no longer restarts it, 0 otherwise."},
	famLastTerminated:              {"vigil_container_last_terminated_reason", "gauge", "1 for the reason the container's task last ended (completed, error, signal, oom_killed, unknown), as kube-state-metrics' kube_pod_container_status_last_terminated_reason; absent until it first ended."},
	famHealth:                      {"vigil_container_health_status", "gauge", "Health-check status of the container: 1 for the current status, 0 for the others; absent for a container without a health check."},
	famHealthBlame:                 {"vigil_container_health_blame", "gauge", "1 while the container's failing health check (vigil_container_health_status{status=\"unhealthy\"} 1) is blamed on something other than the container, by blame: node_network (its TCP or HTTP probe of the pod's address fails from its node, but the agent's gossip peers on other nodes reach that address: the node's network is broken, not the container; the agent does not restart it for that, and the aggregator's remediation refuses to restart, kill or stop it on an alert, suppressed as node_network). Only while it holds. Exclude it from alerts that act on unhealthy containers: ... unless on(node,namespace,pod_namespace,pod,container) vigil_container_health_blame."},
	famProbeFailures:               {"vigil_container_health_probe_failures_total", "counter", "Failed health probes of the workload, not counting those within its start period (as Docker counts them)."},
	famNetRxBytes:                  {"vigil_container_network_receive_bytes_total", "counter", "Bytes received on an interface of the container's (or pod's) network namespace."},
	famNetRxPackets:                {"vigil_container_network_receive_packets_total", "counter", "Packets received on an interface of the container's (or pod's) network namespace."},
	famNetRxErrors:                 {"vigil_container_network_receive_errors_total", "counter", "Receive errors on an interface of the container's (or pod's) network namespace."},
	famNetRxDropped:                {"vigil_container_network_receive_packets_dropped_total", "counter", "Received packets dropped on an interface of the container's (or pod's) network namespace."},
	famNetTxBytes:                  {"vigil_container_network_transmit_bytes_total", "counter", "Bytes sent on an interface of the container's (or pod's) network namespace."},
	famNetTxPackets:                {"vigil_container_network_transmit_packets_total", "counter", "Packets sent on an interface of the container's (or pod's) network namespace."},
	famNetTxErrors:                 {"vigil_container_network_transmit_errors_total", "counter", "Transmit errors on an interface of the container's (or pod's) network namespace."},
	famNetTxDropped:                {"vigil_container_network_transmit_packets_dropped_total", "counter", "Transmitted packets dropped on an interface of the container's (or pod's) network namespace."},
	famNetCondition:                {"vigil_container_network_condition", "gauge", "1 while a network condition holds in the container's (or pod's) network namespace (LinkDown, NoDefaultRoute, MTUMismatch, ErrorsRising, DropsRising), with interface=\"\" for a condition of the whole namespace; only status=\"true\" is rendered, and only while the condition holds (the false and unknown series of kube-state-metrics' form would be 15 series of zeros per container)."},
	famNodeUp:                      {"vigil_node_up", "gauge", "1 while the node's agent stream is connected and reporting, 0 when it is stale or down."},
	famNodeNetRxBytes:              {"vigil_node_network_receive_bytes_total", "counter", "Bytes received on a host interface."},
	famNodeNetRxPackets:            {"vigil_node_network_receive_packets_total", "counter", "Packets received on a host interface."},
	famNodeNetRxErrors:             {"vigil_node_network_receive_errors_total", "counter", "Receive errors on a host interface."},
	famNodeNetRxDropped:            {"vigil_node_network_receive_packets_dropped_total", "counter", "Received packets dropped on a host interface."},
	famNodeNetTxBytes:              {"vigil_node_network_transmit_bytes_total", "counter", "Bytes sent on a host interface."},
	famNodeNetTxPackets:            {"vigil_node_network_transmit_packets_total", "counter", "Packets sent on a host interface."},
	famNodeNetTxErrors:             {"vigil_node_network_transmit_errors_total", "counter", "Transmit errors on a host interface."},
	famNodeNetTxDropped:            {"vigil_node_network_transmit_packets_dropped_total", "counter", "Transmitted packets dropped on a host interface."},
	famNodeNetUp:                   {"vigil_node_network_up", "gauge", "1 when the host interface is operationally up."},
	famNodeNetCarrierChanges:       {"vigil_node_network_carrier_changes_total", "counter", "Carrier changes of a host interface since it was created."},
	famNodePeerReachable:           {"vigil_node_peer_reachable", "gauge", "1 when the observing node's gossip sees the peer alive, 0 otherwise."},
	famNodeCondition:               {"vigil_node_condition", "gauge", "1 for the node condition's current status (true, false or unknown), as kube-state-metrics' kube_node_status_condition: Healthy, AggregatorPartitioned, NodeDown, Isolated from the stream and the gossip peers' views; RuntimeAvailable (containerd answers) and RuntimeHung (its calls time out, as opposed to its socket being gone) from the agent."},
	famNodeNetCondition:            {"vigil_node_network_condition", "gauge", "1 while a network condition holds on a host interface (LinkDown: up but operationally down, MTUMismatch, ErrorsRising, DropsRising); only status=\"true\", only while it holds."},
	famNodeAgentBuffered:           {"vigil_node_agent_buffer_messages", "gauge", "Messages waiting in the node agent's buffer for the aggregator's acknowledgement, as the agent last reported."},
	famNodeAgentBufferCapacity:     {"vigil_node_agent_buffer_capacity_messages", "gauge", "Capacity of the node agent's buffer of unacknowledged messages."},
	famNodeAgentDropped:            {"vigil_node_agent_dropped_messages_total", "counter", "Messages the node agent dropped because its buffer was full (lost on the way up; the agent's vigil_agent_uplink_dropped_messages_total, since the agent started)."},
	famNodeAgentReconnects:         {"vigil_node_agent_reconnects_total", "counter", "Reconnects of the node agent's stream to an aggregator, since the agent started."},
	famNodeAgentStateWriteFailures: {"vigil_node_agent_state_write_failures_total", "counter", "Failed writes of the node agent's state dir since the agent started (kept in memory and retried); rising means counters and restart state are not reaching the disk."},
	famNodeAgentStateRecovered:     {"vigil_node_agent_state_recovered", "gauge", "1 when the node agent's state came, at its start, from the last good copy (from=\"last-good\": the last durable write; marks written since without fsync may be missing) or from nothing (from=\"empty\": its counters restarted from zero); absent when the state file was read."},
	famNodeAgentCPU:                {"vigil_node_agent_cpu_seconds_total", "counter", "CPU time the node agent process used, user and system, in seconds."},
	famNodeAgentRSS:                {"vigil_node_agent_resident_memory_bytes", "gauge", "Resident memory of the node agent process."},
	famNodeAgentRuntimeLatency:     {"vigil_node_agent_runtime_latency_seconds", "gauge", "Latency of the node agent's last successful containerd call (a containerd that hangs shows here and, once it stops answering, as RuntimeAvailable false)."},
	famNodeAgentRuntimeRecoveries:  {"vigil_node_agent_runtime_recoveries_total", "counter", "Times the node agent's connection to containerd came back after being up, since the agent started (not the agent's vigil_agent_runtime_reconnects_total, which counts every failed or retried attempt): containerd restarted, or came back after a hang or a lost socket (alert on increase(...[10m]) > 0 for \"containerd restarted\")."},
	famNodeAgentCollectionDuration: {"vigil_node_agent_collection_duration_seconds", "gauge", "Duration of the node agent's last resource collection cycle."},
	famNodeAgentNetnsHandles:       {"vigil_node_agent_netns_handles", "gauge", "Network namespace handles the node agent holds open."},
}

// conditionNames are the condition label values of the network
// condition families, by the protocol's type. A type this build does not
// know is not rendered (label values stay bounded).
var conditionNames = map[vigilv1.ConditionType]string{
	vigilv1.ConditionType_CONDITION_TYPE_LINK_DOWN:        "LinkDown",
	vigilv1.ConditionType_CONDITION_TYPE_NO_DEFAULT_ROUTE: "NoDefaultRoute",
	vigilv1.ConditionType_CONDITION_TYPE_MTU_MISMATCH:     "MTUMismatch",
	vigilv1.ConditionType_CONDITION_TYPE_ERRORS_RISING:    "ErrorsRising",
	vigilv1.ConditionType_CONDITION_TYPE_DROPS_RISING:     "DropsRising",
}

// stateRecoveredFrom are the values of vigil_node_agent_state_recovered's
// from label; another value from an agent is not rendered.
var stateRecoveredFrom = [...]string{"last-good", "empty"}

// healthBlames are the blame label values of vigil_container_health_blame,
// by the protocol's value. A blame this build does not know is not
// rendered (label values stay bounded).
var healthBlames = map[vigilv1.HealthBlame]string{
	vigilv1.HealthBlame_HEALTH_BLAME_NODE_NETWORK: "node_network",
}

// healthStatuses are the label values of vigil_container_health_status, one
// series each (like kube-state-metrics' status series).
// A container without a health check has none ("none" is not rendered:
// it would always be 0 beside the others).
var healthStatuses = [...]string{"starting", "healthy", "unhealthy"}
