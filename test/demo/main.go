// Command demo runs Vigil's data path on this machine for a first look:
// a private containerd, vigil-aggregator, one vigil-agent and Debian's
// Prometheus, with a few containers that show health checks and restart
// policies at work. `make demo` and `make demo-down` run it through
// scripts/demo.sh, which builds it as bin/vigil-demo and runs
// `bin/vigil-demo up` or `bin/vigil-demo down`.
//
//	demo up      start everything, narrate for about a minute, leave it running
//	demo status  what runs, and the containers as vigilctl sees them
//	demo down    stop and remove everything `up` started (safe to run twice)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	var o options
	fs.StringVar(&o.dir, "dir", ".demo", "the demo's directory: containerd state, logs, pid files, Prometheus data")
	fs.StringVar(&o.bin, "bin", "bin", "directory holding vigil-agent, vigil-aggregator and vigilctl (make build)")
	fs.DurationVar(&o.watch, "watch", 80*time.Second, "how long `up` narrates before handing over")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: demo [flags] up|status|down")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errors.New("want exactly one command: up, status or down")
	}
	if os.Geteuid() != 0 {
		return errors.New("the demo runs containers and network namespaces: run it as root (sudo make demo)")
	}
	d, err := newDemo(o, out)
	if err != nil {
		return err
	}
	switch fs.Arg(0) {
	case "up":
		return d.up(ctx)
	case "status":
		return d.status(ctx)
	case "down":
		return d.down(ctx)
	default:
		return fmt.Errorf("unknown command %q: want up, status or down", fs.Arg(0))
	}
}
