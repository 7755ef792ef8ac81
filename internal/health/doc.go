// Package health runs container health checks (exec, HTTP, TCP and gRPC probes,
// the network ones inside the container's network namespace) and keeps each
// container's health state machine, with Docker's semantics.
package health
