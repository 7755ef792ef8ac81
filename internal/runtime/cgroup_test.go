package runtime

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
)

func TestResolveCgroupsPath(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		bad      bool
	}{
		{in: "/default/web", want: "/default/web"},
		{in: "/k8s.io/4f6c3b2a1e0d", want: "/k8s.io/4f6c3b2a1e0d"},
		{in: "default/web", want: "/default/web"},
		{in: "/kubepods/burstable/pod123/abc/", want: "/kubepods/burstable/pod123/abc"},
		{in: "system.slice:cri-containerd:abc", want: "/system.slice/cri-containerd-abc.scope"},
		{in: "kubepods-burstable-pod12.slice:cri-containerd:abc",
			want: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice/cri-containerd-abc.scope"},
		{in: ":cri-containerd:abc", want: "/system.slice/cri-containerd-abc.scope"},
		{in: "system.slice::abc", want: "/system.slice/abc.scope"},
		{in: "system.slice::abc.service", want: "/system.slice/abc.service"},
		{in: "-.slice:docker:abc", want: "/docker-abc.scope"},
		{in: "kubepods.slice::kubepods-besteffort.slice", want: "/kubepods.slice/kubepods-besteffort.slice"},
		{in: "", bad: true},
		{in: "/", bad: true},
		{in: "/a/../../etc", bad: true},
		{in: "a:b", bad: true},
		{in: "system.slice:p:", bad: true},
		{in: "bad:p:n", bad: true},
		{in: "a--b.slice:p:n", bad: true},
		{in: "system.slice:p:a/b", bad: true},
	} {
		got, err := resolveCgroupsPath(tc.in)
		if tc.bad {
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("resolveCgroupsPath(%q) = %q, %v; want ErrInvalid", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("resolveCgroupsPath(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestDetectCgroupLayout(t *testing.T) {
	v1, err := detectCgroupLayout("testdata/cgroup/v1")
	if err != nil {
		t.Fatal(err)
	}
	if v1.version != cgroupV1 || v1.cpu != "testdata/cgroup/v1/cpu" || v1.cpuacct != "testdata/cgroup/v1/cpuacct" || v1.memory == "" || v1.pids == "" || v1.blkio == "" {
		t.Errorf("v1 layout = %+v", v1)
	}
	v2, err := detectCgroupLayout("testdata/cgroup/v2")
	if err != nil {
		t.Fatal(err)
	}
	if v2.version != cgroupV2 || v2.unified != "testdata/cgroup/v2" {
		t.Errorf("v2 layout = %+v", v2)
	}
	combined := t.TempDir()
	for _, d := range []string{"cpu,cpuacct", "memory"} {
		if err := os.Mkdir(filepath.Join(combined, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	l, err := detectCgroupLayout(combined)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(combined, "cpu,cpuacct"); l.cpu != want || l.cpuacct != want || l.pids != "" {
		t.Errorf("combined layout = %+v", l)
	}
	if _, err := detectCgroupLayout(t.TempDir()); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("empty dir: err = %v, want ErrInvalid", err)
	}
	if _, err := detectCgroupLayout(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("missing dir: err = %v, want ErrInvalid", err)
	}
}

// readFixture opens the cgroup at rel under root and reads it once.
func readFixture(t *testing.T, root, rel string) Stats {
	t.Helper()
	l, err := detectCgroupLayout(root)
	if err != nil {
		t.Fatal(err)
	}
	r, err := openCgroup(l, rel)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	buf := make([]byte, 64) // small on purpose: the reader must grow it
	var s Stats
	now := time.Unix(1700000000, 0)
	if err := r.read(&s, &buf, now); err != nil {
		t.Fatal(err)
	}
	if !s.Time.Equal(now) {
		t.Errorf("Time = %v", s.Time)
	}
	s.Time = time.Time{}
	return s
}

func TestCgroupV1Fixture(t *testing.T) {
	// Files copied from a real v1 cgroup on this kind of machine (cpu and
	// cpuacct mounted apart), blkio device lines written in the kernel's
	// format; memory.failcnt, oom_kill, pids.current, rss and total_rss
	// given distinct non-zero values so that a wrong mapping shows.
	got := readFixture(t, "testdata/cgroup/v1", "/default/web")
	want := Stats{
		CPUUsageSeconds:       0.910711108,
		CPUUserSeconds:        0.35,
		CPUSystemSeconds:      0.55,
		CPUPeriods:            20,
		CPUThrottledPeriods:   17,
		CPUThrottledSeconds:   0.813493379,
		MemoryUsageBytes:      21860352,
		MemoryWorkingSetBytes: 21860352 - 21106688,
		MemoryRSSBytes:        524288, // total_rss, not rss
		MemoryCacheBytes:      21209088,
		MemoryLimitBytes:      67108864,
		MemoryFailcnt:         5,
		OOMKills:              2,
		PidsCurrent:           3,
		PidsLimit:             64,
		BlkioReadBytes:        4096 + 1024,
		BlkioWriteBytes:       20971520,
		BlkioReadOps:          3,
		BlkioWriteOps:         160,
		// The spec files: a 0.5-CPU quota, half the default shares, a
		// 32 MiB soft limit; swap from memory.stat's total_swap.
		CPUQuotaMicros:         50000,
		CPUPeriodMicros:        100000,
		CPUShares:              512,
		MemoryReservationBytes: 33554432,
		MemorySwapBytes:        8192,
	}
	if got != want {
		t.Errorf("v1 stats:\n got %+v\nwant %+v", got, want)
	}
}

func TestCgroupV2Fixture(t *testing.T) {
	rel, err := resolveCgroupsPath("kubepods-burstable-pod0f1e2d3c_4b5a_6978_8899_aabbccddeeff.slice:cri-containerd:4f6c3b2a1e0d")
	if err != nil {
		t.Fatal(err)
	}
	got := readFixture(t, "testdata/cgroup/v2", rel)
	want := Stats{
		CPUUsageSeconds:       8.412337,
		CPUUserSeconds:        6.120512,
		CPUSystemSeconds:      2.291825,
		CPUPeriods:            1204,
		CPUThrottledPeriods:   311,
		CPUThrottledSeconds:   9.876543,
		MemoryUsageBytes:      48234496,
		MemoryWorkingSetBytes: 48234496 - 12582912,
		MemoryRSSBytes:        31457280,
		MemoryCacheBytes:      15728640,
		MemoryLimitBytes:      67108864,
		MemoryFailcnt:         27,
		OOMKills:              1,
		PidsCurrent:           7,
		PidsLimit:             0, // max
		BlkioReadBytes:        1052672 + 4096,
		BlkioWriteBytes:       8388608,
		BlkioReadOps:          42,
		BlkioWriteOps:         256,
		// cpu.max "25000 100000"; cpu.weight 39 (what the kubelet writes
		// for 1024 shares) back to shares as cAdvisor converts it;
		// memory.low; memory.swap.current; memory.events high and oom.
		CPUQuotaMicros:         25000,
		CPUPeriodMicros:        100000,
		CPUShares:              998,
		MemoryReservationBytes: 16777216,
		MemorySwapBytes:        2097152,
		MemoryHighEvents:       5,
		MemoryOOMEvents:        2,
	}
	if got != want {
		t.Errorf("v2 stats:\n got %+v\nwant %+v", got, want)
	}

	web := readFixture(t, "testdata/cgroup/v2", "/default/web")
	if web.MemoryLimitBytes != 0 || web.MemoryWorkingSetBytes != 0 || web.PidsLimit != 4096 || web.CPUUsageSeconds != 1.5 {
		t.Errorf("v2 /default/web = %+v (want unlimited memory, working set floored at 0, pids limit 4096, 1.5 s CPU)", web)
	}
	// cpu.max "max 100000", the default weight, no memory.low nor swap file.
	if web.CPUQuotaMicros != 0 || web.CPUPeriodMicros != 100000 || web.CPUShares != 0 || web.MemoryReservationBytes != 0 || web.MemorySwapBytes != 0 {
		t.Errorf("v2 /default/web spec = %+v (want no quota, period 100000, default shares as 0, no reservation, no swap)", web)
	}
}

func TestOpenCgroupMissing(t *testing.T) {
	l, err := detectCgroupLayout("testdata/cgroup/v2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := openCgroup(l, "/no/such/cgroup"); err == nil {
		t.Fatal("openCgroup of a missing cgroup succeeded")
	}
}

func TestParseValuesAndLimits(t *testing.T) {
	for _, tc := range []struct {
		in    string
		value uint64
		limit uint64
	}{
		{"12345\n", 12345, 12345},
		{"max\n", 0, 0},
		{"9223372036854771712\n", 9223372036854771712, 0},
		{"-1", 0, 0},
		{"", 0, 0},
		{"18446744073709551616", 0, 0}, // overflows uint64
		{" 7 ", 7, 7},
	} {
		if got := parseValue([]byte(tc.in)); got != tc.value {
			t.Errorf("parseValue(%q) = %d, want %d", tc.in, got, tc.value)
		}
		if got := parseLimit([]byte(tc.in)); got != tc.limit {
			t.Errorf("parseLimit(%q) = %d, want %d", tc.in, got, tc.limit)
		}
	}
}

func TestParsersSkipOddLines(t *testing.T) {
	s := parseCPUStat([]byte("nr_periods 5\ngarbage\n\nnr_throttled x\nthrottled_time 9\nnew_field 1 2\n"))
	if s != (cpuStat{Periods: 5, ThrottledTimeNs: 9}) {
		t.Errorf("parseCPUStat = %+v", s)
	}
	r, w := parseBlkioV1([]byte("8:0 Read 10\n8:0 Write\n8:0 Write 5\nTotal 15\n\n8:16 Read 1"))
	if r != 11 || w != 5 {
		t.Errorf("parseBlkioV1 = %d, %d", r, w)
	}
	io := parseIOStatV2([]byte("8:0 rbytes=1 wbytes=2 rios=3 wios=4 junk dbytes=5\n8:16 rbytes=x wbytes=10\n"))
	if io != (ioStatV2{RBytes: 1, WBytes: 12, RIOs: 3, WIOs: 4}) {
		t.Errorf("parseIOStatV2 = %+v", io)
	}
	if workingSet(10, 20) != 0 || workingSet(20, 5) != 15 {
		t.Error("workingSet does not floor at 0")
	}
}

func TestParseCPUSpec(t *testing.T) {
	for _, tc := range []struct {
		in            string
		quota, period uint64
	}{
		{"max 100000\n", 0, 100000},
		{"50000 100000\n", 50000, 100000},
		{"50000\n", 50000, 0},
		{"", 0, 0},
		{"junk 100000", 0, 100000},
	} {
		if q, p := parseCPUMax([]byte(tc.in)); q != tc.quota || p != tc.period {
			t.Errorf("parseCPUMax(%q) = %d, %d; want %d, %d", tc.in, q, p, tc.quota, tc.period)
		}
	}
	for _, tc := range []struct{ weight, shares uint64 }{
		{1, 2}, {10000, 262144}, {39, 998}, {100, 0}, {0, 0}, {10001, 0},
	} {
		if got := weightToShares(tc.weight); got != tc.shares {
			t.Errorf("weightToShares(%d) = %d, want %d", tc.weight, got, tc.shares)
		}
	}
	if sharesOrDefault(1024) != 0 || sharesOrDefault(2048) != 2048 {
		t.Error("sharesOrDefault: 1024 is the default (0), others pass through")
	}
}

func TestReadDoesNotAllocate(t *testing.T) {
	l, err := detectCgroupLayout("testdata/cgroup/v1")
	if err != nil {
		t.Fatal(err)
	}
	r, err := openCgroup(l, "/default/web")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	buf := make([]byte, 4096)
	var s Stats
	now := time.Now()
	allocs := testing.AllocsPerRun(50, func() {
		if err := r.read(&s, &buf, now); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("a cgroup read allocates %v times; want 0 (buffers are reused)", allocs)
	}
}
