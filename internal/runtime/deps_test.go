package runtime

import (
	"strings"
	"testing"

	"github.com/vigilhq/vigil/internal/testenv"
)

// TestDepsLeaveOutContainerdClient guards the agent's memory: the package
// talks to containerd through its gRPC API stubs, and must not link
// containerd's client package or what it drags in (on kernels that map
// page-cache folios whole, every linked package costs RSS on every node).
// The test harness (internal/testenv) may use the client: test imports are
// not listed.
func TestDepsLeaveOutContainerdClient(t *testing.T) {
	deps := testenv.ReleaseDeps(t)
	found := false
	for _, p := range deps {
		found = found || p == "github.com/containerd/containerd/api/services/tasks/v1"
	}
	if !found {
		t.Fatalf("go list -deps did not list containerd's tasks API; is this the runtime package?\n%s", strings.Join(deps, "\n"))
	}
	for _, p := range deps {
		for prefix, why := range map[string]string{
			"github.com/containerd/containerd/v2/client": "containerd's client (the package uses the API stubs)",
			"github.com/containerd/containerd/v2/core/":  "containerd's core helpers (images pulls klauspost/compress)",
			"go.opentelemetry.io/":                       "OpenTelemetry (containerd's client traces every call)",
			"github.com/klauspost/compress":              "compression for image layers",
			"archive/tar":                                "image layer archives",
		} {
			if p == prefix || strings.HasPrefix(p, prefix) {
				t.Errorf("the runtime package links %s: %s", p, why)
			}
		}
	}
}
