// Package procstat reads the few figures Vigil takes from /proc/PID/stat
// and /proc/stat: a process's CPU time, resident and virtual size, threads
// and start time (the agent's own, for its self-metrics and node status; a
// container's task, for its start time after a relist).
package procstat

import (
	"bytes"
	"os"
	"strconv"
	"sync"
	"time"
)

// UserHZ is the unit of the CPU and start times in /proc/PID/stat (and of
// cgroup v1's cpuacct.stat): USER_HZ, 100 on every Linux ABI.
const UserHZ = 100

// Stat is the part of /proc/PID/stat Vigil uses.
type Stat struct {
	UTime, STime uint64 // fields 14 and 15, in UserHZ ticks
	Threads      uint64 // field 20
	StartTicks   uint64 // field 22: ticks after boot
	VSize        uint64 // field 23, bytes
	RSSPages     uint64 // field 24
}

// Parse reads a /proc/PID/stat line. The command (field 2) may hold spaces
// and parentheses, so fields are counted after its last ')'. ok is false
// for a line too short to hold field 24; a field that is not a number
// reads as 0.
func Parse(b []byte) (st Stat, ok bool) {
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
	return Stat{
		UTime: num(14), STime: num(15), Threads: num(20),
		StartTicks: num(22), VSize: num(23), RSSPages: num(24),
	}, true
}

// Read reads /proc/PID/stat of pid ("self" for the calling process).
func Read(pid string) (Stat, bool) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return Stat{}, false
	}
	return Parse(b)
}

// CPUSeconds is the user and system CPU time.
func (s Stat) CPUSeconds() float64 { return float64(s.UTime+s.STime) / UserHZ }

// RSSBytes is the resident set size.
func (s Stat) RSSBytes() uint64 { return s.RSSPages * uint64(os.Getpagesize()) }

// StartTime is when the process started (accurate to about a second: the
// boot time is in whole seconds); zero when the boot time is unknown.
func (s Stat) StartTime() time.Time {
	bt := BootTime()
	if bt.IsZero() {
		return time.Time{}
	}
	return bt.Add(time.Duration(s.StartTicks) * time.Second / UserHZ)
}

// BootTime is the btime line of /proc/stat, read once; zero when unknown.
var BootTime = sync.OnceValue(func() time.Time {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}
	}
	for line := range bytes.SplitSeq(b, []byte{'\n'}) {
		if rest, ok := bytes.CutPrefix(line, []byte("btime ")); ok {
			if v, err := strconv.ParseUint(string(bytes.TrimSpace(rest)), 10, 64); err == nil {
				return time.Unix(int64(v), 0)
			}
		}
	}
	return time.Time{}
})
