package ociimage_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/ociimage"
	"github.com/vigilhq/vigil/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// readTar returns a tar's headers and contents in order.
func readTar(t *testing.T, b []byte) ([]*tar.Header, map[string][]byte) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	var hdrs []*tar.Header
	files := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return hdrs, files
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		hdrs = append(hdrs, h)
		files[h.Name] = data
	}
}

func TestLayerIsSortedAndReproducible(t *testing.T) {
	var a, b ociimage.LayerBuilder
	a.File("usr/bin/tool", 0o755, []byte("tool"))
	a.Dir("var/lib/x", 0o700, 65532, 65532)
	a.Symlink("bin", "usr/bin")
	a.File("/etc/passwd", 0o644, []byte("root:x:0:0::/:/sbin/nologin\n"))
	// The same entries in another order.
	b.File("etc/passwd", 0o644, []byte("root:x:0:0::/:/sbin/nologin\n"))
	b.Symlink("bin", "usr/bin")
	b.Dir("var/lib/x/", 0o700, 65532, 65532)
	b.File("usr/bin/tool", 0o755, []byte("tool"))
	la, err := a.Layer()
	if err != nil {
		t.Fatal(err)
	}
	lb, err := b.Layer()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(la.Tar, lb.Tar) || la.DiffID() != lb.DiffID() {
		t.Fatal("the same entries in another order gave another layer")
	}
	hdrs, files := readTar(t, la.Tar)
	var names []string
	for _, h := range hdrs {
		names = append(names, h.Name)
		if !h.ModTime.Equal(ociimage.Epoch) {
			t.Errorf("%s: mtime %v, want %v", h.Name, h.ModTime, ociimage.Epoch)
		}
		if h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: owner names %q/%q, want none", h.Name, h.Uname, h.Gname)
		}
	}
	want := []string{"bin", "etc/", "etc/passwd", "usr/", "usr/bin/", "usr/bin/tool", "var/", "var/lib/", "var/lib/x/"}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("entries %q, want %q (sorted, parents made)", names, want)
	}
	if !sort.StringsAreSorted(names) {
		t.Errorf("entries not sorted: %q", names)
	}
	if string(files["usr/bin/tool"]) != "tool" {
		t.Errorf("usr/bin/tool holds %q", files["usr/bin/tool"])
	}
	for _, h := range hdrs {
		if h.Name == "var/lib/x/" && (h.Uid != 65532 || h.Gid != 65532 || h.Mode != 0o700) {
			t.Errorf("var/lib/x: %d:%d %o, want 65532:65532 700", h.Uid, h.Gid, h.Mode)
		}
	}
}

func TestLayerRefusesEscapes(t *testing.T) {
	for _, name := range []string{"../etc/passwd", "/", "a/../../b"} {
		var l ociimage.LayerBuilder
		l.File(name, 0o644, nil)
		if _, err := l.Layer(); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("entry %q: err %v, want ErrInvalid", name, err)
		}
	}
}

func testImage(t *testing.T, uncompressed bool) ociimage.Image {
	t.Helper()
	var l ociimage.LayerBuilder
	l.File("hello", 0o755, []byte("#!/not/a/shell\n"))
	layer, err := l.Layer()
	if err != nil {
		t.Fatal(err)
	}
	return ociimage.Image{
		Name:         "example.com/vigil/test:v1",
		Layers:       []ociimage.Layer{layer},
		Config:       ocispec.ImageConfig{Entrypoint: []string{"/hello"}, User: "65532:65532"},
		Annotations:  map[string]string{"b": "2", "a": "1"},
		Uncompressed: uncompressed,
	}
}

// TestLayout reads a written layout back as an image consumer does: the
// layout marker, index.json naming the image, each blob under its digest,
// the manifest, the config and its diff ids matching the layers.
func TestLayout(t *testing.T) {
	for _, uncompressed := range []bool{false, true} {
		img := testImage(t, uncompressed)
		var buf bytes.Buffer
		d, err := img.WriteLayout(&buf)
		if err != nil {
			t.Fatal(err)
		}
		var again bytes.Buffer
		if _, err := img.WriteLayout(&again); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf.Bytes(), again.Bytes()) {
			t.Fatal("two writes of the same image differ")
		}
		_, files := readTar(t, buf.Bytes())
		blob := func(dg digest.Digest) []byte {
			t.Helper()
			b, ok := files["blobs/sha256/"+dg.Encoded()]
			if !ok {
				t.Fatalf("no blob %s", dg)
			}
			if digest.FromBytes(b) != dg {
				t.Fatalf("blob %s holds content of digest %s", dg, digest.FromBytes(b))
			}
			return b
		}
		var layout ocispec.ImageLayout
		if err := json.Unmarshal(files["oci-layout"], &layout); err != nil || layout.Version != "1.0.0" {
			t.Fatalf("oci-layout %q: %v", files["oci-layout"], err)
		}
		var index ocispec.Index
		if err := json.Unmarshal(files["index.json"], &index); err != nil {
			t.Fatal(err)
		}
		if len(index.Manifests) != 1 || index.Manifests[0].Digest != d.Manifest.Digest {
			t.Fatalf("index %+v, want one manifest %s", index.Manifests, d.Manifest.Digest)
		}
		ann := index.Manifests[0].Annotations
		if ann["io.containerd.image.name"] != img.Name || ann[ocispec.AnnotationRefName] != "v1" {
			t.Errorf("index annotations %v", ann)
		}
		var m ocispec.Manifest
		if err := json.Unmarshal(blob(d.Manifest.Digest), &m); err != nil {
			t.Fatal(err)
		}
		var cfg ocispec.Image
		if err := json.Unmarshal(blob(m.Config.Digest), &cfg); err != nil {
			t.Fatal(err)
		}
		if cfg.Created == nil || !cfg.Created.Equal(ociimage.Epoch) || cfg.Architecture != "amd64" || cfg.OS != "linux" {
			t.Errorf("config created %v arch %s os %s", cfg.Created, cfg.Architecture, cfg.OS)
		}
		if cfg.Config.User != "65532:65532" || cfg.Config.Entrypoint[0] != "/hello" {
			t.Errorf("run config %+v", cfg.Config)
		}
		if len(m.Layers) != 1 || len(cfg.RootFS.DiffIDs) != 1 {
			t.Fatalf("%d layers, %d diff ids", len(m.Layers), len(cfg.RootFS.DiffIDs))
		}
		data := blob(m.Layers[0].Digest)
		if uncompressed {
			if m.Layers[0].MediaType != ocispec.MediaTypeImageLayer {
				t.Errorf("media type %s", m.Layers[0].MediaType)
			}
		} else {
			if m.Layers[0].MediaType != ocispec.MediaTypeImageLayerGzip {
				t.Errorf("media type %s", m.Layers[0].MediaType)
			}
			zr, err := gzip.NewReader(bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			if data, err = io.ReadAll(zr); err != nil {
				t.Fatal(err)
			}
		}
		if digest.FromBytes(data) != cfg.RootFS.DiffIDs[0] {
			t.Errorf("layer's diff id %s, config says %s", digest.FromBytes(data), cfg.RootFS.DiffIDs[0])
		}
	}
}

func TestImageRefused(t *testing.T) {
	img := testImage(t, false)
	img.Name = ""
	if _, err := img.WriteLayout(io.Discard); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("no name: %v", err)
	}
	img = testImage(t, false)
	img.Layers = nil
	if _, err := img.WriteLayout(io.Discard); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("no layers: %v", err)
	}
}

// TestCtrImportsAndRuns imports a layout tarball with `ctr images import`
// into the private containerd, checks the image's name and digest there,
// and runs a container of it: the host's static busybox as the entrypoint,
// as a user of the image would.
func TestCtrImportsAndRuns(t *testing.T) {
	e := testenv.Containerd(t)
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skipf("no static busybox: %v", err)
	}
	var l ociimage.LayerBuilder
	l.File("bin/busybox", 0o755, bb)
	l.File("etc/passwd", 0o644, []byte("nonroot:x:65532:65532::/:/sbin/nologin\n"))
	layer, err := l.Layer()
	if err != nil {
		t.Fatal(err)
	}
	img := ociimage.Image{
		Name:   "ghcr.io/vigilhq/ociimage-test:v1",
		Layers: []ociimage.Layer{layer},
		Config: ocispec.ImageConfig{Entrypoint: []string{"/bin/busybox"}, Cmd: []string{"id"}, User: "65532:65532"},
	}
	path := filepath.Join(t.TempDir(), "image.tar")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	d, err := img.WriteLayout(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	const ns = "vigil-ociimage-test"
	out, err := exec.Command("ctr", "--address", e.Address, "--namespace", ns, "images", "import", path).CombinedOutput()
	if err != nil {
		t.Fatalf("ctr images import: %v\n%s", err, out)
	}
	out, err = exec.Command("ctr", "--address", e.Address, "--namespace", ns, "images", "ls").CombinedOutput()
	if err != nil {
		t.Fatalf("ctr images ls: %v\n%s", err, out)
	}
	var listed bool
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == img.Name && f[2] == d.Manifest.Digest.String() {
			listed = true
		}
	}
	if !listed {
		t.Fatalf("ctr images ls does not list %s at %s:\n%s", img.Name, d.Manifest.Digest, out)
	}
	ctr, _ := e.RunContainer(t, testenv.ContainerSpec{Namespace: ns, Image: img.Name})
	// The task may exit before a Wait is in place: wait for its output.
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(readFile(e.LogPathOf(ns, ctr.ID())), "uid=") {
		if time.Now().After(deadline) {
			t.Fatalf("container printed nothing in 30s; log: %q", readFile(e.LogPathOf(ns, ctr.ID())))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := readFile(e.LogPathOf(ns, ctr.ID())); !strings.Contains(got, "uid=65532(nonroot)") {
		t.Fatalf("container ran `id` as %q, want uid=65532(nonroot) (the image's User and its /etc/passwd)", got)
	}
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}
