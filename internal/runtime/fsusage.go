package runtime

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"

	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
)

// Writable-layer usage: what a container wrote into its root filesystem
// (cAdvisor's container_fs_usage_bytes for the container's own layer). Two
// ways, measured against each other in TestWritableLayerUsageCost (run with VIGIL_FSUSAGE_CONTAINERS=N)
// (docs/benchmarks/runtime.md):
//
//   - SnapshotUsage asks containerd's snapshotter (the Snapshots Usage
//     API). For overlayfs containerd walks the snapshot's upper directory
//     itself, so the cost lands in containerd, plus a gRPC call per
//     container.
//   - UpperDir finds the upper directory once (from the snapshot's mounts)
//     and DirUsage walks it in the agent, as cAdvisor does.
//
// statfs answers only where the writable layer is a filesystem of its own
// (devmapper, a block device per container), not for overlayfs on a shared
// disk, which is the default: it is not used.
//
// Either walks every file the container wrote, so the cost grows with
// them: read it on its own schedule (every minute, say), never in the
// decision loop nor in every sampling cycle.

// LayerUsage is the disk usage of a writable layer.
type LayerUsage struct {
	Bytes  uint64 // allocated size (blocks), hard links counted once
	Inodes uint64 // files, directories and links
}

// SnapshotUsage asks containerd's snapshotter for the usage of container
// k's writable layer. A container without a snapshot has an error wrapping
// errdefs.ErrNotFound.
func (r *Runtime) SnapshotUsage(ctx context.Context, k container.Key) (LayerUsage, error) {
	c, err := r.connected()
	if err != nil {
		return LayerUsage{}, err
	}
	ctx = namespaces.WithNamespace(ctx, k.Namespace)
	cc, err := r.loadContainer(ctx, c, k)
	if err != nil {
		return LayerUsage{}, err
	}
	if cc.SnapshotKey == "" || cc.Snapshotter == "" {
		return LayerUsage{}, fmt.Errorf("container %s has no snapshot: %w", k, errdefs.ErrNotFound)
	}
	var u LayerUsage
	err = r.call(ctx, "snapshot_usage", func(ctx context.Context) error {
		resp, err := c.snapshots.Usage(ctx, &snapshotsapi.UsageRequest{Snapshotter: cc.Snapshotter, Key: cc.SnapshotKey})
		if err == nil {
			u = LayerUsage{Bytes: uint64(max(resp.GetSize(), 0)), Inodes: uint64(max(resp.GetInodes(), 0))}
		}
		return err
	})
	return u, err
}

// UpperDir returns the upper directory of container k's overlay snapshot,
// the directory that holds what the container wrote. Its error wraps
// errdefs.ErrNotFound for a container without a snapshot, errdefs.ErrInvalid
// for one whose snapshot is not an overlay mount.
func (r *Runtime) UpperDir(ctx context.Context, k container.Key) (string, error) {
	c, err := r.connected()
	if err != nil {
		return "", err
	}
	ctx = namespaces.WithNamespace(ctx, k.Namespace)
	cc, err := r.loadContainer(ctx, c, k)
	if err != nil {
		return "", err
	}
	if cc.SnapshotKey == "" || cc.Snapshotter == "" {
		return "", fmt.Errorf("container %s has no snapshot: %w", k, errdefs.ErrNotFound)
	}
	var opts []string
	err = r.call(ctx, "snapshot_mounts", func(ctx context.Context) error {
		resp, err := c.snapshots.Mounts(ctx, &snapshotsapi.MountsRequest{Snapshotter: cc.Snapshotter, Key: cc.SnapshotKey})
		if err == nil {
			for _, m := range resp.GetMounts() {
				opts = append(opts, m.GetOptions()...)
			}
		}
		return err
	})
	if err != nil {
		return "", err
	}
	return upperDirOf(opts)
}

// upperDirOf returns the upperdir= option of an overlay mount's options.
func upperDirOf(opts []string) (string, error) {
	for _, o := range opts {
		if dir, ok := strings.CutPrefix(o, "upperdir="); ok && filepath.IsAbs(dir) {
			return dir, nil
		}
	}
	return "", fmt.Errorf("no upperdir in the snapshot's mount options %q (not an overlay snapshot): %w", opts, errdefs.ErrInvalid)
}

// DirUsage walks dir without following symbolic links or crossing into
// other filesystems and sums the blocks allocated to what it holds (as du
// does, each hard-linked inode once). Entries that vanish during the walk
// are skipped; other errors end it.
func DirUsage(dir string) (LayerUsage, error) {
	var root syscall.Stat_t
	if err := syscall.Lstat(dir, &root); err != nil {
		return LayerUsage{}, fmt.Errorf("writable layer %s: %w", dir, err)
	}
	var u LayerUsage
	seen := map[uint64]bool{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(path, &st); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if st.Dev != root.Dev {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if st.Nlink > 1 && !d.IsDir() {
			if seen[st.Ino] {
				return nil
			}
			seen[st.Ino] = true
		}
		u.Inodes++
		u.Bytes += uint64(st.Blocks) * 512
		return nil
	})
	if err != nil {
		return LayerUsage{}, fmt.Errorf("writable layer %s: %w", dir, err)
	}
	return u, nil
}
