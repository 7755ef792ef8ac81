// Command vigil-aggregator holds the fleet's state as the agents stream it,
// serves the operator API, and exposes the fleet to Prometheus.
//
// Defaults: agents and the Vigil API on 127.0.0.1:7400 (gRPC), /metrics,
// /healthz, /readyz and /api/v1 on 127.0.0.1:7401 (HTTP and HTTPS on the
// same port). Give --tls-cert/--tls-key/--tls-ca for TLS (production), or
// --insecure for a local demo on loopback; it refuses to start with
// neither. --ca-cert/--ca-key, --bootstrap-tokens-file and --data-dir turn
// on node bootstrap; --api-tokens-file gives the HTTP API bearer tokens.
// The README's Security section says who may do what. --version prints the
// version set at build time and exits.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/pki"
)

// version is set at build time with -ldflags "-X main.version=...";
// --version prints it.
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "vigil-aggregator:", err)
		os.Exit(1)
	}
}

// parseFlags turns the command line into a validated config and the GC
// target. With --version nothing else is read or checked.
func parseFlags(args []string, stderr io.Writer) (aggregator.Config, options, error) {
	cfg := aggregator.DefaultConfig()
	fs := flag.NewFlagSet("vigil-aggregator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var tlsFiles pki.Files
	var logLevel string
	var opts options
	opts.etcd.register(fs)
	var sec securityFlags
	sec.register(fs, &cfg)
	fs.StringVar(&cfg.GRPCListen, "grpc-listen", cfg.GRPCListen, "address of the agents' stream and the Vigil gRPC API")
	fs.StringVar(&cfg.HTTPListen, "http-listen", cfg.HTTPListen, "address of /metrics, /healthz, /readyz and /api/v1")
	fs.StringVar(&tlsFiles.Cert, "tls-cert", "", "serving certificate of both listeners (reloaded when the file changes)")
	fs.StringVar(&tlsFiles.Key, "tls-key", "", "serving private key")
	fs.StringVar(&tlsFiles.CA, "tls-ca", "", "CA bundle that verifies client certificates (agents, operators, viewers); include --ca-cert's certificate when bootstrapping")
	fs.BoolVar(&cfg.Insecure, "insecure", false, "serve without TLS and allow every call: any client may claim any node (demos only; loopback addresses only)")
	fs.IntVar(&cfg.MaxMessageBytes, "max-message-bytes", cfg.MaxMessageBytes, "largest agent message accepted; a larger one fails its stream")
	fs.DurationVar(&cfg.StaleAfter, "stale-after", cfg.StaleAfter, "silence after which a connected node is marked stale")
	fs.DurationVar(&cfg.ForgetAfter, "forget-after", cfg.ForgetAfter, "grace period a down node and its containers' series are kept before it is forgotten")
	fs.BoolVar(&cfg.MetricsGzip, "metrics-gzip", false, "gzip /metrics for scrapers that accept it (costs more CPU than rendering)")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "bound of the graceful shutdown")
	fs.BoolVar(&cfg.HoldCommands, "hold-commands", false, "decide and journal remediations but deliver no command: they wait in their node's outbox (until their deadline) for an aggregator without this flag")
	fs.StringVar(&cfg.AggregatorID, "replica-id", cfg.AggregatorID, "name of this aggregator replica (its holder keys, its registration, HelloAck); unique among the replicas sharing --etcd-endpoints")
	fs.DurationVar(&cfg.LeaseTTL, "lease-ttl", cfg.LeaseTTL, "with --etcd-endpoints: TTL of this replica's lease, under which it holds its nodes' streams; a replica that dies frees its nodes within it")
	fs.StringVar(&cfg.AdvertiseAPI, "advertise-api", "", "with --etcd-endpoints: the address the other replicas reach this replica's gRPC API on, for the fleet-wide reads (default: the --grpc-listen address bound)")
	var peerServerName string
	fs.StringVar(&peerServerName, "peer-server-name", "", "with --etcd-endpoints and TLS: the name the other replicas' serving certificates are verified against when calling them (e.g. the Service name the certificates carry; default: the host of each replica's --advertise-api address)")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.IntVar(&opts.gcPercent, "gc-percent", 50, "Go GC target percentage (GOGC), unless the GOGC environment variable is set; see docs/benchmarks/aggregator.md")
	fs.BoolVar(&opts.version, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return cfg, opts, err
	}
	if opts.version {
		return cfg, opts, nil
	}
	if fs.NArg() > 0 {
		return cfg, opts, fmt.Errorf("unexpected arguments %q: %w", fs.Args(), errdefs.ErrInvalid)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return cfg, opts, fmt.Errorf("--log-level %q: want debug, info, warn or error: %w", logLevel, errdefs.ErrInvalid)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	if err := sec.apply(&cfg); err != nil {
		return cfg, opts, err
	}
	if sec.rulesFile != "" && sec.dataDir == "" && opts.etcd.endpoints == "" {
		return cfg, opts, fmt.Errorf("--rules-file needs --data-dir or --etcd-endpoints (where the remediation journal lives): %w", errdefs.ErrInvalid)
	}
	rules, err := loadRules(sec.rulesFile)
	if err != nil {
		return cfg, opts, err
	}
	cfg.Rules = rules
	cfg.DataDir = sec.dataDir
	anyTLS := tlsFiles.Cert != "" || tlsFiles.Key != "" || tlsFiles.CA != ""
	switch {
	case anyTLS && cfg.Insecure:
		return cfg, opts, fmt.Errorf("--insecure and --tls-* are both given: choose one: %w", errdefs.ErrInvalid)
	case anyTLS:
		tc, err := pki.ServerConfig(tlsFiles)
		if err != nil {
			return cfg, opts, fmt.Errorf("--tls-cert/--tls-key/--tls-ca: %w", err)
		}
		cfg.TLS = tc
		if opts.etcd.endpoints != "" {
			// The replicas ask each other for their nodes with the
			// aggregator's own certificate (it needs role viewer).
			pc, err := pki.ClientConfig(tlsFiles, peerServerName)
			if err != nil {
				return cfg, opts, fmt.Errorf("--tls-cert/--tls-key as the client certificate toward the other replicas: %w", err)
			}
			cfg.PeerTLS = pc
		}
	case flagGiven(fs, "peer-server-name"):
		return cfg, opts, fmt.Errorf("--peer-server-name needs TLS (--tls-cert, --tls-key, --tls-ca): %w", errdefs.ErrInvalid)
	case !cfg.Insecure:
		return cfg, opts, fmt.Errorf("no transport security: give --tls-cert, --tls-key and --tls-ca (mutual TLS), or --insecure for a local demo: %w", errdefs.ErrInvalid)
	}
	if opts.etcd.endpoints == "" {
		for _, f := range []string{"lease-ttl", "advertise-api", "peer-server-name"} {
			if flagGiven(fs, f) {
				return cfg, opts, fmt.Errorf("--%s needs --etcd-endpoints (replicas share their state there): %w", f, errdefs.ErrInvalid)
			}
		}
	}
	if opts.gcPercent < 10 {
		return cfg, opts, fmt.Errorf("--gc-percent %d: want 10 or more: %w", opts.gcPercent, errdefs.ErrInvalid)
	}
	if err := cfg.Validate(); err != nil {
		return cfg, opts, err
	}
	return cfg, opts, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, opts, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if opts.version {
		_, err := fmt.Fprintln(stdout, version)
		return err
	}
	if os.Getenv("GOGC") == "" {
		// The fleet state is a large, long-lived heap with a low allocation
		// rate: a lower GC target keeps RSS nearer the live heap for little
		// CPU (measured in docs/benchmarks/aggregator.md).
		debug.SetGCPercent(opts.gcPercent)
	}
	if cfg.Insecure {
		cfg.Logger.Warn(strings.Join([]string{
			"INSECURE MODE: agents connect without TLS and are not authenticated;",
			"any client may report as any node. Use --tls-cert/--tls-key/--tls-ca outside local demos.",
		}, " "))
	}
	closeJournal, err := withRemediation(&cfg, cfg.DataDir, opts.etcd)
	if err != nil {
		return err
	}
	defer closeJournal()
	agg, err := aggregator.New(cfg)
	if err != nil {
		return err
	}
	hupCtx, stopHUP := context.WithCancel(ctx)
	defer stopHUP()
	go reloadRulesOnHUP(hupCtx, cfg.Rules, cfg.Logger)
	return agg.Run(ctx)
}

// flagGiven reports whether the command line set flag name.
func flagGiven(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			given = true
		}
	})
	return given
}
