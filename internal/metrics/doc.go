// Package metrics renders Vigil's Prometheus exposition: the per-container and
// per-node series of the fleet (pre-rendered and sharded by node) and the
// self-metrics of the agent and the aggregator.
package metrics
