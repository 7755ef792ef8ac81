package runtime

// Parsers for the cgroup files behind the exported stats. They work on the
// bytes a single pread returned, never allocate, and never fail: a line that
// does not parse is skipped and a value that does not parse reads as zero, so
// that one odd file (a kernel that adds a field, a truncated read) costs one
// figure, not the whole reading.

// unlimited is where a limit file's value stops meaning a limit: cgroup v1
// reports "no limit" as PAGE_COUNTER_MAX in bytes (9223372036854771712 with
// 4 KiB pages), v2 writes "max".
const unlimited = 1 << 62

// parseUint parses a decimal unsigned integer, ignoring surrounding
// whitespace. Anything else ("max", "-1", garbage, overflow) yields ok=false.
func parseUint(b []byte) (v uint64, ok bool) {
	b = trimSpace(b)
	if len(b) == 0 {
		return 0, false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (^uint64(0)-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	return v, true
}

// parseLimit parses a limit file (memory.limit_in_bytes, memory.max,
// pids.max): "max" or a value at or above the unlimited threshold is 0,
// meaning no limit.
func parseLimit(b []byte) uint64 {
	v, ok := parseUint(b)
	if !ok || v >= unlimited {
		return 0
	}
	return v
}

// parseValue parses a single-value file such as memory.usage_in_bytes; a
// value that does not parse is 0.
func parseValue(b []byte) uint64 {
	v, _ := parseUint(b)
	return v
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func trimSpace(b []byte) []byte {
	for len(b) > 0 && isSpace(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isSpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

// nextLine returns the first line of b and the rest after its newline.
func nextLine(b []byte) (line, rest []byte) {
	for i, c := range b {
		if c == '\n' {
			return b[:i], b[i+1:]
		}
	}
	return b, nil
}

// nextField splits off the first space-separated field of line.
func nextField(line []byte) (field, rest []byte) {
	for len(line) > 0 && line[0] == ' ' {
		line = line[1:]
	}
	for i, c := range line {
		if c == ' ' {
			return line[:i], line[i+1:]
		}
	}
	return line, nil
}

// forEachKeyValue calls fn for each "key value" line of a flat keyed file
// (memory.stat, cpu.stat, cpuacct.stat, memory.events, memory.oom_control).
// The key slice aliases b: fn must not keep it.
func forEachKeyValue(b []byte, fn func(key []byte, value uint64)) {
	for len(b) > 0 {
		var line []byte
		line, b = nextLine(b)
		key, rest := nextField(line)
		if len(key) == 0 {
			continue
		}
		v, ok := parseUint(rest)
		if !ok {
			continue
		}
		fn(key, v)
	}
}

// cpuacctStat is cgroup v1 cpuacct.stat: user and system time in USER_HZ
// ticks.
type cpuacctStat struct{ User, System uint64 }

func parseCPUAcctStat(b []byte) (s cpuacctStat) {
	forEachKeyValue(b, func(k []byte, v uint64) {
		switch string(k) {
		case "user":
			s.User = v
		case "system":
			s.System = v
		}
	})
	return s
}

// cpuStat is cpu.stat: v1 (cpu controller: nr_periods, nr_throttled,
// throttled_time in ns) and v2 (usage_usec, user_usec, system_usec,
// nr_periods, nr_throttled, throttled_usec) share the file name and the
// parser; the fields a version does not write stay zero.
type cpuStat struct {
	UsageUsec, UserUsec, SystemUsec uint64 // v2
	Periods, Throttled              uint64
	ThrottledTimeNs                 uint64 // v1
	ThrottledUsec                   uint64 // v2
}

func parseCPUStat(b []byte) (s cpuStat) {
	forEachKeyValue(b, func(k []byte, v uint64) {
		switch string(k) {
		case "usage_usec":
			s.UsageUsec = v
		case "user_usec":
			s.UserUsec = v
		case "system_usec":
			s.SystemUsec = v
		case "nr_periods":
			s.Periods = v
		case "nr_throttled":
			s.Throttled = v
		case "throttled_time":
			s.ThrottledTimeNs = v
		case "throttled_usec":
			s.ThrottledUsec = v
		}
	})
	return s
}

// memoryStat holds the memory.stat fields we export. v1 names the
// hierarchical figures total_*; v2 names them anon, file, inactive_file.
type memoryStat struct {
	RSS, Cache, InactiveFile uint64
	Swap                     uint64 // v1 total_swap (0 without swap accounting)
}

func parseMemoryStatV1(b []byte) (s memoryStat) {
	forEachKeyValue(b, func(k []byte, v uint64) {
		switch string(k) {
		case "total_rss":
			s.RSS = v
		case "total_cache":
			s.Cache = v
		case "total_inactive_file":
			s.InactiveFile = v
		case "total_swap":
			s.Swap = v
		}
	})
	return s
}

func parseMemoryStatV2(b []byte) (s memoryStat) {
	forEachKeyValue(b, func(k []byte, v uint64) {
		switch string(k) {
		case "anon":
			s.RSS = v
		case "file":
			s.Cache = v
		case "inactive_file":
			s.InactiveFile = v
		}
	})
	return s
}

// parseOOMKill returns the oom_kill counter of v1 memory.oom_control or v2
// memory.events.
func parseOOMKill(b []byte) (n uint64) {
	forEachKeyValue(b, func(k []byte, v uint64) {
		if string(k) == "oom_kill" {
			n = v
		}
	})
	return n
}

// memoryEventsV2 is the part of v2 memory.events we export: times usage
// hit memory.high (throttled and reclaimed) and memory.max, times the OOM
// killer was invoked, and processes it killed.
type memoryEventsV2 struct{ High, Max, OOM, OOMKill uint64 }

func parseMemoryEventsV2(b []byte) (e memoryEventsV2) {
	forEachKeyValue(b, func(k []byte, v uint64) {
		switch string(k) {
		case "high":
			e.High = v
		case "max":
			e.Max = v
		case "oom":
			e.OOM = v
		case "oom_kill":
			e.OOMKill = v
		}
	})
	return e
}

// workingSet is what the kubelet calls the working set: usage minus the
// inactive file cache, floored at zero.
func workingSet(usage, inactiveFile uint64) uint64 {
	if inactiveFile >= usage {
		return 0
	}
	return usage - inactiveFile
}

// parseBlkioV1 sums the Read and Write lines of a v1 blkio file
// (blkio.throttle.io_service_bytes_recursive, ..._serviced_recursive):
// "MAJ:MIN Op value" per device and op, and a closing "Total value".
func parseBlkioV1(b []byte) (read, write uint64) {
	for len(b) > 0 {
		var line []byte
		line, b = nextLine(b)
		dev, rest := nextField(line)
		if len(dev) == 0 || string(dev) == "Total" {
			continue
		}
		op, rest := nextField(rest)
		v, ok := parseUint(rest)
		if !ok {
			continue
		}
		switch string(op) {
		case "Read":
			read += v
		case "Write":
			write += v
		}
	}
	return read, write
}

// ioStatV2 is v2 io.stat summed over devices.
type ioStatV2 struct{ RBytes, WBytes, RIOs, WIOs uint64 }

// parseIOStatV2 parses v2 io.stat: "MAJ:MIN rbytes=N wbytes=N rios=N wios=N
// dbytes=N dios=N" per device.
func parseIOStatV2(b []byte) (s ioStatV2) {
	for len(b) > 0 {
		var line []byte
		line, b = nextLine(b)
		dev, rest := nextField(line)
		if len(dev) == 0 {
			continue
		}
		for len(rest) > 0 {
			var kv []byte
			kv, rest = nextField(rest)
			eq := -1
			for i, c := range kv {
				if c == '=' {
					eq = i
					break
				}
			}
			if eq < 0 {
				continue
			}
			v, ok := parseUint(kv[eq+1:])
			if !ok {
				continue
			}
			switch string(kv[:eq]) {
			case "rbytes":
				s.RBytes += v
			case "wbytes":
				s.WBytes += v
			case "rios":
				s.RIOs += v
			case "wios":
				s.WIOs += v
			}
		}
	}
	return s
}

// parseCPUMax parses v2 cpu.max, "$QUOTA $PERIOD" in microseconds with
// "max" for no quota. The quota is 0 when there is none (or it does not
// parse); the period is read either way.
func parseCPUMax(b []byte) (quota, period uint64) {
	q, rest := nextField(trimSpace(b))
	quota = parseLimit(q)
	period = parseValue(rest)
	return quota, period
}

// defaultShares is the kernel's default v1 cpu.shares (and the v2 default
// cpu.weight of 100 stands for it); a cgroup at the default reports 0.
const defaultShares = 1024

// sharesOrDefault returns v1 cpu.shares, 0 at the kernel default.
func sharesOrDefault(shares uint64) uint64 {
	if shares == defaultShares {
		return 0
	}
	return shares
}

// weightToShares converts v2 cpu.weight ([1, 10000]) to v1 shares ([2,
// 262144]) the way cAdvisor does (2 + (weight-1)*262142/9999), so that
// container_spec_cpu_shares queries carry over. The default weight (100)
// and a value out of range (or unreadable) read as 0.
func weightToShares(weight uint64) uint64 {
	if weight == 100 || weight < 1 || weight > 10000 {
		return 0
	}
	return 2 + (weight-1)*262142/9999
}
