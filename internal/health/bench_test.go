package health

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/testenv"
)

// benchServerEnv makes the test binary a helper process that serves HTTP
// for the benchmark (see benchServerMain), so that the servers' CPU is not
// counted as the prober's.
const benchServerEnv = "VIGIL_HEALTH_BENCH_SERVER"

// benchServerMain serves HTTP 200 on N listeners in each network namespace
// named in the arguments ("-" is the process's own, on loopback), prints
// "ADDR <namespace> <ip:port>" per listener and "READY", and exits when its
// stdin closes.
func benchServerMain() int {
	args := os.Args[len(os.Args)-1]
	perNS, spaces, _ := strings.Cut(args, ":")
	var n int
	fmt.Sscan(perNS, &n)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	for _, ns := range strings.Split(spaces, ",") {
		for range n {
			var l net.Listener
			listen := func() (err error) { l, err = net.Listen("tcp", "127.0.0.1:0"); return err }
			var err error
			if ns == "-" {
				err = listen()
			} else {
				err = testenv.InNetNS(ns, listen)
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "listen:", err)
				return 1
			}
			go (&http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}).Serve(l)
			fmt.Printf("ADDR %s %s\n", ns, l.Addr())
		}
	}
	fmt.Println("READY")
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// cpuTime returns the process's user plus system CPU time so far.
func cpuTime(tb testing.TB) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkProbeCPU measures the prober's CPU with 200 HTTP targets probed
// every second through the Scheduler, against an idle window of the same
// process just before, in two layouts: 50 servers in each of 4 network
// namespaces (probed through the namespace path, as containers are), and
// 200 servers on the host's loopback (no namespace switch). The servers run
// in a helper process, so only the prober's CPU is counted. It reports
// %core-probing and %core-idle (percent of one core) and probes/s. It runs
// only with -bench and takes about 20s per layout.
func BenchmarkProbeCPU(b *testing.B) {
	for _, layout := range []struct {
		name  string
		nsCnt int
	}{{"netns", 4}, {"loopback", 0}} {
		b.Run(layout.name, func(b *testing.B) {
			testenv.Require(b)
			var spaces []string
			for range layout.nsCnt {
				spaces = append(spaces, testenv.NewNetNS(b).Path)
			}
			perNS := 50
			if layout.nsCnt == 0 {
				spaces, perNS = []string{"-"}, 200
			}
			targets := startBenchServers(b, perNS, spaces)
			for b.Loop() {
				idle, busy, probes := measureProbeCPU(b, targets)
				b.ReportMetric(idle, "%core-idle")
				b.ReportMetric(busy, "%core-probing")
				b.ReportMetric(probes, "probes/s")
			}
		})
	}
}

type benchTarget struct {
	ns   string
	addr netip.AddrPort
}

func startBenchServers(b *testing.B, perNS int, spaces []string) []benchTarget {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", fmt.Sprintf("%d:%s", perNS, strings.Join(spaces, ",")))
	cmd.Env = append(os.Environ(), benchServerEnv+"=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stdin.Close(); cmd.Wait() })
	var targets []benchTarget
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		if line == "READY" {
			break
		}
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "ADDR" {
			continue
		}
		ns := f[1]
		if ns == "-" {
			ns = ""
		}
		targets = append(targets, benchTarget{ns: ns, addr: netip.MustParseAddrPort(f[2])})
	}
	if len(targets) != perNS*len(spaces) {
		b.Fatalf("helper started %d servers, want %d", len(targets), perNS*len(spaces))
	}
	go io.Copy(io.Discard, stdout)
	return targets
}

// measureProbeCPU returns the process's CPU in percent of a core while idle
// and while probing the targets every second, and the probes per second.
func measureProbeCPU(b *testing.B, targets []benchTarget) (idlePct, busyPct, probesPerSec float64) {
	const idleWindow, warmup, window = 5 * time.Second, 2 * time.Second, 10 * time.Second
	s, err := NewScheduler(SchedulerConfig{})
	if err != nil {
		b.Fatal(err)
	}
	keys := make([]container.Key, len(targets))
	for i, tg := range targets {
		keys[i] = container.Key{Namespace: "bench", ID: fmt.Sprint(i)}
		cfg := Config{Kind: KindHTTP, Source: SourceLabel, Addr: tg.addr, Path: "/healthz",
			Interval: time.Second, Timeout: time.Second, Retries: 3}
		if err := s.Add(keys[i], cfg, Target{NetNS: tg.ns}); err != nil {
			b.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	drained := make(chan struct{})
	go func() { // drains the transitions until the measurement ends
		defer close(drained)
		for {
			select {
			case <-s.Changes():
			case <-ctx.Done():
				return
			}
		}
	}()
	defer func() { cancel(); <-drained }()

	c0, t0 := cpuTime(b), time.Now()
	time.Sleep(idleWindow)
	idlePct = pct(cpuTime(b)-c0, time.Since(t0))

	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	time.Sleep(warmup)
	p0 := totalProbes(s, keys)
	c0, t0 = cpuTime(b), time.Now()
	time.Sleep(window)
	c1, elapsed := cpuTime(b), time.Since(t0)
	p1 := totalProbes(s, keys)
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	for _, k := range keys {
		if h, _ := s.Health(k); h.Failures > 0 {
			b.Fatalf("%v: %d probes failed: %+v", k, h.Failures, h.Last)
		}
	}
	return idlePct, pct(c1-c0, elapsed), float64(p1-p0) / elapsed.Seconds()
}

func totalProbes(s *Scheduler, keys []container.Key) uint64 {
	var n uint64
	for _, k := range keys {
		h, _ := s.Health(k)
		n += h.Probes
	}
	return n
}

func pct(cpu, wall time.Duration) float64 { return 100 * cpu.Seconds() / wall.Seconds() }
