package agent

import (
	"context"
	"errors"
	"os"
	"sync"
	"time"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/runtime"
)

// collectorFSUsage names the writable-layer collector in
// vigil_agent_collector_success and vigil_agent_collector_duration_seconds.
const collectorFSUsage = "fs_usage"

// fsUsage is the last writable-layer usage read of each container (issue
// 24): the fsUsageSampler goroutine writes it every FSUsageInterval, the
// sampler puts it in every resource sample (ResourceSample.fs_usage_bytes,
// vigil_container_fs_usage_bytes).
type fsUsage struct {
	mu    sync.Mutex
	bytes map[container.Key]uint64
}

func (u *fsUsage) get(k container.Key) (uint64, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	b, ok := u.bytes[k]
	return b, ok
}

func (u *fsUsage) set(m map[container.Key]uint64) {
	u.mu.Lock()
	u.bytes = m
	u.mu.Unlock()
}

// upperDir is a container's writable layer as found: its overlay upper
// directory, or why there is none to walk (not an overlay snapshot).
type upperDir struct {
	dir     string
	invalid bool
}

// fsUsageSampler reads every running container's writable-layer usage
// every FSUsageInterval (the first time after at most 10 s) on its own
// goroutine: it walks the container's overlay upper directory (found once
// per container through containerd's snapshotter, runtime.UpperDir), as
// cAdvisor does. A walk costs as many files as the container wrote, which
// is why it has a slow schedule of its own and stays out of the sampling
// cycle and the decision loop.
func (a *Agent) fsUsageSampler(ctx context.Context) error {
	uppers := map[container.Key]upperDir{}
	t := time.NewTimer(min(a.cfg.FSUsageInterval, 10*time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		a.readFSUsage(ctx, uppers)
		t.Reset(a.cfg.FSUsageInterval)
	}
}

// readFSUsage reads once; uppers caches the containers' upper directories
// (entries of containers gone are dropped).
func (a *Agent) readFSUsage(ctx context.Context, uppers map[container.Key]upperDir) {
	start := time.Now()
	var keys []container.Key
	a.mu.RLock()
	for k, t := range a.containers {
		if t.c.State == runtime.StateRunning || t.c.State == runtime.StatePaused {
			keys = append(keys, k)
		}
	}
	a.mu.RUnlock()
	seen := make(map[container.Key]bool, len(keys))
	out := make(map[container.Key]uint64, len(keys))
	ok := true
	for _, k := range keys {
		if ctx.Err() != nil {
			return
		}
		seen[k] = true
		u, cached := uppers[k]
		if !cached {
			dir, err := a.rt.UpperDir(ctx, k)
			switch {
			case errors.Is(err, errdefs.ErrInvalid):
				// Not an overlay snapshot (devmapper, a VM runtime's):
				// nothing to walk; asked once.
				a.log.Debug("writable layer usage not read: not an overlay snapshot", "container", k.ID, "namespace", k.Namespace, "err", err)
				uppers[k] = upperDir{invalid: true}
				continue
			case errors.Is(err, errdefs.ErrNotFound):
				continue // no snapshot (yet, or any more)
			case err != nil:
				ok = false
				a.log.Warn("writable layer usage: finding the upper directory", "container", k.ID, "namespace", k.Namespace, "err", err)
				continue
			}
			u = upperDir{dir: dir}
			uppers[k] = u
		}
		if u.invalid {
			continue
		}
		usage, err := runtime.DirUsage(u.dir)
		if err != nil {
			// A container removed since (its snapshot with it): found
			// again next time, if it is back.
			delete(uppers, k)
			if !errors.Is(err, os.ErrNotExist) {
				ok = false
				a.log.Warn("writable layer usage", "container", k.ID, "namespace", k.Namespace, "err", err)
			}
			continue
		}
		out[k] = usage.Bytes
	}
	for k := range uppers {
		if !seen[k] {
			delete(uppers, k)
		}
	}
	a.fsUsage.set(out)
	a.self.observeCollector(collectorFSUsage, ok, time.Since(start))
}
