package runtime

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"sync"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/netns"
	"github.com/vigilhq/vigil/internal/procstat"
)

// entry is the inventory's record of one container: the exported Container
// and what the package needs besides.
type entry struct {
	c           Container
	oomSeen     bool      // an OOM event arrived for the current task
	taskPresent bool      // containerd has a task for the container (running or not)
	updatedAt   time.Time // containerd's UpdatedAt of the record c was built from
	cgroupRel   string    // resolved cgroup path ("/ns/id"); "" when unknown
}

// clone returns a deep copy of c, so that snapshots never alias the
// inventory.
func (c *Container) clone() Container {
	out := *c
	out.Labels = maps.Clone(c.Labels)
	if c.Pod != nil {
		p := *c.Pod
		out.Pod = &p
	}
	if c.LastExit != nil {
		e := *c.LastExit
		out.LastExit = &e
	}
	if c.Healthcheck != nil {
		h := *c.Healthcheck
		h.Test = append([]string(nil), c.Healthcheck.Test...)
		out.Healthcheck = &h
	}
	return out
}

// imageInfo is what the inventory takes from an image: its digest, its
// Docker healthcheck and its stop signal.
type imageInfo struct {
	digest string
	imageMeta
}

// imageMeta is what an image's config says that the inventory keeps.
type imageMeta struct {
	healthcheck *Healthcheck
	stopSignal  string
}

// imageCache remembers the healthcheck parsed from an image's config, keyed
// by the image's target digest (content-addressed, so never stale; a
// re-pulled tag has a new digest). Only successful reads are kept. A resync
// clears it, which bounds it by the images in use.
type imageCache struct {
	mu      sync.Mutex
	entries map[string]imageMeta
}

func (ic *imageCache) reset() {
	ic.mu.Lock()
	clear(ic.entries)
	ic.mu.Unlock()
}

// image returns the digest and healthcheck of image name in namespace ns
// (ctx carries the namespace). The name is resolved on every call (it runs
// when a container is described: on create and update events and on
// resyncs of changed records); the config is read once per digest.
// Failures (image deleted, config unreadable, timeout) leave the fields
// they concern empty, are logged, and are retried on the next call.
func (r *Runtime) image(ctx context.Context, c *apiClient, ns, name string) imageInfo {
	if name == "" {
		return imageInfo{}
	}
	var target blobDesc
	if err := r.call(ctx, "image_get", func(ctx context.Context) error {
		resp, err := c.images.Get(ctx, &imagesapi.GetImageRequest{Name: name})
		if err != nil {
			return err
		}
		t := resp.GetImage().GetTarget()
		if t == nil {
			return fmt.Errorf("image %s has no target: %w", name, errdefs.ErrInvalid)
		}
		target = blobDesc{mediaType: t.MediaType, digest: t.Digest, size: t.Size}
		return nil
	}); err != nil {
		r.log.Debug("image details unavailable", "namespace", ns, "image", name, "err", err)
		return imageInfo{}
	}
	info := imageInfo{digest: target.digest}
	r.images.mu.Lock()
	meta, ok := r.images.entries[info.digest]
	r.images.mu.Unlock()
	if ok {
		info.imageMeta = meta
		return info
	}
	var cfg []byte
	err := r.call(ctx, "image_config", func(ctx context.Context) error {
		fetch := func(ctx context.Context, d blobDesc) ([]byte, error) { return readBlob(ctx, c.content, d) }
		var err error
		cfg, err = resolveImageConfig(ctx, fetch, target, imagePlatform())
		return err
	})
	if err == nil {
		info.healthcheck, info.stopSignal, err = parseImageConfig(cfg)
	}
	if err != nil {
		r.log.Debug("image config unavailable", "namespace", ns, "image", name, "digest", info.digest, "err", err)
		return imageInfo{digest: info.digest}
	}
	r.images.mu.Lock()
	r.images.entries[info.digest] = info.imageMeta
	r.images.mu.Unlock()
	return info
}

// describe builds an inventory entry from containerd's container record;
// the task fields are left to the caller. prev, when not nil, is the
// previous entry for the same container: its derived fields are reused when
// the record did not change.
func (r *Runtime) describe(ctx context.Context, c *apiClient, ns string, cc *containersapi.Container, prev *entry) *entry {
	updatedAt := protoTime(cc.UpdatedAt)
	e := &entry{updatedAt: updatedAt}
	if prev != nil {
		e.c = prev.c.clone()
		e.oomSeen = prev.oomSeen
		e.cgroupRel = prev.cgroupRel
		if prev.updatedAt.Equal(updatedAt) && !updatedAt.IsZero() {
			return e
		}
	}
	e.c.Namespace = ns
	e.c.ID = cc.ID
	e.c.Labels = maps.Clone(cc.Labels)
	e.c.Image = cc.Image
	e.c.CreatedAt = protoTime(cc.CreatedAt)
	img := r.image(ctx, c, ns, cc.Image)
	e.c.ImageDigest = img.digest
	e.c.Healthcheck = img.healthcheck
	e.c.StopSignal = img.stopSignal
	if s := cc.Labels[StopSignalLabel]; s != "" {
		e.c.StopSignal = s
	}
	e.c.Manager = managerOf(ns, cc.Labels)

	var annotations map[string]string
	if cc.Spec != nil {
		spec, hostNet, err := parseSpec(cc.Spec.GetValue())
		if err != nil {
			r.log.Warn("container spec unreadable", "namespace", ns, "id", cc.ID, "err", err)
		} else {
			annotations = spec.Annotations
			e.c.CgroupPath = spec.cgroupsPath()
			if e.c.NetNSInode == 0 {
				e.c.HostNetwork = hostNet
			}
			e.cgroupRel = ""
			if e.c.CgroupPath != "" {
				rel, err := resolveCgroupsPath(e.c.CgroupPath)
				if err != nil {
					r.log.Warn("container cgroup path unusable", "namespace", ns, "id", cc.ID, "err", err)
				}
				e.cgroupRel = rel
			}
		}
	}
	var meta *criMetadata
	if ext, ok := cc.Extensions[extensionCRIMetadata]; ok && ext != nil {
		if m, err := parseCRIMetadata(ext.GetValue()); err == nil {
			meta = &m
		} else {
			r.log.Debug("CRI metadata unreadable", "namespace", ns, "id", cc.ID, "err", err)
		}
	}
	e.c.Pod = podOf(cc.Labels, annotations, meta)
	return e
}

// setRunning records a running task's pid and what follows from it: the
// network namespace, and the start time: the start event's (containerd's
// clock, precise), or from /proc when no event told it (a relist). The /proc
// time is only accurate to about a second (the boot time in /proc/stat is in
// whole seconds), so the two differ for the same task: consumers must not
// tell runs apart by comparing them exactly (the agent keys on its own
// saved state).
func (r *Runtime) setRunning(e *entry, pid uint32, startedAt time.Time) {
	e.c.Pid = pid
	if startedAt.IsZero() {
		startedAt = procStartTime(pid)
	}
	e.c.StartedAt = startedAt
	e.c.NetNSInode = 0
	if pid == 0 {
		return
	}
	if id, err := netns.IDOf(netns.OfPid(pid)); err == nil {
		e.c.NetNSInode = id.Ino
		e.c.HostNetwork = r.hostNetNS != 0 && id.Ino == r.hostNetNS
	}
}

// procStartTime is when process pid started (procstat); zero when unknown.
func procStartTime(pid uint32) time.Time {
	if pid == 0 {
		return time.Time{}
	}
	st, ok := procstat.Read(strconv.FormatUint(uint64(pid), 10))
	if !ok {
		return time.Time{}
	}
	return st.StartTime()
}
