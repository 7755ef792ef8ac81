package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	_ "crypto/sha256" // go-digest's sha256 (digest.FromBytes panics without it)
	"encoding/json"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/vigilhq/vigil/internal/errdefs"
)

// Epoch is the timestamp of every file, layer and image this package
// writes, unless an Image says otherwise: a fixed time makes builds
// reproducible (as SOURCE_DATE_EPOCH does for Debian's packages).
var Epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// entry is one file, directory or symlink of a layer.
type entry struct {
	hdr  tar.Header
	data []byte
}

// LayerBuilder collects the entries of one layer. Names are relative to
// the image's root ("bin/busybox", not "/bin/busybox"); a name added twice
// keeps the last. The zero value is ready to use; not safe for concurrent
// use.
type LayerBuilder struct {
	entries map[string]entry
	err     error
}

func (b *LayerBuilder) add(h tar.Header, data []byte) {
	if b.entries == nil {
		b.entries = map[string]entry{}
	}
	name := path.Clean(strings.TrimPrefix(h.Name, "/"))
	if name == "." || name == ".." || strings.HasPrefix(name, "../") {
		if b.err == nil {
			b.err = fmt.Errorf("ociimage: entry name %q is outside the image's root: %w", h.Name, errdefs.ErrInvalid)
		}
		return
	}
	h.Name = name
	b.entries[name] = entry{hdr: h, data: data}
}

// Dir adds a directory owned by uid:gid.
func (b *LayerBuilder) Dir(name string, mode int64, uid, gid int) {
	b.add(tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, Uid: uid, Gid: gid}, nil)
}

// File adds a regular file owned by root.
func (b *LayerBuilder) File(name string, mode int64, data []byte) {
	b.add(tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data))}, data)
}

// Symlink adds a symbolic link to target.
func (b *LayerBuilder) Symlink(name, target string) {
	b.add(tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}, nil)
}

// Layer renders the entries as an uncompressed tar: sorted by name, each
// parent directory made (0755, root) where not added, every time Epoch,
// PAX format with no user or group names. Two builders given the same
// entries, in any order, give the same bytes.
func (b *LayerBuilder) Layer() (Layer, error) {
	if b.err != nil {
		return Layer{}, b.err
	}
	all := map[string]entry{}
	for name, e := range b.entries {
		all[name] = e
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			if _, ok := b.entries[d]; !ok {
				all[d] = entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755}}
			}
		}
	}
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := all[n]
		h := e.hdr
		if h.Typeflag == tar.TypeDir {
			h.Name += "/"
		}
		h.ModTime, h.Format = Epoch, tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			return Layer{}, fmt.Errorf("ociimage: %s: %w", n, err)
		}
		if len(e.data) > 0 {
			if _, err := tw.Write(e.data); err != nil {
				return Layer{}, fmt.Errorf("ociimage: %s: %w", n, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return Layer{}, err
	}
	return Layer{Tar: buf.Bytes()}, nil
}

// Layer is one uncompressed layer tar.
type Layer struct {
	Tar []byte
}

// DiffID is the digest of the uncompressed tar, as the image config lists it.
func (l Layer) DiffID() digest.Digest { return digest.FromBytes(l.Tar) }

// Image is an image to write.
type Image struct {
	// Name is the image's full reference, e.g.
	// "ghcr.io/vigilhq/vigil-agent:v0.1.0". It is written into index.json as
	// containerd's image name annotation (what `ctr images import` names the
	// image) and its tag as the OCI ref name. Required.
	Name string
	// Layers, bottom first. At least one.
	Layers []Layer
	// Config is the run configuration: Entrypoint, Cmd, Env, User,
	// WorkingDir, Labels.
	Config ocispec.ImageConfig
	// Architecture and OS of the binaries, in Go's names. Default: amd64 and
	// linux.
	Architecture, OS string
	// Created is the image's creation time. Default: Epoch.
	Created time.Time
	// Annotations on the manifest, e.g. org.opencontainers.image.source.
	Annotations map[string]string
	// Uncompressed keeps the layers as plain tars in the layout (faster to
	// write and import: tests); by default they are gzipped.
	Uncompressed bool
}

// Descriptors is what WriteLayout wrote: the manifest's digest is the
// image's digest (what a registry and `ctr images ls` show).
type Descriptors struct {
	Manifest ocispec.Descriptor
	Config   ocispec.Descriptor
	Layers   []ocispec.Descriptor
}

// WriteLayout writes img as an OCI image layout tarball to w. The output
// depends only on img: no clock, no host, no map order.
func (img Image) WriteLayout(w io.Writer) (Descriptors, error) {
	var d Descriptors
	if img.Name == "" {
		return d, fmt.Errorf("ociimage: image has no name: %w", errdefs.ErrInvalid)
	}
	if len(img.Layers) == 0 {
		return d, fmt.Errorf("ociimage: image %s has no layers: %w", img.Name, errdefs.ErrInvalid)
	}
	if img.Architecture == "" {
		img.Architecture = "amd64"
	}
	if img.OS == "" {
		img.OS = "linux"
	}
	if img.Created.IsZero() {
		img.Created = Epoch
	}
	created := img.Created.UTC()

	blobs := map[digest.Digest][]byte{}
	addBlob := func(mediaType string, b []byte) ocispec.Descriptor {
		dg := digest.FromBytes(b)
		blobs[dg] = b
		return ocispec.Descriptor{MediaType: mediaType, Digest: dg, Size: int64(len(b))}
	}

	cfg := ocispec.Image{
		Created:  &created,
		Platform: ocispec.Platform{Architecture: img.Architecture, OS: img.OS},
		Config:   img.Config,
		RootFS:   ocispec.RootFS{Type: "layers"},
	}
	for _, l := range img.Layers {
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.DiffID())
		if img.Uncompressed {
			d.Layers = append(d.Layers, addBlob(ocispec.MediaTypeImageLayer, l.Tar))
			continue
		}
		gz, err := gzipBytes(l.Tar)
		if err != nil {
			return d, err
		}
		d.Layers = append(d.Layers, addBlob(ocispec.MediaTypeImageLayerGzip, gz))
	}
	cb, err := json.Marshal(cfg)
	if err != nil {
		return d, err
	}
	d.Config = addBlob(ocispec.MediaTypeImageConfig, cb)
	manifest := ocispec.Manifest{
		Versioned:   specs.Versioned{SchemaVersion: 2},
		MediaType:   ocispec.MediaTypeImageManifest,
		Config:      d.Config,
		Layers:      d.Layers,
		Annotations: img.Annotations,
	}
	mb, err := json.Marshal(manifest)
	if err != nil {
		return d, err
	}
	d.Manifest = addBlob(ocispec.MediaTypeImageManifest, mb)
	d.Manifest.Platform = &ocispec.Platform{Architecture: img.Architecture, OS: img.OS}

	idxManifest := d.Manifest
	idxManifest.Annotations = map[string]string{
		"io.containerd.image.name": img.Name,
		ocispec.AnnotationRefName:  tagOf(img.Name),
	}
	index := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{idxManifest},
	}
	ib, err := json.Marshal(index)
	if err != nil {
		return d, err
	}
	lb, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return d, err
	}

	var out LayerBuilder
	out.File(ocispec.ImageLayoutFile, 0o644, lb)
	out.File("index.json", 0o644, ib)
	for dg, b := range blobs {
		out.File(path.Join("blobs", dg.Algorithm().String(), dg.Encoded()), 0o644, b)
	}
	tarball, err := out.Layer()
	if err != nil {
		return d, err
	}
	_, err = w.Write(tarball.Tar)
	return d, err
}

// tagOf is the tag of a reference ("latest" when it has none), the OCI ref
// name of the image in index.json.
func tagOf(ref string) string {
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		return ref[i+1:]
	}
	return "latest"
}

// gzipBytes compresses b at the default level with an empty gzip header
// (no name, no time): the same input gives the same bytes with the same Go.
func gzipBytes(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ShortDigest is the first 12 hex digits of d, as `docker images` shows.
func ShortDigest(d digest.Digest) string {
	e := d.Encoded()
	if len(e) > 12 {
		e = e[:12]
	}
	return e
}
