package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/vigilhq/vigil/internal/errdefs"
)

// fakeBinaries writes an ELF-looking file per binary into a temp dir.
func fakeBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, b := range binaries {
		if err := os.WriteFile(filepath.Join(dir, b), []byte("\x7fELF fake "+b), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestReproducible builds the three images twice into two directories: the
// same binaries give byte-identical tarballs, hence the same digests.
func TestReproducible(t *testing.T) {
	bin := fakeBinaries(t)
	var out1, out2 bytes.Buffer
	o1, o2 := t.TempDir(), t.TempDir()
	if err := run(context.Background(), []string{"-bin", bin, "-out", o1}, &out1, io.Discard); err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), []string{"-bin", bin, "-out", o2}, &out2, io.Discard); err != nil {
		t.Fatal(err)
	}
	if strings.ReplaceAll(out1.String(), o1, "") != strings.ReplaceAll(out2.String(), o2, "") {
		t.Errorf("digests differ:\n%s\n%s", out1.String(), out2.String())
	}
	for _, b := range binaries {
		a, err := os.ReadFile(filepath.Join(o1, b+".tar"))
		if err != nil {
			t.Fatal(err)
		}
		c, err := os.ReadFile(filepath.Join(o2, b+".tar"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, c) {
			t.Errorf("%s.tar differs between two builds", b)
		}
	}
	if n := strings.Count(out1.String(), "sha256:"); n != 3 {
		t.Errorf("printed %d digests, want 3:\n%s", n, out1.String())
	}
}

// TestImageContents reads each image's config and layer: the entrypoint,
// the user (nonroot but for the agent), and no shell or anything but the
// binary, passwd, group and directories.
func TestImageContents(t *testing.T) {
	bin := fakeBinaries(t)
	out := t.TempDir()
	if err := run(context.Background(), []string{"-bin", bin, "-out", out, "-tag", "v9"}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, b := range binaries {
		files := untar(t, mustRead(t, filepath.Join(out, b+".tar")))
		var index ocispec.Index
		mustJSON(t, files["index.json"], &index)
		if got := index.Manifests[0].Annotations["io.containerd.image.name"]; got != "ghcr.io/vigilhq/"+b+":v9" {
			t.Errorf("%s: image name %q", b, got)
		}
		var m ocispec.Manifest
		mustJSON(t, files["blobs/sha256/"+index.Manifests[0].Digest.Encoded()], &m)
		var cfg ocispec.Image
		mustJSON(t, files["blobs/sha256/"+m.Config.Digest.Encoded()], &cfg)
		wantUser := "65532:65532"
		if b == "vigil-agent" {
			wantUser = "0:0"
		}
		if cfg.Config.User != wantUser {
			t.Errorf("%s: user %q, want %q", b, cfg.Config.User, wantUser)
		}
		if strings.Join(cfg.Config.Entrypoint, " ") != "/"+b {
			t.Errorf("%s: entrypoint %q", b, cfg.Config.Entrypoint)
		}
		zr, err := gzip.NewReader(bytes.NewReader(files["blobs/sha256/"+m.Layers[0].Digest.Encoded()]))
		if err != nil {
			t.Fatal(err)
		}
		layer, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		for name, data := range untar(t, layer) {
			switch {
			case strings.HasSuffix(name, "/"):
			case name == b:
				if string(data) != "\x7fELF fake "+b {
					t.Errorf("%s: binary holds %q", b, data)
				}
			case name == "etc/passwd", name == "etc/group":
			default:
				t.Errorf("%s: unexpected file %s in the image", b, name)
			}
		}
	}
}

func TestRefused(t *testing.T) {
	bin := fakeBinaries(t)
	if err := os.WriteFile(filepath.Join(bin, "vigilctl"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-only", "vigil-agent,bash"}, `"bash" is not one of`},
		{[]string{"-tag", "a:b"}, "want a plain tag"},
		{[]string{"-created", "yesterday"}, "-created"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"-only", "vigilctl"}, "not an ELF binary"},
		{[]string{"-bin", t.TempDir()}, "run make build first"},
	} {
		args := append([]string{"-bin", bin, "-out", t.TempDir()}, tc.args...)
		err := run(context.Background(), args, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err %v, want one saying %q", tc.args, err, tc.want)
		}
		if strings.Contains(tc.want, "plain tag") && !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%v: %v is not ErrInvalid", tc.args, err)
		}
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustJSON(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%v in %q", err, b)
	}
}

func untar(t *testing.T, b []byte) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = data
	}
}
