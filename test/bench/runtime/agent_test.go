package runtimebench

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/vigilhq/vigil/internal/pki"
	"github.com/vigilhq/vigil/internal/testenv"
)

var (
	agentIntervalFlag = flag.Duration("agent-interval", 10*time.Second, "the whole agent's -interval (its default)")
	agentCyclesFlag   = flag.Int("agent-cycles", 12, "sampling cycles in the whole agent's measured window")
)

// buildRelease builds one of Vigil's commands the way the Makefile does.
func buildRelease(t *testing.T, name, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	testenv.BuildRelease(t, pkg, bin)
	return bin
}

// agentBins are the binaries of the whole-agent measurement.
type agentBins struct{ agent, aggregator string }

func buildAgent(t *testing.T) agentBins {
	return agentBins{
		agent:      buildRelease(t, "vigil-agent", "github.com/vigilhq/vigil/cmd/agent"),
		aggregator: buildRelease(t, "vigil-aggregator", "github.com/vigilhq/vigil/cmd/aggregator"),
	}
}

// startAggregator runs a real aggregator on loopback with mutual TLS and
// returns its gRPC address and the agent's TLS flags.
func startAggregator(t *testing.T, bin string) (addr string, agentTLS []string) {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.NewCA("vigil-bench-ca")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.WriteFiles(dir, "aggregator", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ca.WriteFiles(dir, "agent", "bench")
	if err != nil {
		t.Fatal(err)
	}
	addr = freePort(t)
	cmd := exec.Command(bin, "-grpc-listen", addr, "-http-listen", freePort(t),
		"-tls-cert", srv.Cert, "-tls-key", srv.Key, "-tls-ca", srv.CA, "-log-level", "warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	})
	return addr, []string{"-aggregator", addr, "-tls-cert", cli.Cert, "-tls-key", cli.Key, "-tls-ca", cli.CA, "-tls-server-name", "localhost"}
}

// memory is the resident memory of a process, from /proc/PID/status.
type memory struct {
	rss, anon, file, hwm uint64 // KiB
}

// rssPeak samples a process's VmRSS every 250 ms and keeps the highest:
// VmHWM alone is no peak, as the kernel raises it only at some points (an
// unmap, for one), so it can read lower than an RSS read before it.
type rssPeak struct {
	max  atomic.Uint64 // KiB
	stop chan struct{}
	done chan struct{}
}

func sampleRSS(pid int) *rssPeak {
	p := &rssPeak{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			if rss := memoryOf(pid).rss; rss > p.max.Load() {
				p.max.Store(rss)
			}
			select {
			case <-p.stop:
				return
			case <-t.C:
			}
		}
	}()
	return p
}

func (p *rssPeak) close() { close(p.stop); <-p.done }

// withPeak is m with its peak the higher of VmHWM and the sampled peak.
func (p *rssPeak) withPeak(m memory) memory {
	m.hwm = max(m.hwm, p.max.Load(), m.rss)
	return m
}

func memoryOf(pid int) memory {
	var m memory
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseUint(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			m.rss = v
		case "RssAnon:":
			m.anon = v
		case "RssFile:":
			m.file = v
		case "VmHWM:":
			m.hwm = v
		}
	}
	return m
}

// agentResult is the whole agent's cost at one container count.
type agentResult struct {
	containers, seen                          int
	agentMs, containerdMs, shimsMs, allMs     float64 // CPU per cycle
	mem                                       memory
	idleContainerdPct, idleShimsPct, agentPct float64
	// The same agent in the next window of the same length, its local
	// /metrics scraped once per cycle.
	scraped      scrapedResult
	scrapeBytes  int
	scrapeSeries int
}

type scrapedResult struct {
	agentMs, containerdMs, shimsMs, allMs, agentPct float64
	mem                                             memory
	scrapes                                         int
}

// freePort is a loopback address nothing listens on.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// runtimeCalls reads the agent's count of each containerd API call
// (the vigil_agent_runtime_api_call_duration_seconds histogram's count, by
// call) from /metrics/self with Prometheus's text parser, so that
// containerd's CPU in a window can be set beside what the agent asked of
// it.
func runtimeCalls(t *testing.T, url string) map[string]float64 {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(get(t, url)))
	if err != nil {
		t.Fatalf("%s: %v", url, err)
	}
	out := map[string]float64{}
	for _, m := range families["vigil_agent_runtime_api_call_duration_seconds"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "call" {
				out[l.GetValue()] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// diffCalls renders after-before per call, "none" when no call was made.
func diffCalls(after, before map[string]float64) string {
	var parts []string
	for name, v := range after {
		if d := v - before[name]; d > 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f", name, d))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// countSeries counts the samples of one metric family on a /metrics page.
func countSeries(url, family string) int {
	resp, err := http.Get(url)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	n := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), family+"{") {
			n++
		}
	}
	return n
}

// measureAgent runs the real vigil-agent on env's namespace ns with n
// running containers and every part on (runtime, health, network, local
// /metrics, and its mTLS stream to a real aggregator), sampling every
// -agent-interval. Its cost per cycle is all of
// its CPU over a window divided by the cycles in it (an agent never idles,
// so there is no idle window of its own to subtract); containerd's and the
// shims' extra CPU is against a window of the same length with no agent.
func measureAgent(t *testing.T, bins agentBins, env *testenv.Env, ns string, n int) agentResult {
	t.Helper()
	_, tlsFlags := startAggregator(t, bins.aggregator)
	if hold := os.Getenv("VIGIL_BENCH_HOLD"); hold != "" {
		d, err := time.ParseDuration(hold)
		if err != nil {
			t.Fatalf("VIGIL_BENCH_HOLD=%q: %v", hold, err)
		}
		t.Logf("holding for %s; an agent on this scene: vigil-agent -containerd %s -namespaces %s %s",
			d, env.Address, ns, strings.Join(tlsFlags, " "))
		time.Sleep(d)
	}
	containerd, shims := runtimePids(t, env)
	interval := *agentIntervalFlag
	span := time.Duration(*agentCyclesFlag) * interval
	idle := measure(0, containerd, shims, func() { time.Sleep(span) })

	addr := freePort(t)
	cmd := exec.Command(bins.agent, append([]string{
		"-containerd", env.Address, "-namespaces", ns,
		"-interval", interval.String(),
		"-state-dir", t.TempDir(), "-metrics-listen", addr,
		"-node-name", "bench", "-log-level", "warn"}, tlsFlags...)...)
	cmd.Stderr = os.Stderr
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	peak := sampleRSS(cmd.Process.Pid)
	defer peak.close()
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}()
	url := "http://" + addr + "/metrics"
	deadline := time.Now().Add(2 * time.Minute)
	seen := 0
	for seen < n {
		if time.Now().After(deadline) {
			t.Fatalf("agent reported usage of %d of %d containers after 2 minutes", seen, n)
		}
		time.Sleep(200 * time.Millisecond)
		seen = countSeries(url, "vigil_container_memory_working_set_bytes")
	}
	for !strings.Contains(get(t, "http://"+addr+"/metrics/self"), "vigil_agent_uplink_connected 1") {
		if time.Now().After(deadline) {
			t.Fatal("agent not connected to the aggregator after 2 minutes")
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(interval + 5*time.Second) // let start-up settle
	pid := cmd.Process.Pid
	self := "http://" + addr + "/metrics/self"
	calls0 := runtimeCalls(t, self)
	busy := measure(pid, containerd, shims, func() { time.Sleep(span) })
	calls := diffCalls(runtimeCalls(t, self), calls0)
	mem := peak.withPeak(memoryOf(pid))
	seen = countSeries(url, "vigil_container_memory_working_set_bytes")
	cycles := busy.wall.Seconds() / interval.Seconds()
	perCycle := func(b, i uint64) float64 {
		base := float64(i) / idle.wall.Seconds() * busy.wall.Seconds()
		return (float64(b) - base) * 10 / cycles // ticks are 10 ms
	}
	r := agentResult{
		containers: n, seen: seen,
		agentMs:      float64(busy.collector) * 10 / cycles,
		containerdMs: perCycle(busy.containerd, idle.containerd),
		shimsMs:      perCycle(busy.shims, idle.shims),
		mem:          mem,
		agentPct:     float64(busy.collector) * 10 / busy.wall.Seconds() / 10,
	}
	r.allMs = r.agentMs + r.containerdMs + r.shimsMs
	t.Logf("containerd calls by the agent in the unscraped window (%d cycles), by call: %s (none of the events stream or the metrics-API fallback is counted here)",
		int(cycles+0.5), calls)

	// The scraped variant: the next window of the same length, with
	// /metrics read once per interval, as a Prometheus would.
	scrapes := 0
	sw := measure(pid, containerd, shims, func() {
		end := time.Now().Add(span)
		for next := time.Now(); next.Before(end); next = next.Add(interval) {
			time.Sleep(time.Until(next))
			body := get(t, url)
			scrapes++
			r.scrapeBytes = len(body)
			r.scrapeSeries = 0
			for _, l := range strings.Split(body, "\n") {
				if l != "" && l[0] != '#' {
					r.scrapeSeries++
				}
			}
		}
		time.Sleep(time.Until(end))
	})
	scycles := sw.wall.Seconds() / interval.Seconds()
	sPerCycle := func(b, i uint64) float64 {
		base := float64(i) / idle.wall.Seconds() * sw.wall.Seconds()
		return (float64(b) - base) * 10 / scycles
	}
	r.scraped = scrapedResult{
		agentMs:      float64(sw.collector) * 10 / scycles,
		containerdMs: sPerCycle(sw.containerd, idle.containerd),
		shimsMs:      sPerCycle(sw.shims, idle.shims),
		mem:          peak.withPeak(memoryOf(pid)),
		scrapes:      scrapes,
		agentPct:     float64(sw.collector) * 10 / sw.wall.Seconds() / 10,
	}
	r.scraped.allMs = r.scraped.agentMs + r.scraped.containerdMs + r.scraped.shimsMs
	t.Logf("%d containers, whole agent scraped every %s (%d scrapes of %d bytes, %d series): CPU per cycle: agent %.1f ms, containerd %+.1f ms, shims %+.1f ms (agent %.2f%% of a core); RSS %.1f MiB (peak %.1f)",
		n, interval, scrapes, r.scrapeBytes, r.scrapeSeries, r.scraped.agentMs, r.scraped.containerdMs, r.scraped.shimsMs, r.scraped.agentPct,
		float64(r.scraped.mem.rss)/1024, float64(r.scraped.mem.hwm)/1024)
	t.Logf("%d containers, whole agent: %d seen; CPU per %s cycle: agent %.1f ms, containerd %+.1f ms, shims %+.1f ms, total %.1f ms (agent %.2f%% of a core at -interval %s); RSS %.1f MiB (anon %.1f, file %.1f, peak %.1f)",
		n, seen, interval, r.agentMs, r.containerdMs, r.shimsMs, r.allMs, r.agentPct, interval,
		float64(mem.rss)/1024, float64(mem.anon)/1024, float64(mem.file)/1024, float64(mem.hwm)/1024)
	if seen != n {
		t.Errorf("agent reported %d containers, want %d", seen, n)
	}
	return r
}

func writeAgentReport(t *testing.T, rs []agentResult) {
	var b strings.Builder
	fmt.Fprintf(&b, "\n| containers | agent CPU/cycle | containerd CPU/cycle | shims CPU/cycle | total CPU/cycle | agent RSS | anonymous | file-backed | peak RSS |\n")
	fmt.Fprintf(&b, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range rs {
		fmt.Fprintf(&b, "| %d | %.1f ms | %+.1f ms | %+.1f ms | **%.1f ms** | **%.1f MiB** | %.1f MiB | %.1f MiB | %.1f MiB |\n",
			r.containers, r.agentMs, r.containerdMs, r.shimsMs, r.allMs,
			float64(r.mem.rss)/1024, float64(r.mem.anon)/1024, float64(r.mem.file)/1024, float64(r.mem.hwm)/1024)
	}
	fmt.Fprintf(&b, "\n| containers | local /metrics | agent CPU/cycle | agent %% of a core | containerd | shims | scrape size | series | agent RSS | peak RSS |\n")
	fmt.Fprintf(&b, "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range rs {
		fmt.Fprintf(&b, "| %d | not scraped | %.1f ms | %.2f%% | %+.1f ms | %+.1f ms | | | %.1f MiB | %.1f MiB |\n",
			r.containers, r.agentMs, r.agentPct, r.containerdMs, r.shimsMs, float64(r.mem.rss)/1024, float64(r.mem.hwm)/1024)
		s := r.scraped
		fmt.Fprintf(&b, "| %d | scraped every cycle (%d) | %.1f ms | %.2f%% | %+.1f ms | %+.1f ms | %d B | %d | %.1f MiB | %.1f MiB |\n",
			r.containers, s.scrapes, s.agentMs, s.agentPct, s.containerdMs, s.shimsMs, r.scrapeBytes, r.scrapeSeries, float64(s.mem.rss)/1024, float64(s.mem.hwm)/1024)
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
