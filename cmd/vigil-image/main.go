// Command vigil-image builds Vigil's release images from the release
// binaries, without Docker or a registry: one OCI image layout tarball per
// binary (vigil-agent, vigil-aggregator, vigilctl) under -out, which
// `ctr images import`, `podman load` and `skopeo copy oci-archive:` take.
// `make image` runs it after `make build`.
//
// Each image is one layer: the static binary at /NAME, /etc/passwd and
// /etc/group naming root and nonroot (65532), /tmp, and the binary's data
// directory. No shell, no package manager, nothing else. The aggregator and
// vigilctl run as nonroot (65532:65532); the agent runs as root, because it
// talks to the node's containerd socket, reads every container's cgroup
// files and enters their network namespaces (deploy/daemonset/agent.yaml
// says which capabilities it keeps).
//
// Builds are reproducible: every timestamp is fixed (ociimage.Epoch, or
// -created), entries are sorted, and the same binary gives the same image
// digest; the binaries themselves are reproducible with `make build`'s
// flags (-trimpath, no cgo) from the same commit.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/ociimage"
)

// binaries are the images built, by binary name.
var binaries = []string{"vigil-agent", "vigil-aggregator", "vigilctl"}

// nonroot is the uid and gid of the unprivileged images (distroless's).
const nonroot = 65532

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "vigil-image:", err)
		os.Exit(1)
	}
}

// config is what the flags say.
type config struct {
	binDir, outDir string
	repo, tag      string
	arch           string
	created        time.Time
	only           []string
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	cfg := config{}
	fs := flag.NewFlagSet("vigil-image", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var created, only string
	fs.StringVar(&cfg.binDir, "bin", "bin", "directory holding the release binaries (make build)")
	fs.StringVar(&cfg.outDir, "out", "bin/images", "directory to write NAME.tar into")
	fs.StringVar(&cfg.repo, "repo", "ghcr.io/vigilhq", "repository prefix of the image names")
	fs.StringVar(&cfg.tag, "tag", "dev", "tag of the images")
	fs.StringVar(&cfg.arch, "arch", "amd64", "architecture of the binaries (GOARCH)")
	fs.StringVar(&created, "created", "", "image creation time, RFC 3339 (default: "+ociimage.Epoch.Format(time.RFC3339)+", for reproducible builds)")
	fs.StringVar(&only, "only", "", "comma-separated binaries to build images of (default: "+strings.Join(binaries, ",")+")")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q: %w", fs.Args(), errdefs.ErrInvalid)
	}
	if created != "" {
		t, err := time.Parse(time.RFC3339, created)
		if err != nil {
			return cfg, fmt.Errorf("-created %q: %w: %w", created, err, errdefs.ErrInvalid)
		}
		cfg.created = t
	}
	cfg.only = binaries
	if only != "" {
		cfg.only = nil
		for _, b := range strings.Split(only, ",") {
			if b = strings.TrimSpace(b); b == "" {
				continue
			}
			if !isBinary(b) {
				return cfg, fmt.Errorf("-only %q: %q is not one of %s: %w", only, b, strings.Join(binaries, ", "), errdefs.ErrInvalid)
			}
			cfg.only = append(cfg.only, b)
		}
	}
	if cfg.tag == "" || strings.ContainsAny(cfg.tag, ":/@ ") {
		return cfg, fmt.Errorf("-tag %q: want a plain tag: %w", cfg.tag, errdefs.ErrInvalid)
	}
	return cfg, nil
}

func isBinary(name string) bool {
	for _, b := range binaries {
		if b == name {
			return true
		}
	}
	return false
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.outDir, 0o755); err != nil {
		return err
	}
	for _, name := range cfg.only {
		if err := ctx.Err(); err != nil {
			return err
		}
		img, err := releaseImage(cfg, name)
		if err != nil {
			return err
		}
		out := filepath.Join(cfg.outDir, name+".tar")
		d, err := writeFile(out, img)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s\t%s\t%s\n", out, img.Name, d.Manifest.Digest)
	}
	return nil
}

// releaseImage is the image of one binary, read from cfg.binDir.
func releaseImage(cfg config, name string) (ociimage.Image, error) {
	bin, err := os.ReadFile(filepath.Join(cfg.binDir, name))
	if err != nil {
		return ociimage.Image{}, fmt.Errorf("%s: %w (run make build first)", name, err)
	}
	if len(bin) < 4 || string(bin[:4]) != "\x7fELF" {
		return ociimage.Image{}, fmt.Errorf("%s: %s is not an ELF binary: %w", name, filepath.Join(cfg.binDir, name), errdefs.ErrInvalid)
	}
	var l ociimage.LayerBuilder
	l.File(name, 0o755, bin)
	l.File("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"))
	l.File("etc/group", 0o644, []byte("root:x:0:\nnonroot:x:65532:\n"))
	l.Dir("tmp", 0o1777, 0, 0)
	l.Dir("root", 0o700, 0, 0)
	l.Dir("home/nonroot", 0o700, nonroot, nonroot)
	user := fmt.Sprintf("%d:%d", nonroot, nonroot)
	switch name {
	case "vigil-agent":
		// Root: the node's containerd socket, cgroup files and other
		// containers' namespaces (see deploy/daemonset/agent.yaml).
		user = "0:0"
		l.Dir("var/lib/vigil", 0o700, 0, 0)
	case "vigil-aggregator":
		l.Dir("var/lib/vigil-aggregator", 0o700, nonroot, nonroot)
	}
	layer, err := l.Layer()
	if err != nil {
		return ociimage.Image{}, err
	}
	return ociimage.Image{
		Name:         cfg.repo + "/" + name + ":" + cfg.tag,
		Layers:       []ociimage.Layer{layer},
		Architecture: cfg.arch,
		OS:           "linux",
		Created:      cfg.created,
		Config: ocispec.ImageConfig{
			User:       user,
			Entrypoint: []string{"/" + name},
			WorkingDir: "/",
			Labels: map[string]string{
				ocispec.AnnotationTitle:   name,
				ocispec.AnnotationSource:  "https://github.com/vigilhq/vigil",
				ocispec.AnnotationVersion: cfg.tag,
			},
		},
		Annotations: map[string]string{
			ocispec.AnnotationTitle:   name,
			ocispec.AnnotationSource:  "https://github.com/vigilhq/vigil",
			ocispec.AnnotationVersion: cfg.tag,
		},
	}, nil
}

// writeFile writes img to path through a temporary file, so that a failed
// build never leaves a half-written tarball under the final name.
func writeFile(path string, img ociimage.Image) (ociimage.Descriptors, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return ociimage.Descriptors{}, err
	}
	defer os.Remove(tmp.Name())
	d, err := img.WriteLayout(tmp)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return d, fmt.Errorf("write %s: %w", path, err)
	}
	return d, os.Rename(tmp.Name(), path)
}
