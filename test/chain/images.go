package chain

// Docker archives of the harness's test images, for the demo's containerd
// (see the note at the top of containerd.go).

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/client"
)

type image struct {
	ref        string
	layers     [][]byte
	entrypoint []string
	cmd        []string
}

// buildImages returns busybox, workload and pause, as internal/testenv
// builds them.
func buildImages(workloadBin string) ([]image, error) {
	bb, err := busyboxLayer()
	if err != nil {
		return nil, err
	}
	wl, err := os.ReadFile(workloadBin)
	if err != nil {
		return nil, fmt.Errorf("workload binary: %w", err)
	}
	var t tarball
	t.file("workload", 0o755, wl)
	wlLayer, err := t.close()
	if err != nil {
		return nil, err
	}
	return []image{
		{ref: BusyboxRef, layers: [][]byte{bb}, cmd: []string{"sh"}},
		{ref: WorkloadRef, layers: [][]byte{bb, wlLayer}, entrypoint: []string{"/workload"}, cmd: []string{"sleep"}},
		{ref: PauseRef, layers: [][]byte{bb}, entrypoint: []string{"/bin/sleep", "infinity"}},
	}, nil
}

// busyboxLayer holds the host's static busybox with a /bin symlink per
// applet, /etc/passwd, /etc/group and the usual directories.
func busyboxLayer() ([]byte, error) {
	bin, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("read busybox (install busybox-static): %w", err)
	}
	out, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	var t tarball
	for _, d := range []string{"bin", "etc", "root", "proc", "sys", "dev", "var", "usr", "usr/bin", "sbin"} {
		t.add(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}, nil)
	}
	t.add(&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777}, nil)
	t.file("bin/busybox", 0o755, bin)
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" && !strings.Contains(a, "/") {
			t.add(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777}, nil)
		}
	}
	t.file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"))
	t.file("etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n"))
	return t.close()
}

// epoch stamps every file: builds are reproducible, a re-import is a no-op.
var epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// tarball builds a tar in memory; the first error sticks.
type tarball struct {
	buf bytes.Buffer
	tw  *tar.Writer
	err error
}

func (t *tarball) add(h *tar.Header, data []byte) {
	if t.tw == nil {
		t.tw = tar.NewWriter(&t.buf)
	}
	if t.err != nil {
		return
	}
	h.ModTime, h.Format = epoch, tar.FormatPAX
	if t.err = t.tw.WriteHeader(h); t.err == nil && len(data) > 0 {
		_, t.err = t.tw.Write(data)
	}
}

func (t *tarball) file(name string, mode int64, data []byte) {
	t.add(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data))}, data)
}

func (t *tarball) close() ([]byte, error) {
	if t.tw == nil {
		t.tw = tar.NewWriter(&t.buf)
	}
	if t.err != nil {
		return nil, t.err
	}
	if err := t.tw.Close(); err != nil {
		return nil, err
	}
	return t.buf.Bytes(), nil
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// archive renders img as `docker save` does.
func (img image) archive() ([]byte, error) {
	type runConfig struct {
		Entrypoint []string `json:"Entrypoint,omitempty"`
		Cmd        []string `json:"Cmd,omitempty"`
		Env        []string `json:"Env"`
		WorkingDir string   `json:"WorkingDir"`
	}
	cfg := struct {
		Architecture string    `json:"architecture"`
		OS           string    `json:"os"`
		Created      time.Time `json:"created"`
		Config       runConfig `json:"config"`
		RootFS       struct {
			Type    string   `json:"type"`
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}{Architecture: runtime.GOARCH, OS: "linux", Created: epoch}
	cfg.Config = runConfig{Entrypoint: img.entrypoint, Cmd: img.cmd, WorkingDir: "/",
		Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}}
	cfg.RootFS.Type = "layers"
	var t tarball
	var names []string
	for _, l := range img.layers {
		d := digest(l)
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, "sha256:"+d)
		t.file(d+"/layer.tar", 0o644, l)
		names = append(names, d+"/layer.tar")
	}
	cb, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	configName := digest(cb) + ".json"
	t.file(configName, 0o644, cb)
	mb, err := json.Marshal([]map[string]any{{
		"Config": configName, "RepoTags": []string{strings.TrimPrefix(img.ref, "docker.io/")}, "Layers": names,
	}})
	if err != nil {
		return nil, err
	}
	t.file("manifest.json", 0o644, mb)
	return t.close()
}

// importArchive imports and unpacks img in ctx's namespace.
func importArchive(ctx context.Context, cl *client.Client, img image) error {
	b, err := img.archive()
	if err != nil {
		return err
	}
	imgs, err := cl.Import(ctx, bytes.NewReader(b))
	if err != nil {
		return err
	}
	for _, i := range imgs {
		if err := client.NewImage(cl, i).Unpack(ctx, "overlayfs"); err != nil {
			return fmt.Errorf("unpack %s: %w", i.Name, err)
		}
	}
	return nil
}
