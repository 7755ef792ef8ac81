// Package e2e tests Vigil's whole data path on one machine, through the
// user's interfaces only: the real vigil-agent and vigil-aggregator binaries
// (built by the test) run as processes on a private containerd, Debian's
// Prometheus scrapes the aggregator, and the test asks Prometheus (PromQL
// over its HTTP API) and vigilctl what happened. It drives the same code as
// `make demo` (test/chain).
package e2e
