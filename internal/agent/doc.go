// Package agent wires the node side of Vigil together: runtime inventory and
// events, health checks, restart policies, resource and network sampling, the
// state dir that keeps lifetime counters across restarts, and the stream to
// the aggregator.
package agent
