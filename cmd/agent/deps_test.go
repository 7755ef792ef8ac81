package main

import (
	"testing"

	"github.com/vigilhq/vigil/internal/testenv"
)

// TestReleaseBuildLeavesOutHeavyPackages guards the agent's memory: on
// kernels that map page-cache folios whole, nearly all of the binary is
// resident, so every package linked costs RSS on every node. These are
// packages the agent never uses that a dependency would otherwise drag in
// (docs/benchmarks.md#agent-memory).
func TestReleaseBuildLeavesOutHeavyPackages(t *testing.T) {
	deps := map[string]bool{}
	for _, p := range testenv.ReleaseDeps(t) {
		deps[p] = true
	}
	if !deps["google.golang.org/grpc"] {
		t.Fatal("go list -deps did not list grpc; is this the agent?")
	}
	for pkg, why := range map[string]string{
		"golang.org/x/net/trace":                         "grpc's request tracing (build with -tags grpcnotrace)",
		"net/http/pprof":                                 "profiling endpoints (only with -tags pprof)",
		"github.com/containerd/containerd/v2/client":     "containerd's client (internal/runtime uses the API stubs)",
		"go.opentelemetry.io/otel":                       "OpenTelemetry, which containerd's client links",
		"github.com/klauspost/compress/zstd":             "image layer compression, which containerd's image helpers link",
		"github.com/prometheus/client_golang/prometheus": "client_golang's registry (the agent's self-metrics are internal/metrics)",
		"github.com/prometheus/common/expfmt":            "Prometheus's exposition library, which client_golang links",
		"github.com/prometheus/procfs":                   "client_golang's process collector",
	} {
		if deps[pkg] {
			t.Errorf("the release agent links %s: %s", pkg, why)
		}
	}
	// Linked on purpose, at a measured cost: keep the reason current.
	for pkg, why := range map[string]string{
		// It was on the list above (its reflection keeps every exported
		// method in the binary) until gossip: memberlist's msgpack codec
		// (github.com/hashicorp/go-msgpack/v2/codec) imports net/rpc,
		// which imports it, with no build tag to leave it out. memberlist
		// and all it links added 3.2 MB to the binary
		// (docs/benchmarks.md#agent-memory).
		"html/template": "through memberlist's msgpack codec and net/rpc",
	} {
		if deps[pkg] {
			t.Logf("the release agent links %s %s", pkg, why)
		}
	}
}
