package main

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/vigilhq/vigil/internal/testenv"
)

// TestReleaseBuildLeavesOutHeavyPackages guards the agent's memory: on
// kernels that map page-cache folios whole, nearly all of the binary is
// resident, so every package linked costs RSS on every node. These are
// packages the agent never uses that a dependency would otherwise drag in
// (docs/benchmarks.md#agent-memory).
func TestReleaseBuildLeavesOutHeavyPackages(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool on PATH")
	}
	args := append([]string{"list", "-deps"}, testenv.BuildFlags...)
	out, err := exec.Command(goTool, append(args, ".")...).CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := map[string]bool{}
	for _, p := range strings.Fields(string(out)) {
		deps[p] = true
	}
	if !deps["google.golang.org/grpc"] {
		t.Fatalf("go list -deps did not list grpc; is this the agent?\n%s", out)
	}
	for pkg, why := range map[string]string{
		"golang.org/x/net/trace": "grpc's request tracing (build with -tags grpcnotrace)",
		"html/template":          "its reflection keeps every exported method in the binary",
		"net/http/pprof":         "profiling endpoints (only with -tags pprof)",
	} {
		if deps[pkg] {
			t.Errorf("the release agent links %s: %s", pkg, why)
		}
	}
}
