package runtime

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/cgroups/v3/cgroup1/stats"
	stats2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/protobuf/proto"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
)

// statsState is the collector's state across cycles: one reader (open
// files) per running container.
type statsState struct {
	mu      sync.Mutex // one cycle at a time
	readers map[container.Key]*statsReader
	buf     []byte
	targets []statsTarget
	gen     uint64 // cycle number
}

type statsReader struct {
	pid    uint32 // the task the files were opened for
	gen    uint64 // the cycle that last read it
	reader *cgroupReader
}

// statsTarget is a running container as the collector needs it.
type statsTarget struct {
	key       container.Key
	pid       uint32
	cgroupRel string
}

func (s *statsState) closeAll(open *atomic.Int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, rd := range s.readers {
		open.Add(-int64(rd.reader.open))
		rd.reader.Close()
		delete(s.readers, k)
	}
}

// Stats appends one reading of every running (or paused) container to
// dst[:0] and returns it, in (namespace, id) order. With the cgroup source
// it reads the cgroup filesystem (files kept open between calls); with the
// metrics-api source it asks containerd's task Metrics API, one call per
// namespace. Containers whose cgroup cannot be read are left out (and
// logged at debug level); the error is non-nil only when nothing could be
// read at all for a reason other than "no running containers" (bad cgroup
// root, containerd unavailable). Calls are serialised: a second concurrent
// call waits for the first.
func (r *Runtime) Stats(ctx context.Context, dst []Stats) ([]Stats, error) {
	r.stats.mu.Lock()
	defer r.stats.mu.Unlock()
	start := time.Now()
	defer func() { r.metrics.observeCycle(time.Since(start)) }()

	s := &r.stats
	s.targets = s.targets[:0]
	r.mu.RLock()
	for k, e := range r.inv {
		if (e.c.State == StateRunning || e.c.State == StatePaused) && e.c.Pid != 0 {
			s.targets = append(s.targets, statsTarget{key: k, pid: e.c.Pid, cgroupRel: e.cgroupRel})
		}
	}
	r.mu.RUnlock()
	slices.SortFunc(s.targets, func(a, b statsTarget) int { return container.Compare(a.key, b.key) })
	dst = dst[:0]
	if r.cfg.StatsSource == StatsSourceMetricsAPI {
		return r.statsFromAPI(ctx, dst)
	}
	return r.statsFromCgroups(dst)
}

func (r *Runtime) statsFromCgroups(dst []Stats) ([]Stats, error) {
	s := &r.stats
	layout, err := r.cgroupLayout()
	if err != nil {
		return dst, err
	}
	if s.buf == nil {
		s.buf = make([]byte, 4096)
	}
	open := &r.metrics.openFiles
	s.gen++
	now := time.Now()
	for _, t := range s.targets {
		if t.cgroupRel == "" {
			continue
		}
		rd, ok := s.readers[t.key]
		if ok && rd.pid != t.pid { // a new task: its cgroup was recreated
			open.Add(-int64(rd.reader.open))
			rd.reader.Close()
			delete(s.readers, t.key)
			ok = false
		}
		if !ok {
			cr, err := openCgroup(layout, t.cgroupRel)
			if err != nil {
				r.log.Debug("cgroup not readable", "namespace", t.key.Namespace, "id", t.key.ID, "cgroup", t.cgroupRel, "err", err)
				continue
			}
			rd = &statsReader{pid: t.pid, reader: cr}
			s.readers[t.key] = rd
			open.Add(int64(cr.open))
		}
		rd.gen = s.gen
		dst = append(dst, Stats{Key: t.key})
		st := &dst[len(dst)-1]
		if err := rd.reader.read(st, &s.buf, now); err != nil {
			dst = dst[:len(dst)-1]
			open.Add(-int64(rd.reader.open))
			rd.reader.Close()
			delete(s.readers, t.key)
			if !errors.Is(err, errCgroupGone) {
				r.log.Debug("cgroup read failed", "namespace", t.key.Namespace, "id", t.key.ID, "err", err)
			}
		}
	}
	// Drop readers of containers that are no longer running.
	for k, rd := range s.readers {
		if rd.gen != s.gen {
			open.Add(-int64(rd.reader.open))
			rd.reader.Close()
			delete(s.readers, k)
		}
	}
	return dst, nil
}

// statsFromAPI asks containerd's task Metrics API for the running tasks of
// each namespace that has some; every task costs its shim a wake-up and a
// cgroup read, which is why this is not the default.
func (r *Runtime) statsFromAPI(ctx context.Context, dst []Stats) ([]Stats, error) {
	c := r.client.Load()
	if c == nil {
		return dst, fmt.Errorf("task metrics: containerd not connected: %w", errdefs.ErrUnavailable)
	}
	byNS := map[string][]string{}
	for _, t := range r.stats.targets {
		byNS[t.key.Namespace] = append(byNS[t.key.Namespace], t.key.ID)
	}
	var firstErr error
	for _, t := range r.stats.targets {
		ids, ok := byNS[t.key.Namespace]
		if !ok {
			continue
		}
		delete(byNS, t.key.Namespace)
		ns := t.key.Namespace
		filters := make([]string, len(ids))
		for i, id := range ids {
			filters[i] = fmt.Sprintf("id==%q", id)
		}
		var resp *tasks.MetricsResponse
		err := r.call(namespaces.WithNamespace(ctx, ns), "tasks_metrics", func(ctx context.Context) error {
			var err error
			resp, err = c.tasks.Metrics(ctx, &tasks.MetricsRequest{Filters: filters})
			return err
		})
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		for _, m := range resp.Metrics {
			if m.Data == nil {
				continue
			}
			st := Stats{Key: container.Key{Namespace: ns, ID: m.ID}, Time: m.Timestamp.AsTime()}
			if err := decodeMetrics(m.Data.TypeUrl, m.Data.Value, &st); err != nil {
				r.log.Debug("task metrics undecodable", "namespace", ns, "id", m.ID, "err", err)
				continue
			}
			dst = append(dst, st)
		}
	}
	slices.SortFunc(dst, func(a, b Stats) int { return container.Compare(a.Key, b.Key) })
	if len(dst) == 0 && firstErr != nil {
		return dst, firstErr
	}
	return dst, nil
}

// decodeMetrics fills st from a task Metrics payload: containerd's cgroup
// v1 or v2 metrics message.
func decodeMetrics(typeURL string, b []byte, st *Stats) error {
	switch typeURL {
	case "io.containerd.cgroups.v1.Metrics", "type.googleapis.com/io.containerd.cgroups.v1.Metrics":
		var m stats.Metrics
		if err := proto.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("cgroup v1 metrics: %w: %v", errdefs.ErrInvalid, err)
		}
		if c := m.CPU; c != nil {
			if u := c.Usage; u != nil {
				st.CPUUsageSeconds = float64(u.Total) / 1e9
				st.CPUUserSeconds = float64(u.User) / 1e9
				st.CPUSystemSeconds = float64(u.Kernel) / 1e9
			}
			if t := c.Throttling; t != nil {
				st.CPUPeriods, st.CPUThrottledPeriods = t.Periods, t.ThrottledPeriods
				st.CPUThrottledSeconds = float64(t.ThrottledTime) / 1e9
			}
		}
		if mem := m.Memory; mem != nil {
			st.MemoryRSSBytes, st.MemoryCacheBytes = mem.TotalRSS, mem.TotalCache
			if sw, u := mem.Swap, mem.Usage; sw != nil && u != nil && sw.Usage > u.Usage {
				st.MemorySwapBytes = sw.Usage - u.Usage // memsw counts memory and swap
			}
			if u := mem.Usage; u != nil {
				st.MemoryUsageBytes = u.Usage
				st.MemoryFailcnt = u.Failcnt
				if u.Limit < unlimited {
					st.MemoryLimitBytes = u.Limit
				}
			}
			st.MemoryWorkingSetBytes = workingSet(st.MemoryUsageBytes, mem.TotalInactiveFile)
		}
		if o := m.MemoryOomControl; o != nil {
			st.OOMKills = o.OomKill
		}
		if p := m.Pids; p != nil {
			st.PidsCurrent = p.Current
			if p.Limit < unlimited {
				st.PidsLimit = p.Limit
			}
		}
		if bio := m.Blkio; bio != nil {
			st.BlkioReadBytes, st.BlkioWriteBytes = sumBlkio(bio.IoServiceBytesRecursive)
			st.BlkioReadOps, st.BlkioWriteOps = sumBlkio(bio.IoServicedRecursive)
		}
		return nil
	case "io.containerd.cgroups.v2.Metrics", "type.googleapis.com/io.containerd.cgroups.v2.Metrics":
		var m stats2.Metrics
		if err := proto.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("cgroup v2 metrics: %w: %v", errdefs.ErrInvalid, err)
		}
		if c := m.CPU; c != nil {
			st.CPUUsageSeconds = float64(c.UsageUsec) / 1e6
			st.CPUUserSeconds = float64(c.UserUsec) / 1e6
			st.CPUSystemSeconds = float64(c.SystemUsec) / 1e6
			st.CPUPeriods, st.CPUThrottledPeriods = c.NrPeriods, c.NrThrottled
			st.CPUThrottledSeconds = float64(c.ThrottledUsec) / 1e6
		}
		if mem := m.Memory; mem != nil {
			st.MemoryUsageBytes = mem.Usage
			if mem.UsageLimit < unlimited {
				st.MemoryLimitBytes = mem.UsageLimit
			}
			st.MemoryRSSBytes, st.MemoryCacheBytes = mem.Anon, mem.File
			st.MemorySwapBytes = mem.SwapUsage
			st.MemoryWorkingSetBytes = workingSet(mem.Usage, mem.InactiveFile)
		}
		if ev := m.MemoryEvents; ev != nil {
			st.MemoryFailcnt, st.OOMKills = ev.Max, ev.OomKill
			st.MemoryHighEvents, st.MemoryOOMEvents = ev.High, ev.Oom
		}
		if p := m.Pids; p != nil {
			st.PidsCurrent = p.Current
			if p.Limit < unlimited {
				st.PidsLimit = p.Limit
			}
		}
		if io := m.Io; io != nil {
			for _, e := range io.Usage {
				st.BlkioReadBytes += e.Rbytes
				st.BlkioWriteBytes += e.Wbytes
				st.BlkioReadOps += e.Rios
				st.BlkioWriteOps += e.Wios
			}
		}
		return nil
	}
	return fmt.Errorf("task metrics of type %q: %w", typeURL, errdefs.ErrInvalid)
}

func sumBlkio(es []*stats.BlkIOEntry) (read, write uint64) {
	for _, e := range es {
		switch e.Op {
		case "Read", "read":
			read += e.Value
		case "Write", "write":
			write += e.Value
		}
	}
	return read, write
}
