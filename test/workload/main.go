// Command workload is the program inside Vigil's test containers: it exits
// with a given code, serves HTTP, TCP and gRPC health that can be turned
// unhealthy, eats memory until the OOM killer comes, burns CPU, or sleeps.
// It prints one line to stdout per change of state.
//
//	workload exit CODE [--after DUR]
//	workload serve [--http :P] [--tcp :P] [--grpc :P] [--unhealthy-after DUR [--unhealthy-once FILE]] [--crash-after DUR --code N]
//	workload oom [--mb N]
//	workload spin [--threads N]
//	workload sleep
//
// In serve mode GET /healthz answers 200 while healthy and 503 while not,
// GET or POST /toggle and SIGUSR1 flip the state, the gRPC server's
// grpc.health.v1 status follows it, and the TCP listener is open only while
// healthy. SIGTERM makes serve and sleep exit 0.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	cfg, err := parseArgs(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "workload:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	code, err := run(ctx, cfg, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "workload:", err)
	}
	os.Exit(code)
}

// run runs one mode until it ends or ctx (SIGTERM) is done, and returns the
// exit code.
func run(ctx context.Context, cfg config, out io.Writer) (int, error) {
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
	switch cfg.mode {
	case modeExit:
		say("exit: code %d after %v", cfg.code, cfg.after)
		if cfg.after > 0 {
			select {
			case <-time.After(cfg.after):
			case <-ctx.Done():
				say("exit: terminated")
				return 143, nil
			}
		}
		return cfg.code, nil
	case modeServe:
		return serve(ctx, cfg, say, nil)
	case modeOOM:
		return eatMemory(ctx, cfg.mb, say), nil
	case modeSpin:
		say("spin: %d threads", cfg.threads)
		for range cfg.threads - 1 {
			go spin(ctx)
		}
		spin(ctx)
		say("spin: terminated")
		return 0, nil
	case modeSleep:
		say("sleep: sleeping")
		<-ctx.Done()
		say("sleep: terminated")
		return 0, nil
	}
	return 2, fmt.Errorf("unknown mode %q", cfg.mode)
}

// spin burns CPU until ctx is done.
func spin(ctx context.Context) {
	x := uint64(1)
	for ctx.Err() == nil {
		for range 1 << 20 {
			x = x*6364136223846793005 + 1442695040888963407
		}
	}
	_ = x
}

// eatMemory allocates and touches memory 1 MiB at a time until mb MiB (or
// forever when mb is 0), then holds it until ctx is done.
func eatMemory(ctx context.Context, mb int, say func(string, ...any)) int {
	say("oom: allocating up to %d MiB", mb)
	var held [][]byte
	for mb == 0 || len(held) < mb {
		if ctx.Err() != nil {
			return 0
		}
		b := make([]byte, 1<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		held = append(held, b)
		if len(held)%16 == 0 {
			say("oom: %d MiB", len(held))
		}
	}
	say("oom: holding %d MiB", len(held))
	<-ctx.Done()
	return 0
}
