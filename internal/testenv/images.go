package testenv

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/ociimage"
)

// Image references of the images this package builds.
const (
	BusyboxRef  = "docker.io/vigil/busybox:test"
	WorkloadRef = "docker.io/vigil/workload:test"
	// PauseRef is the CRI sandbox image every Instance is configured with
	// (busybox sleeping forever); import it into CRINamespace before the
	// first pod.
	PauseRef = "docker.io/vigil/pause:test"
	// healthcheckRepo is the repository of HealthcheckImage; the tag is a
	// hash of the healthcheck.
	healthcheckRepo = "docker.io/vigil/healthcheck"
	// stopSignalRepo is the repository of StopSignalImage; the tag is a hash
	// of the signal.
	stopSignalRepo = "docker.io/vigil/stopsignal"
	// CRINamespace is the containerd namespace of the CRI plugin.
	CRINamespace = "k8s.io"
	snapshotter  = "overlayfs"
)

// DockerHealthcheck is the Healthcheck of a Docker image config, as Docker
// writes it: durations are nanoseconds in JSON (time.Duration's encoding).
// Test is e.g. ["CMD-SHELL", "wget -q -O- http://127.0.0.1:8080/healthz"],
// ["CMD", "/workload", ...] or ["NONE"].
type DockerHealthcheck struct {
	Test          []string      `json:"Test,omitempty"`
	Interval      time.Duration `json:"Interval,omitempty"`
	Timeout       time.Duration `json:"Timeout,omitempty"`
	StartPeriod   time.Duration `json:"StartPeriod,omitempty"`
	StartInterval time.Duration `json:"StartInterval,omitempty"`
	Retries       int           `json:"Retries,omitempty"`
}

// imageDef describes an image to build as a Docker archive.
type imageDef struct {
	ref         string
	layers      []*layer
	entrypoint  []string
	cmd         []string
	env         []string
	healthcheck *DockerHealthcheck
	labels      map[string]string
	stopSignal  string
}

type layer struct {
	data   []byte // uncompressed tar
	diffID string // "sha256:..."
}

// imageImport is one image imported into one namespace (per instance). mu
// is held for the whole import, so that concurrent callers share it; done
// is set only after a success, so that a failed import is tried again.
type imageImport struct {
	mu   sync.Mutex
	done bool
}

// importTimeout bounds one import; it does not depend on the caller's
// context, since the import is shared with other callers.
const importTimeout = 2 * time.Minute

// BusyboxImage imports the busybox image (the host's static /bin/busybox and
// its applets in /bin; Cmd ["sh"]) into namespace and returns its reference,
// BusyboxRef. Idempotent and safe for concurrent use.
func (e *Env) BusyboxImage(tb testing.TB, namespace string) string {
	tb.Helper()
	return e.mustImport(tb, namespace, func() (imageDef, error) { return busyboxImage() })
}

// WorkloadImage imports the workload image (busybox plus /workload built
// from test/workload; Entrypoint ["/workload"], Cmd ["sleep"]) into
// namespace and returns WorkloadRef. Arguments given to RunContainer or a
// pod container replace the Cmd: Args{"serve", "--http", ":8080"}.
func (e *Env) WorkloadImage(tb testing.TB, namespace string) string {
	tb.Helper()
	return e.mustImport(tb, namespace, func() (imageDef, error) { return workloadImage(nil) })
}

// HealthcheckImage imports a workload image whose config carries hc and
// returns its reference (one tag per distinct hc).
func (e *Env) HealthcheckImage(tb testing.TB, namespace string, hc DockerHealthcheck) string {
	tb.Helper()
	return e.mustImport(tb, namespace, func() (imageDef, error) { return workloadImage(&hc) })
}

// StopSignalImage imports a busybox image whose config carries StopSignal
// sig (Docker's STOPSIGNAL: "SIGINT", "INT" or a number) and returns its
// reference (one tag per signal).
func (e *Env) StopSignalImage(tb testing.TB, namespace, sig string) string {
	tb.Helper()
	return e.mustImport(tb, namespace, func() (imageDef, error) {
		def, err := busyboxImage()
		if err != nil {
			return def, err
		}
		sum := sha256.Sum256([]byte(sig))
		def.ref = stopSignalRepo + ":" + hex.EncodeToString(sum[:6])
		def.stopSignal = sig
		return def, nil
	})
}

func (e *Env) mustImport(tb testing.TB, namespace string, build func() (imageDef, error)) string {
	tb.Helper()
	def, err := build()
	if err != nil {
		tb.Fatalf("testenv: build image: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.importImage(ctx, namespace, def); err != nil {
		tb.Fatalf("testenv: import %s into %s: %v", def.ref, namespace, err)
	}
	return def.ref
}

// importImage imports and unpacks def into namespace once per instance:
// once it succeeded, later calls return nil at once; after a failure the
// next call tries again. The import runs under ctx's values but not its
// cancellation or deadline (a cancelled caller must not fail the callers
// waiting on the same import), bounded by importTimeout instead. Blocks
// until the import ends. Safe for concurrent use.
func (e *Env) importImage(ctx context.Context, namespace string, def imageDef) error {
	e.mu.Lock()
	e.defs[def.ref] = def
	key := namespace + "\x00" + def.ref
	imp := e.images[key]
	if imp == nil {
		imp = &imageImport{}
		e.images[key] = imp
	}
	e.mu.Unlock()
	imp.mu.Lock()
	defer imp.mu.Unlock()
	if imp.done {
		return nil
	}
	ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), importTimeout)
	defer cancel()
	if err := importDef(namespaces.WithNamespace(ictx, namespace), e.harness, def); err != nil {
		return err
	}
	imp.done = true
	return nil
}

// importDef imports def into ctx's namespace and unpacks it for the
// overlayfs snapshotter. A second import of the same image is a no-op.
func importDef(ctx context.Context, c *client.Client, def imageDef) error {
	archive, err := def.dockerArchive()
	if err != nil {
		return err
	}
	imgs, err := c.Import(ctx, bytes.NewReader(archive))
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	for _, img := range imgs {
		if err := client.NewImage(c, img).Unpack(ctx, snapshotter); err != nil {
			return fmt.Errorf("unpack %s: %w", img.Name, err)
		}
	}
	return nil
}

// ImportImages builds the images named by refs (BusyboxRef, WorkloadRef,
// PauseRef; the workload binary is built from test/workload, so the working
// directory must be inside the repository) and imports and unpacks them
// into namespace of the containerd at address. Re-importing is a no-op.
// Other refs are refused with errdefs.ErrInvalid. Blocks until done or ctx
// ends.
func ImportImages(ctx context.Context, address, namespace string, refs ...string) error {
	defs := make([]imageDef, 0, len(refs))
	for _, ref := range refs {
		var def imageDef
		var err error
		switch ref {
		case BusyboxRef:
			def, err = busyboxImage()
		case WorkloadRef:
			def, err = workloadImage(nil)
		case PauseRef:
			def, err = pauseImage()
		default:
			return fmt.Errorf("testenv: image %q: want one of %s, %s, %s: %w", ref, BusyboxRef, WorkloadRef, PauseRef, errdefs.ErrInvalid)
		}
		if err != nil {
			return fmt.Errorf("build %s: %w", ref, err)
		}
		defs = append(defs, def)
	}
	c, err := client.New(address, client.WithTimeout(2*time.Second))
	if err != nil {
		return err
	}
	defer c.Close()
	for _, def := range defs {
		if err := importDef(namespaces.WithNamespace(ctx, namespace), c, def); err != nil {
			return fmt.Errorf("import %s into %s: %w", def.ref, namespace, err)
		}
	}
	return nil
}

// ensureImage imports ref into namespace if this package built it (for a
// test that imported it into another namespace); other refs are left to
// the caller.
func (e *Env) ensureImage(ctx context.Context, namespace, ref string) error {
	e.mu.Lock()
	def, ok := e.defs[ref]
	e.mu.Unlock()
	if !ok {
		return nil
	}
	return e.importImage(ctx, namespace, def)
}

var busyboxLayer struct {
	once sync.Once
	l    *layer
	err  error
}

func busyboxImage() (imageDef, error) {
	busyboxLayer.once.Do(func() { busyboxLayer.l, busyboxLayer.err = buildBusyboxLayer() })
	if busyboxLayer.err != nil {
		return imageDef{}, busyboxLayer.err
	}
	return imageDef{ref: BusyboxRef, layers: []*layer{busyboxLayer.l}, cmd: []string{"sh"}}, nil
}

// pauseImage is the CRI sandbox image: busybox sleeping forever.
func pauseImage() (imageDef, error) {
	def, err := busyboxImage()
	if err != nil {
		return def, err
	}
	def.ref = PauseRef
	def.entrypoint, def.cmd = []string{"/bin/sleep", "infinity"}, nil
	return def, nil
}

var workloadLayer struct {
	once sync.Once
	l    *layer
	err  error
}

func workloadImage(hc *DockerHealthcheck) (imageDef, error) {
	def, err := busyboxImage()
	if err != nil {
		return def, err
	}
	workloadLayer.once.Do(func() {
		bin, err := workloadBinary()
		if err != nil {
			workloadLayer.err = err
			return
		}
		var l ociimage.LayerBuilder
		l.File("workload", 0o755, bin)
		workloadLayer.l, workloadLayer.err = newLayer(l.Layer())
	})
	if workloadLayer.err != nil {
		return def, workloadLayer.err
	}
	def.ref = WorkloadRef
	def.layers = append(def.layers, workloadLayer.l)
	def.entrypoint, def.cmd = []string{"/workload"}, []string{"sleep"}
	if hc != nil {
		b, err := json.Marshal(hc)
		if err != nil {
			return def, err
		}
		sum := sha256.Sum256(b)
		def.ref = healthcheckRepo + ":" + hex.EncodeToString(sum[:6])
		def.healthcheck = hc
	}
	return def, nil
}

// buildBusyboxLayer makes a layer of the host's static busybox, a symlink in
// /bin for each of its applets, /etc/passwd, /etc/group and /tmp.
func buildBusyboxLayer() (*layer, error) {
	bin, err := os.ReadFile(busyboxPath)
	if err != nil {
		return nil, fmt.Errorf("read busybox: %w", err)
	}
	out, err := exec.Command(busyboxPath, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	applets := strings.Fields(string(out))
	sort.Strings(applets)
	var l ociimage.LayerBuilder
	for _, d := range []string{"bin", "etc", "root", "proc", "sys", "dev", "var", "usr", "usr/bin", "sbin"} {
		l.Dir(d, 0o755, 0, 0)
	}
	l.Dir("tmp", 0o1777, 0, 0)
	l.File("bin/busybox", 0o755, bin)
	for _, a := range applets {
		if a == "busybox" || strings.Contains(a, "/") {
			continue
		}
		l.Symlink("bin/"+a, "busybox")
	}
	l.File("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"))
	l.File("etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n"))
	return newLayer(l.Layer())
}

// newLayer keeps a layer built by ociimage (sorted entries, fixed times:
// reproducible, so a second import of the same image is a no-op) with its
// diff ID.
func newLayer(l ociimage.Layer, err error) (*layer, error) {
	if err != nil {
		return nil, err
	}
	return &layer{data: l.Tar, diffID: l.DiffID().String()}, nil
}

// dockerConfig is the part of a Docker image config this package writes.
type dockerConfig struct {
	Architecture string          `json:"architecture"`
	OS           string          `json:"os"`
	Created      time.Time       `json:"created"`
	Config       dockerRunConfig `json:"config"`
	RootFS       struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

type dockerRunConfig struct {
	Entrypoint  []string           `json:"Entrypoint,omitempty"`
	Cmd         []string           `json:"Cmd,omitempty"`
	Env         []string           `json:"Env,omitempty"`
	WorkingDir  string             `json:"WorkingDir,omitempty"`
	Labels      map[string]string  `json:"Labels,omitempty"`
	Healthcheck *DockerHealthcheck `json:"Healthcheck,omitempty"`
	StopSignal  string             `json:"StopSignal,omitempty"`
}

// dockerArchive renders the image as `docker save` does: manifest.json, the
// config, and one tar per layer.
func (d imageDef) dockerArchive() ([]byte, error) {
	if len(d.layers) == 0 {
		return nil, fmt.Errorf("image %s has no layers", d.ref)
	}
	cfg := dockerConfig{Architecture: runtime.GOARCH, OS: "linux", Created: ociimage.Epoch}
	cfg.Config = dockerRunConfig{
		Entrypoint:  d.entrypoint,
		Cmd:         d.cmd,
		Env:         d.env,
		WorkingDir:  "/",
		Labels:      d.labels,
		Healthcheck: d.healthcheck,
		StopSignal:  d.stopSignal,
	}
	if len(cfg.Config.Env) == 0 {
		cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	cfg.RootFS.Type = "layers"
	for _, l := range d.layers {
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.diffID)
	}
	cb, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	csum := sha256.Sum256(cb)
	configName := hex.EncodeToString(csum[:]) + ".json"

	var t ociimage.LayerBuilder
	var layerNames []string
	for _, l := range d.layers {
		name := path.Join(strings.TrimPrefix(l.diffID, "sha256:"), "layer.tar")
		t.File(name, 0o644, l.data)
		layerNames = append(layerNames, name)
	}
	t.File(configName, 0o644, cb)
	manifest := []map[string]any{{
		"Config":   configName,
		"RepoTags": []string{strings.TrimPrefix(d.ref, "docker.io/")},
		"Layers":   layerNames,
	}}
	mb, err := json.Marshal(manifest)
	if err != nil {
		return nil, err
	}
	t.File("manifest.json", 0o644, mb)
	archive, err := t.Layer()
	return archive.Tar, err
}
