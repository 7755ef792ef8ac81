package runtime

import (
	"errors"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vigilhq/vigil/internal/procstat"
)

// The cgroup stats path: each running container's cgroup files are opened
// once, kept open, and re-read each cycle with one pread at offset 0 into a
// buffer shared by all files (BenchmarkCgroupRead, docs/benchmarks/runtime.md:
// 34.7 µs per container kept open against 207 µs when reopening its files
// each time). Only the files behind the exported figures are opened: 16
// on v1 since the CPU quota, period, shares and memory reservation were
// added (about +5 µs per container per cycle, docs/benchmarks.md).

// cgroupFile names one file the reader keeps open.
type cgroupFile int

const (
	fCPUAcctUsage   cgroupFile = iota // v1 cpuacct.usage
	fCPUAcctStat                      // v1 cpuacct.stat
	fCPUStat                          // v1 cpu/cpu.stat, v2 cpu.stat
	fMemUsage                         // v1 memory.usage_in_bytes, v2 memory.current
	fMemLimit                         // v1 memory.limit_in_bytes, v2 memory.max
	fMemFailcnt                       // v1 memory.failcnt
	fMemStat                          // memory.stat
	fMemOOM                           // v1 memory.oom_control, v2 memory.events
	fPidsCurrent                      // pids.current
	fPidsMax                          // pids.max
	fBlkioBytes                       // v1 blkio.throttle.io_service_bytes_recursive, v2 io.stat
	fBlkioOps                         // v1 blkio.throttle.io_serviced_recursive
	fCPUQuota                         // v1 cpu.cfs_quota_us, v2 cpu.max (quota and period)
	fCPUPeriod                        // v1 cpu.cfs_period_us
	fCPUShares                        // v1 cpu.shares, v2 cpu.weight
	fMemReservation                   // v1 memory.soft_limit_in_bytes, v2 memory.low
	fMemSwap                          // v2 memory.swap.current (v1: total_swap of memory.stat)
	nCgroupFiles
)

// cgroupFiles returns the absolute paths of the files read for the cgroup
// at rel ("/a/b") under layout l; an empty string is a file this layout
// does not have.
func cgroupFiles(l cgroupLayout, rel string) [nCgroupFiles]string {
	var p [nCgroupFiles]string
	at := func(dir, name string) string {
		if dir == "" {
			return ""
		}
		return filepath.Join(dir, rel, name)
	}
	if l.version == cgroupV2 {
		u := l.unified
		p[fCPUStat] = at(u, "cpu.stat")
		p[fMemUsage] = at(u, "memory.current")
		p[fMemLimit] = at(u, "memory.max")
		p[fMemStat] = at(u, "memory.stat")
		p[fMemOOM] = at(u, "memory.events")
		p[fPidsCurrent] = at(u, "pids.current")
		p[fPidsMax] = at(u, "pids.max")
		p[fBlkioBytes] = at(u, "io.stat")
		p[fCPUQuota] = at(u, "cpu.max")
		p[fCPUShares] = at(u, "cpu.weight")
		p[fMemReservation] = at(u, "memory.low")
		p[fMemSwap] = at(u, "memory.swap.current")
		return p
	}
	p[fCPUAcctUsage] = at(l.cpuacct, "cpuacct.usage")
	p[fCPUAcctStat] = at(l.cpuacct, "cpuacct.stat")
	p[fCPUStat] = at(l.cpu, "cpu.stat")
	p[fMemUsage] = at(l.memory, "memory.usage_in_bytes")
	p[fMemLimit] = at(l.memory, "memory.limit_in_bytes")
	p[fMemFailcnt] = at(l.memory, "memory.failcnt")
	p[fMemStat] = at(l.memory, "memory.stat")
	p[fMemOOM] = at(l.memory, "memory.oom_control")
	p[fPidsCurrent] = at(l.pids, "pids.current")
	p[fPidsMax] = at(l.pids, "pids.max")
	p[fBlkioBytes] = at(l.blkio, "blkio.throttle.io_service_bytes_recursive")
	p[fBlkioOps] = at(l.blkio, "blkio.throttle.io_serviced_recursive")
	p[fCPUQuota] = at(l.cpu, "cpu.cfs_quota_us")
	p[fCPUPeriod] = at(l.cpu, "cpu.cfs_period_us")
	p[fCPUShares] = at(l.cpu, "cpu.shares")
	p[fMemReservation] = at(l.memory, "memory.soft_limit_in_bytes")
	return p
}

// cgroupReader holds one cgroup's files open. It is not safe for concurrent
// use; the collector serialises cycles.
type cgroupReader struct {
	version cgroupVersion
	fds     [nCgroupFiles]int // -1: absent
	open    int               // how many fds are open
}

// openCgroup opens the files of the cgroup at rel. Files that do not exist
// (a controller not mounted, a kernel without the file) are skipped; if
// none can be opened the cgroup is gone and the error wraps ENOENT.
func openCgroup(l cgroupLayout, rel string) (*cgroupReader, error) {
	r := &cgroupReader{version: l.version}
	var firstErr error
	for i, p := range cgroupFiles(l, rel) {
		r.fds[i] = -1
		if p == "" {
			continue
		}
		fd, err := syscall.Open(p, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		r.fds[i] = fd
		r.open++
	}
	if r.open == 0 {
		if firstErr == nil {
			firstErr = syscall.ENOENT
		}
		return nil, firstErr
	}
	return r, nil
}

// Close closes the files; it is idempotent.
func (r *cgroupReader) Close() {
	for i, fd := range r.fds {
		if fd >= 0 {
			syscall.Close(fd)
			r.fds[i] = -1
		}
	}
	r.open = 0
}

// errCgroupGone says the cgroup was removed under open files (the task
// exited); the reader must be dropped.
var errCgroupGone = errors.New("cgroup removed")

// readFile preads file f at offset 0 into *buf, growing it when the file
// fills it, and returns the bytes read (aliasing *buf). An absent file reads
// as nil.
func (r *cgroupReader) readFile(f cgroupFile, buf *[]byte) ([]byte, error) {
	fd := r.fds[f]
	if fd < 0 {
		return nil, nil
	}
	for {
		n, err := syscall.Pread(fd, *buf, 0)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			if err == syscall.ENODEV || err == syscall.ENOENT {
				return nil, errCgroupGone
			}
			return nil, err
		}
		if n == len(*buf) && len(*buf) < 1<<20 {
			*buf = make([]byte, 2*len(*buf))
			continue
		}
		return (*buf)[:n], nil
	}
}

// read fills s (Key left to the caller) from the open files. buf is a
// scratch buffer reused across calls. An error means the cgroup is gone or
// unreadable; s is then incomplete.
func (r *cgroupReader) read(s *Stats, buf *[]byte, now time.Time) error {
	s.Time = now
	b, err := r.readFile(fCPUStat, buf)
	if err != nil {
		return err
	}
	cs := parseCPUStat(b)
	s.CPUPeriods = cs.Periods
	s.CPUThrottledPeriods = cs.Throttled

	if b, err = r.readFile(fMemUsage, buf); err != nil {
		return err
	}
	s.MemoryUsageBytes = parseValue(b)
	if b, err = r.readFile(fMemLimit, buf); err != nil {
		return err
	}
	s.MemoryLimitBytes = parseLimit(b)
	if b, err = r.readFile(fPidsCurrent, buf); err != nil {
		return err
	}
	s.PidsCurrent = parseValue(b)
	if b, err = r.readFile(fPidsMax, buf); err != nil {
		return err
	}
	s.PidsLimit = parseLimit(b)

	var ms memoryStat
	if r.version == cgroupV2 {
		s.CPUUsageSeconds = float64(cs.UsageUsec) / 1e6
		s.CPUUserSeconds = float64(cs.UserUsec) / 1e6
		s.CPUSystemSeconds = float64(cs.SystemUsec) / 1e6
		s.CPUThrottledSeconds = float64(cs.ThrottledUsec) / 1e6
		if b, err = r.readFile(fMemStat, buf); err != nil {
			return err
		}
		ms = parseMemoryStatV2(b)
		if b, err = r.readFile(fMemOOM, buf); err != nil {
			return err
		}
		ev := parseMemoryEventsV2(b)
		s.MemoryFailcnt = ev.Max
		s.OOMKills = ev.OOMKill
		s.MemoryHighEvents, s.MemoryOOMEvents = ev.High, ev.OOM
		if b, err = r.readFile(fCPUQuota, buf); err != nil {
			return err
		}
		s.CPUQuotaMicros, s.CPUPeriodMicros = parseCPUMax(b)
		if b, err = r.readFile(fCPUShares, buf); err != nil {
			return err
		}
		s.CPUShares = weightToShares(parseValue(b))
		if b, err = r.readFile(fMemReservation, buf); err != nil {
			return err
		}
		s.MemoryReservationBytes = parseLimit(b)
		if b, err = r.readFile(fMemSwap, buf); err != nil {
			return err
		}
		s.MemorySwapBytes = parseValue(b)
		if b, err = r.readFile(fBlkioBytes, buf); err != nil {
			return err
		}
		io := parseIOStatV2(b)
		s.BlkioReadBytes, s.BlkioWriteBytes = io.RBytes, io.WBytes
		s.BlkioReadOps, s.BlkioWriteOps = io.RIOs, io.WIOs
	} else {
		s.CPUThrottledSeconds = float64(cs.ThrottledTimeNs) / 1e9
		if b, err = r.readFile(fCPUAcctUsage, buf); err != nil {
			return err
		}
		s.CPUUsageSeconds = float64(parseValue(b)) / 1e9
		if b, err = r.readFile(fCPUAcctStat, buf); err != nil {
			return err
		}
		as := parseCPUAcctStat(b)
		s.CPUUserSeconds = float64(as.User) / procstat.UserHZ
		s.CPUSystemSeconds = float64(as.System) / procstat.UserHZ
		if b, err = r.readFile(fMemFailcnt, buf); err != nil {
			return err
		}
		s.MemoryFailcnt = parseValue(b)
		if b, err = r.readFile(fMemStat, buf); err != nil {
			return err
		}
		ms = parseMemoryStatV1(b)
		if b, err = r.readFile(fMemOOM, buf); err != nil {
			return err
		}
		s.OOMKills = parseOOMKill(b)
		if b, err = r.readFile(fBlkioBytes, buf); err != nil {
			return err
		}
		s.BlkioReadBytes, s.BlkioWriteBytes = parseBlkioV1(b)
		if b, err = r.readFile(fBlkioOps, buf); err != nil {
			return err
		}
		s.BlkioReadOps, s.BlkioWriteOps = parseBlkioV1(b)
		if b, err = r.readFile(fCPUQuota, buf); err != nil {
			return err
		}
		s.CPUQuotaMicros = parseLimit(b) // -1: no quota
		if b, err = r.readFile(fCPUPeriod, buf); err != nil {
			return err
		}
		s.CPUPeriodMicros = parseValue(b)
		if b, err = r.readFile(fCPUShares, buf); err != nil {
			return err
		}
		s.CPUShares = sharesOrDefault(parseValue(b))
		if b, err = r.readFile(fMemReservation, buf); err != nil {
			return err
		}
		s.MemoryReservationBytes = parseLimit(b)
		s.MemorySwapBytes = ms.Swap
	}
	s.MemoryRSSBytes = ms.RSS
	s.MemoryCacheBytes = ms.Cache
	s.MemoryWorkingSetBytes = workingSet(s.MemoryUsageBytes, ms.InactiveFile)
	return nil
}
