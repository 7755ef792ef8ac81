package runtime

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/procstat"
	"github.com/vigilhq/vigil/internal/testenv"
)

// cpuOf returns the CPU time used so far by the processes pids.
func cpuOf(tb testing.TB, pids ...int) time.Duration {
	var total float64
	for _, pid := range pids {
		st, ok := procstat.Read(strconv.Itoa(pid))
		if !ok {
			tb.Fatalf("cannot read /proc/%d/stat", pid)
		}
		total += st.CPUSeconds()
	}
	return time.Duration(total * float64(time.Second))
}

// parentOf returns pid's parent pid, from /proc/PID/status.
func parentOf(tb testing.TB, pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		tb.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "PPid:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				tb.Fatal(err)
			}
			return n
		}
	}
	tb.Fatalf("no PPid in /proc/%d/status", pid)
	return 0
}

// BenchmarkPaused measures Paused, the question the health scheduler asks
// containerd about each failed probe: its latency, and the CPU it costs
// this process, containerd and the container's shim (cpu-ms/op, the three
// together; /proc's tick is 10 ms, so run enough iterations). Baseline in
// the same run: Exec of `true`, what one exec probe costs.
func BenchmarkPaused(b *testing.B) {
	testenv.Require(b)
	env := testenv.Containerd(b)
	ns := "bench-paused"
	_, task := env.RunContainer(b, testenv.ContainerSpec{Namespace: ns, ID: "sleeper", Image: env.BusyboxImage(b, ns), Args: []string{"sleep", "3600"}})
	r, err := New(Config{Address: env.Address, Namespaces: []string{ns}, CgroupRoot: env.CgroupRoot})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	go func() {
		for range r.Events() {
		}
	}()
	b.Cleanup(func() { cancel(); <-done })
	for deadline := time.Now().Add(20 * time.Second); !r.Available(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("runtime not available")
		}
	}
	k := container.Key{Namespace: ns, ID: "sleeper"}
	pids := []int{os.Getpid(), env.ContainerdPID(), parentOf(b, int(task.Pid()))}
	run := func(b *testing.B, op func() error) {
		cpu0 := cpuOf(b, pids...)
		n := 0
		for b.Loop() {
			if err := op(); err != nil {
				b.Fatal(err)
			}
			n++
		}
		b.ReportMetric(float64(cpuOf(b, pids...)-cpu0)/float64(time.Millisecond)/float64(n), "cpu-ms/op")
	}
	b.Run("paused", func(b *testing.B) {
		run(b, func() error {
			p, err := r.Paused(ctx, k)
			if err == nil && p {
				b.Fatal("a running task reported paused")
			}
			return err
		})
	})
	b.Run("exec-baseline", func(b *testing.B) {
		run(b, func() error {
			_, err := r.Exec(namespaces.WithNamespace(ctx, ns), k, []string{"true"}, 64)
			return err
		})
	})
}
