package runtimebench

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/procstat"
	"github.com/vigilhq/vigil/internal/runtime"
	"github.com/vigilhq/vigil/internal/testenv"
)

var (
	containersFlag = flag.String("containers", "", "comma-separated container counts to measure (e.g. 100,500); empty skips the benchmark")
	cyclesFlag     = flag.Int("cycles", 20, "collection cycles per measured window")
	intervalFlag   = flag.Duration("interval", time.Second, "time between cycles inside a window (the cost per cycle does not depend on it; shorter windows keep the idle noise of hundreds of shims small)")
	reportFlag     = flag.String("report", "", "append the results as a Markdown table to this file")
	pathsFlag      = flag.String("paths", "cgroup,metrics-api,agent", "what to measure at each count: the collector on the cgroup path, on the task Metrics API, and the whole agent")
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// buildCollector builds the collector-only program into a temp dir.
func buildCollector(t *testing.T) string {
	return buildRelease(t, "collector", "github.com/vigilhq/vigil/test/bench/runtime/collector")
}

// child is a running collector process.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
}

func startChild(t *testing.T, bin string, env *testenv.Env, ns, source string, want int) *child {
	t.Helper()
	cmd := exec.Command(bin, "-address", env.Address, "-namespace", ns, "-source", source,
		"-want", strconv.Itoa(want), "-cycles", strconv.Itoa(*cyclesFlag), "-interval", intervalFlag.String())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if !c.out.Scan() || c.out.Text() != "ready" {
		t.Fatalf("collector child did not get ready: %q", c.out.Text())
	}
	return c
}

// collect runs one window of cycles and returns the child's report.
func (c *child) collect(t *testing.T) (read int, meanWallUs int64) {
	t.Helper()
	if _, err := io.WriteString(c.stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
	if !c.out.Scan() {
		t.Fatal("collector child stopped")
	}
	if _, err := fmt.Sscanf(c.out.Text(), "done %d %d", &read, &meanWallUs); err != nil {
		t.Fatalf("collector child said %q", c.out.Text())
	}
	return read, meanWallUs
}

// cpuTicks is utime+stime of pid in clock ticks (USER_HZ), 0 when gone.
func cpuTicks(pid int) uint64 {
	st, _ := procstat.Read(strconv.Itoa(pid))
	return st.UTime + st.STime
}

// rssKiB is VmRSS of pid.
func rssKiB(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			v, _ := strconv.ParseUint(strings.Fields(l)[1], 10, 64)
			return v
		}
	}
	return 0
}

// runtimePids finds env's containerd and its shims from /proc.
func runtimePids(t *testing.T, env *testenv.Env) (containerd int, shims []int) {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		base := filepath.Base(args[0])
		switch {
		case base == "containerd" && strings.Contains(string(b), env.Dir):
			containerd = pid
		case strings.HasPrefix(base, "containerd-shim") && strings.Contains(string(b), env.Address):
			shims = append(shims, pid)
		}
	}
	if containerd == 0 {
		t.Fatal("containerd process not found")
	}
	return containerd, shims
}

// window is CPU ticks spent in one measured window.
type window struct {
	collector, containerd, shims uint64
	wall                         time.Duration
}

func measure(collector, containerd int, shims []int, run func()) window {
	sum := func() (c, d, s uint64) {
		c, d = cpuTicks(collector), cpuTicks(containerd)
		for _, p := range shims {
			s += cpuTicks(p)
		}
		return
	}
	c0, d0, s0 := sum()
	start := time.Now()
	run()
	c1, d1, s1 := sum()
	return window{collector: c1 - c0, containerd: d1 - d0, shims: s1 - s0, wall: time.Since(start)}
}

// result is one path's cost at one container count.
type result struct {
	containers, read                          int
	source                                    string
	collectorMs, containerdMs, shimsMs, allMs float64 // CPU per cycle, idle subtracted
	wallMs                                    float64 // mean wall time of one Stats call
	rssMiB                                    float64
}

func TestCollectionCost(t *testing.T) {
	if *containersFlag == "" {
		t.Skip("benchmark: run with -containers 100,500 (starts that many containers)")
	}
	env := testenv.Containerd(t)
	ns := "bench"
	image := env.BusyboxImage(t, ns)
	paths := map[string]bool{}
	for _, p := range strings.Split(*pathsFlag, ",") {
		switch p = strings.TrimSpace(p); p {
		case runtime.StatsSourceCgroup, runtime.StatsSourceMetricsAPI, "agent":
			paths[p] = true
		default:
			t.Fatalf("bad -paths entry %q: want cgroup, metrics-api or agent", p)
		}
	}
	bin := buildCollector(t)
	var agentBin agentBins
	if paths["agent"] {
		agentBin = buildAgent(t)
	}
	var results []result
	var agentResults []agentResult
	started := 0
	for _, f := range strings.Split(*containersFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			t.Fatalf("bad -containers entry %q", f)
		}
		t0 := time.Now()
		for ; started < n; started++ {
			env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: fmt.Sprintf("c%04d", started), Image: image, Args: []string{"sleep", "1000000"}})
		}
		t.Logf("%d containers running (%s to start)", n, time.Since(t0).Round(time.Second))
		for _, source := range []string{runtime.StatsSourceCgroup, runtime.StatsSourceMetricsAPI} {
			if !paths[source] {
				continue
			}
			c := startChild(t, bin, env, ns, source, n)
			containerd, shims := runtimePids(t, env)
			pid := c.cmd.Process.Pid
			time.Sleep(2 * time.Second) // let the child's start-up settle
			span := time.Duration(*cyclesFlag) * *intervalFlag
			idle := measure(pid, containerd, shims, func() { time.Sleep(span) })
			var read int
			var wallUs int64
			busy := measure(pid, containerd, shims, func() { read, wallUs = c.collect(t) })
			idle2 := measure(pid, containerd, shims, func() { time.Sleep(span) })
			rss := rssKiB(pid)
			// Scale each idle window to the busy window's length and average
			// the two around it.
			perCycle := func(b, i1, i2 uint64) float64 {
				base := (float64(i1)/idle.wall.Seconds() + float64(i2)/idle2.wall.Seconds()) / 2 * busy.wall.Seconds()
				return (float64(b) - base) * 10 / float64(*cyclesFlag) // ticks are 10 ms
			}
			r := result{
				containers: n, read: read, source: source,
				collectorMs:  perCycle(busy.collector, idle.collector, idle2.collector),
				containerdMs: perCycle(busy.containerd, idle.containerd, idle2.containerd),
				shimsMs:      perCycle(busy.shims, idle.shims, idle2.shims),
				wallMs:       float64(wallUs) / 1000,
				rssMiB:       float64(rss) / 1024,
			}
			r.allMs = r.collectorMs + r.containerdMs + r.shimsMs
			t.Logf("%d containers, %s: read %d; CPU per cycle: collector %.1f ms, containerd %.1f ms, shims %.1f ms, total %.1f ms; Stats wall %.1f ms; collector RSS %.1f MiB (idle shims: %.1f%% of a core)",
				n, source, read, r.collectorMs, r.containerdMs, r.shimsMs, r.allMs, r.wallMs, r.rssMiB,
				float64(idle.shims)*10/idle.wall.Seconds()/10)
			if read != n {
				t.Errorf("%s read %d containers, want %d", source, read, n)
			}
			results = append(results, r)
			c.stdin.Close()
			_ = c.cmd.Wait()
		}
		if paths["agent"] {
			agentResults = append(agentResults, measureAgent(t, agentBin, env, ns, n))
		}
	}
	if *reportFlag != "" {
		if len(results) > 0 {
			writeReport(t, results)
		}
		if len(agentResults) > 0 {
			writeAgentReport(t, agentResults)
		}
	}
}

func writeReport(t *testing.T, rs []result) {
	var b strings.Builder
	fmt.Fprintf(&b, "\n| containers | source | containers read | collector CPU/cycle | containerd CPU/cycle | shims CPU/cycle | total CPU/cycle | %% of a core at 10 s | Stats wall | collector RSS |\n")
	fmt.Fprintf(&b, "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range rs {
		fmt.Fprintf(&b, "| %d | %s | %d | %.1f ms | %.1f ms | %.1f ms | **%.1f ms** | %.2f%% | %.1f ms | %.1f MiB |\n",
			r.containers, r.source, r.read, r.collectorMs, r.containerdMs, r.shimsMs, r.allMs, r.allMs/100, r.wallMs, r.rssMiB)
	}
	f, err := os.OpenFile(*reportFlag, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(b.String()); err != nil {
		t.Fatal(err)
	}
}
