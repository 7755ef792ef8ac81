package deploy

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigilhq/vigil/internal/testenv"
)

// TestReleaseImagesReproducible builds the release binaries twice, into two
// directories, as `make build` does, and their images with cmd/vigil-image:
// the two builds give the same image digests. (The image tool alone is
// tested for byte-identical output in cmd/vigil-image; this covers the
// binaries too: -trimpath, no cgo, and no path or time in the output.)
func TestReleaseImagesReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the release binaries twice")
	}
	tool := filepath.Join(t.TempDir(), "vigil-image")
	testenv.BuildRelease(t, "github.com/vigilhq/vigil/cmd/vigil-image", tool)
	digests := make([]string, 2)
	for i := range digests {
		bin := t.TempDir()
		for name, pkg := range map[string]string{"vigil-agent": "cmd/agent", "vigil-aggregator": "cmd/aggregator", "vigilctl": "cmd/vigilctl"} {
			testenv.BuildRelease(t, "github.com/vigilhq/vigil/"+pkg, filepath.Join(bin, name))
		}
		out, err := exec.Command(tool, "-bin", bin, "-out", t.TempDir()).CombinedOutput()
		if err != nil {
			t.Fatalf("vigil-image: %v\n%s", err, out)
		}
		var ds []string
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			f := strings.Fields(l)
			if len(f) != 3 || !strings.HasPrefix(f[2], "sha256:") {
				t.Fatalf("vigil-image printed %q", l)
			}
			ds = append(ds, f[1]+" "+f[2])
		}
		digests[i] = strings.Join(ds, "\n")
	}
	if digests[0] != digests[1] {
		t.Fatalf("two builds gave different images:\n%s\n---\n%s", digests[0], digests[1])
	}
	t.Logf("both builds:\n%s", digests[0])
}
