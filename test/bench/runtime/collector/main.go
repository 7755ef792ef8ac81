// Command collector is the collector-only process of the runtime benchmark
// (test/bench/runtime): it links only the runtime package, runs a Runtime on
// a containerd, waits until it sees the expected number of running
// containers, prints "ready", and then for each line "go" on stdin runs
// -cycles Stats calls -interval apart and prints
// "done <containers read> <mean Stats wall time in µs>". It exits when stdin
// closes.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/vigilhq/vigil/internal/runtime"
)

func main() {
	address := flag.String("address", "", "containerd socket")
	namespace := flag.String("namespace", "", "containerd namespace to watch")
	source := flag.String("source", runtime.StatsSourceCgroup, "stats source: cgroup or metrics-api")
	want := flag.Int("want", 0, "running containers to wait for before ready")
	cycles := flag.Int("cycles", 20, "Stats calls per window")
	interval := flag.Duration("interval", time.Second, "time between Stats calls")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *address, *namespace, *source, *want, *cycles, *interval); err != nil {
		fmt.Fprintln(os.Stderr, "collector:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, address, namespace, source string, want, cycles int, interval time.Duration) error {
	r, err := runtime.New(runtime.Config{
		Address:     address,
		Namespaces:  []string{namespace},
		StatsSource: source,
		CallTimeout: 30 * time.Second,
		Logger:      slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	go func() {
		for range r.Events() {
		}
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for ready := false; !ready; {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		n := 0
		for _, c := range r.Containers() {
			if c.State == runtime.StateRunning {
				n++
			}
		}
		ready = r.Available() && n >= want
	}
	fmt.Println("ready")

	lines := make(chan string)
	go func() {
		defer close(lines)
		in := bufio.NewScanner(os.Stdin)
		for in.Scan() {
			lines <- in.Text()
		}
	}()
	var buf []runtime.Stats
	for {
		var line string
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case line, ok = <-lines:
		}
		if !ok {
			cancel()
			return <-done
		}
		if line != "go" {
			continue
		}
		var wall time.Duration
		for i := 0; i < cycles; i++ {
			start := time.Now()
			buf, err = r.Stats(ctx, buf)
			wall += time.Since(start)
			if err != nil {
				fmt.Fprintln(os.Stderr, "stats:", err)
			}
			t := time.NewTimer(interval)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
		fmt.Printf("done %d %d\n", len(buf), wall.Microseconds()/int64(max(cycles, 1)))
	}
}
