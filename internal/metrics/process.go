package metrics

import (
	"errors"
	"io"
	"os"
	"runtime"
	"runtime/metrics"
	"sync"
	"syscall"

	"github.com/vigilhq/vigil/internal/procstat"
)

// ProcessCollector writes the standard go_* and process_* series of the
// calling process, under the names client_golang's Go and process
// collectors use, so that dashboards written for those keep working:
//
//	process_cpu_seconds_total, process_resident_memory_bytes,
//	process_virtual_memory_bytes, process_open_fds, process_max_fds,
//	process_start_time_seconds (from /proc/self; Linux only, absent elsewhere)
//	go_goroutines, go_threads, go_info, go_sched_gomaxprocs_threads,
//	go_gc_gogc_percent, go_gc_gomemlimit_bytes, go_memstats_alloc_bytes_total,
//	go_memstats_heap_alloc_bytes, go_memstats_heap_inuse_bytes,
//	go_memstats_heap_idle_bytes, go_memstats_heap_released_bytes,
//	go_memstats_stack_inuse_bytes, go_memstats_sys_bytes,
//	go_memstats_next_gc_bytes (from runtime/metrics, without stopping the world)
//
// plus go_gc_cycles_total, which client_golang's default Go collector does
// not have, for seeing how often the collector runs.
func ProcessCollector() Collector {
	p := &processCollector{samples: make([]metrics.Sample, len(runtimeSamples))}
	for i, name := range runtimeSamples {
		p.samples[i].Name = name
	}
	return p
}

type processCollector struct {
	mu      sync.Mutex
	samples []metrics.Sample
}

// runtimeSamples are the runtime/metrics values read at each scrape, in the
// order of the indexes below.
var runtimeSamples = []string{
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/unused:bytes",
	"/memory/classes/heap/free:bytes",
	"/memory/classes/heap/released:bytes",
	"/memory/classes/heap/stacks:bytes",
	"/memory/classes/total:bytes",
	"/gc/heap/goal:bytes",
	"/gc/heap/allocs:bytes",
	"/gc/cycles/total:gc-cycles",
	"/gc/gogc:percent",
	"/gc/gomemlimit:bytes",
	"/sched/gomaxprocs:threads",
}

const (
	rmHeapObjects = iota
	rmHeapUnused
	rmHeapFree
	rmHeapReleased
	rmStacks
	rmTotal
	rmGoal
	rmAllocs
	rmCycles
	rmGOGC
	rmMemLimit
	rmMaxProcs
)

var (
	descGoroutines   = NewDesc("go_goroutines", "Number of goroutines that currently exist.", GaugeType)
	descThreads      = NewDesc("go_threads", "Number of OS threads created.", GaugeType)
	descGoInfo       = NewDesc("go_info", "Information about the Go environment.", GaugeType, "version")
	descMaxProcs     = NewDesc("go_sched_gomaxprocs_threads", "The current runtime.GOMAXPROCS setting, or the number of operating system threads that can execute user-level Go code simultaneously.", GaugeType)
	descGOGC         = NewDesc("go_gc_gogc_percent", "Heap size target percentage configured by the user, otherwise 100. This value is set by the GOGC environment variable, and the runtime/debug.SetGCPercent function.", GaugeType)
	descMemLimit     = NewDesc("go_gc_gomemlimit_bytes", "Go runtime memory limit configured by the user, otherwise math.MaxInt64. This value is set by the GOMEMLIMIT environment variable, and the runtime/debug.SetMemoryLimit function.", GaugeType)
	descGCCycles     = NewDesc("go_gc_cycles_total", "Completed garbage collection cycles, forced ones included.", CounterType)
	descAllocTotal   = NewDesc("go_memstats_alloc_bytes_total", "Total number of bytes allocated in heap until now, even if released already.", CounterType)
	descHeapAlloc    = NewDesc("go_memstats_heap_alloc_bytes", "Number of heap bytes allocated and currently in use.", GaugeType)
	descHeapInuse    = NewDesc("go_memstats_heap_inuse_bytes", "Number of heap bytes that are in use.", GaugeType)
	descHeapIdle     = NewDesc("go_memstats_heap_idle_bytes", "Number of heap bytes waiting to be used.", GaugeType)
	descHeapReleased = NewDesc("go_memstats_heap_released_bytes", "Number of heap bytes released to OS.", GaugeType)
	descStackInuse   = NewDesc("go_memstats_stack_inuse_bytes", "Number of bytes obtained from system for stack allocator.", GaugeType)
	descSys          = NewDesc("go_memstats_sys_bytes", "Number of bytes obtained from system.", GaugeType)
	descNextGC       = NewDesc("go_memstats_next_gc_bytes", "Number of heap bytes when next garbage collection will take place.", GaugeType)

	descCPU       = NewDesc("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", CounterType)
	descRSS       = NewDesc("process_resident_memory_bytes", "Resident memory size in bytes.", GaugeType)
	descVSize     = NewDesc("process_virtual_memory_bytes", "Virtual memory size in bytes.", GaugeType)
	descOpenFDs   = NewDesc("process_open_fds", "Number of open file descriptors.", GaugeType)
	descMaxFDs    = NewDesc("process_max_fds", "Maximum number of open file descriptors.", GaugeType)
	descStartTime = NewDesc("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", GaugeType)
)

func (p *processCollector) Collect(w *Writer) {
	p.mu.Lock()
	metrics.Read(p.samples)
	v := make([]float64, len(p.samples))
	for i, s := range p.samples {
		if s.Value.Kind() == metrics.KindUint64 {
			v[i] = float64(s.Value.Uint64())
		}
	}
	p.mu.Unlock()
	w.Sample(descGoroutines, float64(runtime.NumGoroutine()))
	w.Sample(descGoInfo, 1, runtime.Version())
	w.Sample(descMaxProcs, v[rmMaxProcs])
	w.Sample(descGOGC, v[rmGOGC])
	w.Sample(descMemLimit, v[rmMemLimit])
	w.Sample(descGCCycles, v[rmCycles])
	w.Sample(descAllocTotal, v[rmAllocs])
	w.Sample(descHeapAlloc, v[rmHeapObjects])
	w.Sample(descHeapInuse, v[rmHeapObjects]+v[rmHeapUnused])
	w.Sample(descHeapIdle, v[rmHeapFree]+v[rmHeapReleased])
	w.Sample(descHeapReleased, v[rmHeapReleased])
	w.Sample(descStackInuse, v[rmStacks])
	w.Sample(descSys, v[rmTotal])
	w.Sample(descNextGC, v[rmGoal])

	if st, ok := procstat.Read("self"); ok {
		w.Sample(descThreads, float64(st.Threads))
		w.Sample(descCPU, st.CPUSeconds())
		w.Sample(descRSS, float64(st.RSSBytes()))
		w.Sample(descVSize, float64(st.VSize))
		if start := st.StartTime(); !start.IsZero() {
			w.Sample(descStartTime, float64(start.UnixNano())/1e9)
		}
	}
	if n, err := openFDs(); err == nil {
		w.Sample(descOpenFDs, float64(n))
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		w.Sample(descMaxFDs, float64(lim.Cur))
	}
}

func openFDs() (int, error) {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return 0, err
	}
	defer d.Close()
	n := 0
	for {
		names, err := d.Readdirnames(256)
		n += len(names)
		if errors.Is(err, io.EOF) || err == nil && len(names) == 0 {
			// The descriptor of the directory itself is not one of ours.
			return n - 1, nil
		}
		if err != nil {
			return 0, err
		}
	}
}
