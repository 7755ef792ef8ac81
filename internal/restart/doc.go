// Package restart decides restart policies and backoff: it parses the
// vigil.io/restart-* labels and turns exits, health changes and operator stops
// into decisions. It does no I/O; the agent carries the decisions out.
package restart
