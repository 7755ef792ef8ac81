package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Modes of the workload.
const (
	modeExit  = "exit"
	modeServe = "serve"
	modeOOM   = "oom"
	modeSpin  = "spin"
	modeSleep = "sleep"
)

// config is a parsed command line.
type config struct {
	mode string

	// exit
	code  int           // exit: the exit code; serve: the code of --crash-after
	after time.Duration // exit: wait this long first

	// serve
	httpAddr, tcpAddr, grpcAddr string
	unhealthyAfter              time.Duration // 0: stay healthy
	unhealthyOnce               string        // "": every run turns unhealthy
	crashAfter                  time.Duration // 0: never crash

	// oom
	mb int // stop allocating at this many MiB; 0: until killed

	// spin
	threads int
}

const usage = `usage:
  workload exit CODE [--after DUR]
  workload serve [--http :P] [--tcp :P] [--grpc :P] [--unhealthy-after DUR [--unhealthy-once FILE]] [--crash-after DUR --code N]
  workload oom [--mb N]
  workload spin [--threads N]
  workload sleep`

// parseArgs parses the arguments after the program name.
func parseArgs(args []string) (config, error) {
	if len(args) == 0 {
		return config{}, errors.New("no mode given\n" + usage)
	}
	cfg := config{mode: args[0]}
	fs := flag.NewFlagSet(cfg.mode, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	rest := args[1:]
	switch cfg.mode {
	case modeExit:
		fs.DurationVar(&cfg.after, "after", 0, "wait this long before exiting")
		// CODE may come before or after the flags.
		if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
			code, err := parseCode(rest[0])
			if err != nil {
				return config{}, err
			}
			cfg.code = code
			if err := fs.Parse(rest[1:]); err != nil {
				return config{}, fmt.Errorf("exit: %w", err)
			}
			if fs.NArg() > 0 {
				return config{}, fmt.Errorf("exit: unexpected arguments %q", fs.Args())
			}
		} else {
			if err := fs.Parse(rest); err != nil {
				return config{}, fmt.Errorf("exit: %w", err)
			}
			if fs.NArg() != 1 {
				return config{}, errors.New("exit: want exactly one exit CODE\n" + usage)
			}
			code, err := parseCode(fs.Arg(0))
			if err != nil {
				return config{}, err
			}
			cfg.code = code
		}
		if cfg.after < 0 {
			return config{}, fmt.Errorf("exit: negative --after %v", cfg.after)
		}
		return cfg, nil
	case modeServe:
		fs.StringVar(&cfg.httpAddr, "http", "", "HTTP listen address (GET /healthz, /toggle, /endless-headers)")
		fs.StringVar(&cfg.tcpAddr, "tcp", "", "TCP listen address, open only while healthy")
		fs.StringVar(&cfg.grpcAddr, "grpc", "", "gRPC listen address (grpc.health.v1)")
		fs.DurationVar(&cfg.unhealthyAfter, "unhealthy-after", 0, "turn unhealthy after this long")
		fs.StringVar(&cfg.unhealthyOnce, "unhealthy-once", "", "with --unhealthy-after: turn unhealthy only if this file does not exist, and create it then (a restarted container, same root filesystem, stays healthy)")
		fs.DurationVar(&cfg.crashAfter, "crash-after", 0, "exit with --code after this long")
		fs.IntVar(&cfg.code, "code", 1, "exit code of --crash-after")
	case modeOOM:
		fs.IntVar(&cfg.mb, "mb", 0, "MiB to allocate (0: until killed)")
	case modeSpin:
		fs.IntVar(&cfg.threads, "threads", 1, "goroutines burning CPU")
	case modeSleep:
	default:
		return config{}, fmt.Errorf("unknown mode %q\n%s", cfg.mode, usage)
	}
	if err := fs.Parse(rest); err != nil {
		return config{}, fmt.Errorf("%s: %w", cfg.mode, err)
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("%s: unexpected arguments %q", cfg.mode, fs.Args())
	}
	switch {
	case cfg.mode == modeServe && cfg.httpAddr == "" && cfg.tcpAddr == "" && cfg.grpcAddr == "":
		return config{}, errors.New("serve: give at least one of --http, --tcp, --grpc")
	case cfg.unhealthyAfter < 0 || cfg.crashAfter < 0:
		return config{}, errors.New("serve: durations must not be negative")
	case cfg.code < 0 || cfg.code > 255:
		return config{}, fmt.Errorf("serve: --code %d out of 0..255", cfg.code)
	case cfg.mb < 0:
		return config{}, fmt.Errorf("oom: negative --mb %d", cfg.mb)
	case cfg.mode == modeSpin && cfg.threads < 1:
		return config{}, fmt.Errorf("spin: --threads %d, want at least 1", cfg.threads)
	}
	return cfg, nil
}

func parseCode(s string) (int, error) {
	code, err := strconv.Atoi(s)
	if err != nil || code < 0 || code > 255 {
		return 0, fmt.Errorf("exit: CODE %q is not an integer in 0..255", s)
	}
	return code, nil
}
