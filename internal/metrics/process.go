package metrics

import (
	"bytes"
	"errors"
	"io"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"sync"
	"syscall"
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
	for i, s := range runtimeSamples {
		p.samples[i].Name = s.name
	}
	return p
}

type processCollector struct {
	mu      sync.Mutex
	samples []metrics.Sample
}

// runtimeSamples are the runtime/metrics values read at each scrape.
var runtimeSamples = []struct{ name string }{
	{"/memory/classes/heap/objects:bytes"},  // 0
	{"/memory/classes/heap/unused:bytes"},   // 1
	{"/memory/classes/heap/free:bytes"},     // 2
	{"/memory/classes/heap/released:bytes"}, // 3
	{"/memory/classes/heap/stacks:bytes"},   // 4
	{"/memory/classes/total:bytes"},         // 5
	{"/gc/heap/goal:bytes"},                 // 6
	{"/gc/heap/allocs:bytes"},               // 7
	{"/gc/cycles/total:gc-cycles"},          // 8
	{"/gc/gogc:percent"},                    // 9
	{"/gc/gomemlimit:bytes"},                // 10
	{"/sched/gomaxprocs:threads"},           // 11
}

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
	w.Sample(descMaxProcs, v[11])
	w.Sample(descGOGC, v[9])
	w.Sample(descMemLimit, v[10])
	w.Sample(descGCCycles, v[8])
	w.Sample(descAllocTotal, v[7])
	w.Sample(descHeapAlloc, v[0])
	w.Sample(descHeapInuse, v[0]+v[1])
	w.Sample(descHeapIdle, v[2]+v[3])
	w.Sample(descHeapReleased, v[3])
	w.Sample(descStackInuse, v[4])
	w.Sample(descSys, v[5])
	w.Sample(descNextGC, v[6])

	st, ok := readProcSelf()
	if !ok {
		return
	}
	w.Sample(descThreads, float64(st.threads))
	w.Sample(descCPU, st.cpuSeconds)
	w.Sample(descRSS, float64(st.rss))
	w.Sample(descVSize, float64(st.vsize))
	if st.startTime > 0 {
		w.Sample(descStartTime, st.startTime)
	}
	if n, err := openFDs(); err == nil {
		w.Sample(descOpenFDs, float64(n))
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		w.Sample(descMaxFDs, float64(lim.Cur))
	}
}

// userHZ is the unit of the CPU times in /proc/PID/stat: USER_HZ, 100 on
// every Linux architecture Go supports (sysconf(_SC_CLK_TCK), as procfs
// also assumes).
const userHZ = 100

type procStat struct {
	threads    int64
	cpuSeconds float64
	vsize, rss uint64
	startTime  float64 // 0 when the boot time is unknown
}

// readProcSelf reads /proc/self/stat; ok is false where there is none.
func readProcSelf() (procStat, bool) {
	var st procStat
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return st, false
	}
	// The command name (field 2) is in parentheses and may hold spaces;
	// the fields after it start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return st, false
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state): field N is f[N-3].
	if len(f) < 22 {
		return st, false
	}
	num := func(n int) uint64 {
		v, _ := strconv.ParseUint(string(f[n-3]), 10, 64)
		return v
	}
	st.cpuSeconds = float64(num(14)+num(15)) / userHZ
	st.threads = int64(num(20))
	st.vsize = num(23)
	st.rss = num(24) * uint64(os.Getpagesize())
	if boot, ok := bootTime(); ok {
		st.startTime = float64(boot) + float64(num(22))/userHZ
	}
	return st, true
}

// bootTime is the btime line of /proc/stat, read once.
var bootTime = sync.OnceValues(func() (uint64, bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, false
	}
	for line := range bytes.SplitSeq(b, []byte{'\n'}) {
		if rest, ok := bytes.CutPrefix(line, []byte("btime ")); ok {
			v, err := strconv.ParseUint(string(bytes.TrimSpace(rest)), 10, 64)
			return v, err == nil
		}
	}
	return 0, false
})

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
