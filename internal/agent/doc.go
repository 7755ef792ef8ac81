// Package agent wires the node side of Vigil together: runtime inventory and
// events, health checks, restart policies, resource and network sampling, the
// state dir that keeps lifetime counters across restarts, and the stream to
// the aggregator.
//
// Its files follow its jobs: dispatch.go is the decision loop (one
// goroutine, never waiting on containerd, netlink or the disk);
// decide.go holds every lifecycle rule as a pure function from a
// container's domain state and an event to a decision, tested row by row in
// decide_test.go (each row names the integration test that proves the same
// rule against a real containerd); lifecycle.go and recovery.go apply those
// decisions to live events and to what the agent finds at start-up
// (interrupted restarts, reboots, exits and deletes while it was down);
// apply.go has the interfaces the apply steps act through (taskControl,
// prober, reporter) and the restart's apply step; persistence.go is the
// state dir as the loop uses it (changes in memory, committed in groups by
// the flusher; command replies that must be durable first); commands.go
// the aggregator's commands, at most once; healthwire.go, report.go and
// sampler.go health, reporting and sampling; convert.go the one place where
// domain types become the protocol's.
package agent
