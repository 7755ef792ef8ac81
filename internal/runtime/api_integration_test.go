package runtime

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/testenv"
)

// leased is ctx in namespace ns with a containerd lease held until the test
// ends, so that the blobs the test writes outlive garbage collection.
func leased(t *testing.T, c *client.Client, ns string) context.Context {
	t.Helper()
	ctx, done, err := c.WithLease(namespaces.WithNamespace(context.Background(), ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = done(context.WithoutCancel(ctx)) })
	return ctx
}

// writeBlob stores b in c's content store and returns its descriptor.
func writeBlob(t *testing.T, ctx context.Context, c *client.Client, mediaType string, b []byte) ocispec.Descriptor {
	t.Helper()
	d := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}
	if err := content.WriteBlob(ctx, c.ContentStore(), "vigil-test-"+d.Digest.Encoded(), bytes.NewReader(b), d); err != nil {
		t.Fatal(err)
	}
	return d
}

func withPlatform(d ocispec.Descriptor, os, arch string) ocispec.Descriptor {
	d.Platform = &ocispec.Platform{OS: os, Architecture: arch}
	return d
}

// TestImageIndexHealthcheck: the healthcheck of an image whose target is an
// index is read from the manifest for this node's platform, whatever the
// index's order, past a manifest the content store does not have.
func TestImageIndexHealthcheck(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	ns := uniqueNS(t)
	refLocal := env.HealthcheckImage(t, ns, testenv.DockerHealthcheck{Test: []string{"CMD", "/workload", "exit", "0"}, Retries: 7})
	refForeign := env.HealthcheckImage(t, ns, testenv.DockerHealthcheck{Test: []string{"CMD", "/workload", "exit", "0"}, Retries: 8})
	c := env.Client(t)
	ctx := leased(t, c, ns)
	imgLocal, err := c.ImageService().Get(ctx, refLocal)
	if err != nil {
		t.Fatal(err)
	}
	imgForeign, err := c.ImageService().Get(ctx, refForeign)
	if err != nil {
		t.Fatal(err)
	}
	missing := ocispec.Descriptor{MediaType: imgLocal.Target.MediaType, Digest: digest.FromString("never stored"), Size: 512}
	idx, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     ocispec.MediaTypeImageIndex,
		"manifests": []ocispec.Descriptor{
			withPlatform(imgForeign.Target, "linux", foreignArch()),
			withPlatform(missing, "linux", runtime.GOARCH),
			withPlatform(imgLocal.Target, "linux", runtime.GOARCH),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	idxDesc := writeBlob(t, ctx, c, ocispec.MediaTypeImageIndex, idx)
	const tag = "docker.io/vigil/multi-platform:test"
	if _, err := c.ImageService().Create(ctx, images.Image{Name: tag, Target: idxDesc}); err != nil {
		t.Fatal(err)
	}

	w := startRuntime(t, env, Config{Namespaces: []string{ns}})
	cont, err := c.NewContainer(ctx, "indexed", client.WithImageName(tag), client.WithNewSpec(oci.WithDefaultSpec()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cont.Delete(context.WithoutCancel(ctx)) })
	got := w.waitForKey(container.Key{Namespace: ns, ID: "indexed"}, EventAdded).Container
	if got.ImageDigest != idxDesc.Digest.String() {
		t.Errorf("ImageDigest = %q, want the index's %s", got.ImageDigest, idxDesc.Digest)
	}
	if got.Healthcheck == nil || got.Healthcheck.Retries != 7 {
		t.Errorf("Healthcheck = %+v, want the %s manifest's (retries 7)", got.Healthcheck, runtime.GOARCH)
	}
}

// TestImageBlobLimits reads blobs from containerd's content store as the
// image resolution does: sizes and digests are checked, and a blob over
// the limit is refused.
func TestImageBlobLimits(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	ns := uniqueNS(t)
	c := env.Client(t)
	ctx := leased(t, c, ns)
	api, err := dial(env.Address, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()

	smallB := []byte(`{"architecture":"` + runtime.GOARCH + `","os":"linux","config":{"Healthcheck":{"Test":["CMD","true"],"Retries":9}}}`)
	small := writeBlob(t, ctx, c, ocispec.MediaTypeImageConfig, smallB)
	bigB := bytes.Repeat([]byte{' '}, maxImageBlob+1)
	big := writeBlob(t, ctx, c, ocispec.MediaTypeImageConfig, bigB)
	blob := func(d ocispec.Descriptor) blobDesc {
		return blobDesc{mediaType: d.MediaType, digest: d.Digest.String(), size: d.Size}
	}

	if b, err := readBlob(ctx, api.content, blob(small)); err != nil || !bytes.Equal(b, smallB) {
		t.Errorf("small blob: %q, %v", b, err)
	}
	for name, tc := range map[string]struct {
		d    blobDesc
		want string
	}{
		"over the limit":          {blob(big), "limit"},
		"over the limit, unsized": {blobDesc{digest: big.Digest.String()}, "more than"},
		"size too small":          {blobDesc{digest: small.Digest.String(), size: small.Size - 1}, "digest"},
		"size too large":          {blobDesc{digest: small.Digest.String(), size: small.Size + 10}, "descriptor says"},
		"bad digest":              {blobDesc{digest: "sha256:../../etc/passwd", size: 10}, "digest"},
	} {
		_, err := readBlob(ctx, api.content, tc.d)
		if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want ErrInvalid mentioning %q", name, err, tc.want)
		}
	}
	if _, err := readBlob(ctx, api.content, blobDesc{digest: digest.FromString("absent").String(), size: 6}); !errors.Is(translateErr(err), errdefs.ErrNotFound) {
		t.Errorf("absent blob: err = %v, want not found", err)
	}

	// Through a manifest: a config over the limit is refused, one within
	// it is read.
	manifest := func(cfg ocispec.Descriptor) blobDesc {
		b, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": ocispec.MediaTypeImageManifest, "config": cfg, "layers": []any{}})
		if err != nil {
			t.Fatal(err)
		}
		return blob(writeBlob(t, ctx, c, ocispec.MediaTypeImageManifest, b))
	}
	fetch := func(ctx context.Context, d blobDesc) ([]byte, error) { return readBlob(ctx, api.content, d) }
	if cfg, err := resolveImageConfig(ctx, fetch, manifest(small), imagePlatform()); err != nil || !bytes.Equal(cfg, smallB) {
		t.Errorf("manifest with a small config: %q, %v", cfg, err)
	}
	if _, err := resolveImageConfig(ctx, fetch, manifest(big), imagePlatform()); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("manifest with a config over the limit: err = %v, want ErrInvalid", err)
	}
}

// TestRestartIntoLogDir: a task that someone deleted is replaced by Restart
// (without RequireTask) with one whose output goes to LogDir. The task
// closes its stdout before it writes to stderr: with a file:// URI, the shim
// closed the file when stdout ended, and stderr was lost.
func TestRestartIntoLogDir(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	ns := uniqueNS(t)
	image := env.BusyboxImage(t, ns)
	logDir := t.TempDir()
	w := startRuntime(t, env, Config{Namespaces: []string{ns}, LogDir: logDir})
	env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "logged", Image: image, Args: []string{"sh", "-c", "echo to-the-log; exec 1>&-; sleep 0.2; echo err-too >&2"}})
	k := container.Key{Namespace: ns, ID: "logged"}
	w.waitForKey(k, EventExited)
	env.DeleteTask(t, ns, "logged")
	w.waitForKey(k, EventTaskDeleted)

	if err := w.Restart(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	if ev := w.waitForKey(k, EventExited); ev.Exit.Reason != ExitCompleted {
		t.Errorf("restarted run: %+v", ev.Exit)
	}
	logFile := filepath.Join(logDir, ns, "logged.log")
	// The copy of the task's output into the file may trail its exit on a
	// loaded machine; the wait is generous, and a failure shows the file.
	var got []byte
	eventually(t, 20*time.Second, "restarted run's output in "+logFile, func() bool {
		got, _ = os.ReadFile(logFile)
		return strings.Count(string(got), "to-the-log") == 1 && strings.Count(string(got), "err-too") == 1
	}, func() string { return fmt.Sprintf("the file holds %q", got) })
	if b, _ := os.ReadFile(env.LogPathOf(ns, "logged")); strings.Count(string(b), "to-the-log") != 1 {
		t.Errorf("first run's log has %q, want the first run's output only", b)
	}
}

// TestStopPaused: Paused tells a paused task from a running one as soon as
// the pause is made (before its event); Stop resumes a paused task before
// signalling it.
func TestStopPaused(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	ns := uniqueNS(t)
	image := env.BusyboxImage(t, ns)
	w := startRuntime(t, env, Config{Namespaces: []string{ns}})
	_, task := env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "frozen", Image: image, Args: []string{"sleep", "600"}})
	k := container.Key{Namespace: ns, ID: "frozen"}
	w.waitForKey(k, EventStarted)
	paused := func(want bool) {
		t.Helper()
		if got, err := w.Paused(context.Background(), k); err != nil || got != want {
			t.Fatalf("Paused: %v, %v; want %v", got, err, want)
		}
	}
	paused(false)
	ctx := namespaces.WithNamespace(context.Background(), ns)
	for range 2 { // and again after a resume
		if err := task.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		paused(true)
		w.waitForKey(k, EventPaused)
		if err := task.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		paused(false)
		w.waitForKey(k, EventResumed)
	}
	if err := task.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	w.waitForKey(k, EventPaused)
	if _, err := w.Paused(context.Background(), container.Key{Namespace: ns, ID: "nope"}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Paused of a missing container: %v", err)
	}
	if err := w.Stop(context.Background(), k, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if ev := w.waitForKey(k, EventExited); ev.Exit.Signal != "KILL" {
		t.Errorf("Stop of a paused task: exit %+v, want KILL after the grace period", ev.Exit)
	}
	if err := w.Stop(context.Background(), container.Key{Namespace: ns, ID: "nope"}, time.Second); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Stop of a missing container: %v", err)
	}
}
