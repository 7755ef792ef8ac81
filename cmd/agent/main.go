// Command vigil-agent runs on every node: it watches the local containerd and
// the kernel's network state, checks container health, enforces restart
// policies on its own, and streams what it sees to the aggregator.
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
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/vigilhq/vigil/internal/agent"
	"github.com/vigilhq/vigil/internal/errdefs"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "vigil-agent:", err)
		os.Exit(1)
	}
}

// processFlags are the flags that shape the process rather than the agent.
type processFlags struct {
	// version: print the version and exit (nothing else is read or
	// checked).
	version   bool
	logLevel  string
	gcPercent int
	maxProcs  int
	bootstrap bootstrapFlags
}

// parseFlags turns the command line into a validated config.
func parseFlags(args []string, stderr io.Writer) (agent.Config, processFlags, error) {
	cfg := agent.DefaultConfig()
	cfg.Version = version
	fs := flag.NewFlagSet("vigil-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var namespaces, commandNamespaces string
	var pf processFlags
	fs.StringVar(&cfg.NodeName, "node-name", cfg.NodeName, "this node's name in the fleet (default: host name; env NODE_NAME)")
	fs.StringVar(&cfg.StateDir, "state-dir", cfg.StateDir, "directory for lifetime counters and restart state")
	fs.StringVar(&cfg.ContainerdAddress, "containerd", cfg.ContainerdAddress, "containerd socket")
	fs.StringVar(&namespaces, "namespaces", "", "comma-separated containerd namespaces to watch (default: all)")
	fs.StringVar(&cfg.CgroupRoot, "cgroup-root", cfg.CgroupRoot, "cgroup filesystem mount point")
	fs.StringVar(&cfg.StatsSource, "stats-source", cfg.StatsSource, "resource usage source: cgroup, or metrics-api for VM-isolated runtimes")
	fs.DurationVar(&cfg.RuntimeCallTimeout, "runtime-timeout", cfg.RuntimeCallTimeout, "timeout of each containerd call")
	fs.DurationVar(&cfg.SampleInterval, "interval", cfg.SampleInterval, "resource and network sampling interval")
	fs.DurationVar(&cfg.FSUsageInterval, "fs-usage-interval", cfg.FSUsageInterval, "how often each running container's writable-layer usage (vigil_container_fs_usage_bytes) is read by walking its overlay upper directory; it costs as many files as containers wrote (0: off)")
	fs.Int64Var(&cfg.ContainerLogMaxBytes, "container-log-max-bytes", cfg.ContainerLogMaxBytes, "size above which a log file the agent writes for a restarted container's output (STATE-DIR/logs/NAMESPACE/ID.log) is rotated into one older generation, ID.log.1 (checked every 10s; 0: the default)")
	fs.StringVar(&cfg.AggregatorAddress, "aggregator", "", "aggregator gRPC address host:port, or several (replicas) separated by commas, tried in turn when a stream fails; dns:///NAME:PORT takes a DNS name's addresses (empty: run standalone)")
	fs.StringVar(&cfg.TLS.Cert, "tls-cert", "", "client certificate, URI SAN spiffe://vigil/node/NODE (reloaded when the file changes); or use --bootstrap-token-file")
	fs.StringVar(&cfg.TLS.Key, "tls-key", "", "client private key")
	fs.StringVar(&cfg.TLS.CA, "tls-ca", "", "CA bundle that signed the aggregator's certificate")
	fs.StringVar(&cfg.TLSServerName, "tls-server-name", "", "name expected in the aggregator's certificate (default: the dialed host)")
	fs.BoolVar(&cfg.Insecure, "insecure", false, "talk to the aggregator without TLS (demos only)")
	pf.bootstrap.register(fs)
	fs.IntVar(&cfg.BufferSize, "buffer-size", cfg.BufferSize, "messages kept until the aggregator acknowledges them")
	fs.StringVar(&cfg.MetricsListen, "metrics-listen", "", "serve this node's /metrics and /healthz here (e.g. 127.0.0.1:7402)")
	fs.IntVar(&cfg.HealthWorkers, "health-workers", cfg.HealthWorkers, "concurrent health probes at most")
	fs.DurationVar(&cfg.MaxProbeTimeout, "max-probe-timeout", time.Minute, "cap of every health probe's timeout, whatever a label or an image asks (a probe holds a worker that long); a timeout is also cut to the probe's interval")
	fs.DurationVar(&cfg.BackoffInitial, "restart-backoff-initial", cfg.BackoffInitial, "first restart delay (doubles at each restart)")
	fs.DurationVar(&cfg.BackoffMax, "restart-backoff-max", cfg.BackoffMax, "restart delay cap")
	fs.DurationVar(&cfg.BackoffReset, "restart-backoff-reset", cfg.BackoffReset, "a run this long resets the backoff")
	fs.DurationVar(&cfg.StopGrace, "stop-grace", cfg.StopGrace, "time between SIGTERM and SIGKILL when stopping a container")
	fs.DurationVar(&cfg.ShutdownGrace, "shutdown-grace", cfg.ShutdownGrace, "on SIGTERM, how long to let restarts and stops in flight finish before exiting (keep it under the pod's terminationGracePeriodSeconds)")
	fs.DurationVar(&cfg.StopWindow, "stop-window", cfg.StopWindow, "least time between an exit and a policy restart, so an operator's kill-then-delete stop is seen as explicit")
	fs.BoolVar(&cfg.Network, "network", cfg.Network, "monitor host and container networks through netlink")
	fs.BoolVar(&cfg.NetworkAffectsHealth, "network-affects-health", false, "a container with a link down or no default route is unhealthy (restarted under restart-on-unhealthy)")
	// Commands from the aggregator: what the agent obeys.
	fs.BoolVar(&cfg.AcceptCommands, "accept-commands", false, "with --insecure, carry out commands from the aggregator anyway (it cannot be authenticated); refused otherwise")
	fs.StringVar(&commandNamespaces, "command-namespaces", "", "comma-separated containerd namespaces in which commands may act (default: all)")
	fs.BoolVar(&cfg.AllowHostLinkCommands, "allow-host-link-commands", false, "let LINK_UP commands act on host links, not only containers' links")
	// Gossip among the agents (off unless --gossip-listen is set).
	var gossipSeeds string
	fs.StringVar(&cfg.Gossip.Listen, "gossip-listen", "", "join the agents' gossip on this IP:port, UDP and TCP (e.g. 0.0.0.0:7946; empty: gossip off)")
	fs.StringVar(&cfg.Gossip.Advertise, "gossip-advertise", "", "address peers use to reach this agent's gossip (the node's IP; default: the listen address, or the first private address when that is 0.0.0.0)")
	fs.StringVar(&gossipSeeds, "gossip-seeds", "", "comma-separated gossip peers to join, host:port or host")
	fs.StringVar(&cfg.Gossip.SeedDNS, "gossip-seed-dns", "", "DNS name whose addresses are gossip seeds (the agents' headless Service), name or name:port")
	fs.StringVar(&cfg.Gossip.KeyFile, "gossip-key-file", "", "gossip encryption keys, one base64 AES key per line, the first used to encrypt; read again every 10s and on SIGHUP (rotation without a restart)")
	fs.BoolVar(&cfg.Gossip.Insecure, "gossip-insecure", false, "gossip without encryption: anyone reaching the port can join and forge views (test clusters only)")
	fs.IntVar(&cfg.Gossip.CrossCheckPeers, "gossip-cross-check-peers", 0, "before a failed TCP or HTTP probe of a pod address (a probe label naming the pod's IP) makes a container unhealthy, ask this many gossip peers to reach that address: if one does, this node's network is blamed (logged, counted in vigil_agent_health_cross_checks_total, and sent upstream with the container's health, so that the aggregator's remediation does not restart it either) and the container is not restarted for it (0: off)")
	fs.BoolVar(&pf.version, "version", false, "print the version and exit")
	fs.StringVar(&pf.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.IntVar(&pf.maxProcs, "max-procs", 2, "at most this many OS threads run Go code at once (GOMAXPROCS), unless the GOMAXPROCS environment variable is set; see docs/benchmarks.md#agent-memory")
	fs.IntVar(&pf.gcPercent, "gc-percent", 50, "Go GC target percentage (GOGC), unless the GOGC environment variable is set; see docs/benchmarks.md#agent-memory")
	if v := os.Getenv("NODE_NAME"); v != "" {
		cfg.NodeName = v
	}
	if err := fs.Parse(args); err != nil {
		return cfg, pf, err
	}
	if pf.version {
		return cfg, pf, nil
	}
	if fs.NArg() > 0 {
		return cfg, pf, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	cfg.Namespaces = splitList(namespaces)
	cfg.CommandNamespaces = splitList(commandNamespaces)
	cfg.Gossip.Seeds = splitList(gossipSeeds)
	if err := gossipFlagsCheck(cfg.Gossip); err != nil {
		return cfg, pf, err
	}
	if err := pf.bootstrap.apply(&cfg); err != nil {
		return cfg, pf, err
	}
	if pf.maxProcs < 1 {
		return cfg, pf, fmt.Errorf("--max-procs %d: want 1 or more: %w", pf.maxProcs, errdefs.ErrInvalid)
	}
	if pf.gcPercent < 10 {
		return cfg, pf, fmt.Errorf("--gc-percent %d: want 10 or more: %w", pf.gcPercent, errdefs.ErrInvalid)
	}
	return cfg, pf, cfg.Validate()
}

// run runs the agent until ctx ends; with --version it prints the version
// (main.version, set at build time) to stdout and returns nil at once.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, pf, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if pf.version {
		_, err := fmt.Fprintln(stdout, version)
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(pf.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", pf.logLevel)
	}
	if os.Getenv("GOMAXPROCS") == "" && runtime.GOMAXPROCS(0) > pf.maxProcs {
		// Go runs on every CPU by default (or on the container's CPU
		// limit), and each of those keeps its own caches of heap spans: on
		// a 32-CPU node the idle agent was 1.6 MiB larger than on two. The
		// agent's work (a collection every 10 s, events, probes) needs no
		// more than two.
		runtime.GOMAXPROCS(pf.maxProcs)
	}
	if os.Getenv("GOGC") == "" {
		// The agent's live heap is small (a few MiB at 100 containers) and
		// its allocation rate low: with Go's default target the heap grows
		// to twice the live data between collections, and that slack is
		// most of the agent's anonymous memory. 50 keeps it at 1.5 times
		// for a collection every few cycles (docs/benchmarks.md#agent-memory).
		debug.SetGCPercent(pf.gcPercent)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if cfg.AggregatorAddress != "" && cfg.Insecure {
		cfg.Logger.Warn("INSECURE: talking to the aggregator without TLS; anyone on the path can read and forge this node's reports. Use --tls-cert/--tls-key/--tls-ca in production.")
	}
	keeper, err := pf.bootstrap.keeper(cfg)
	if err != nil {
		return err
	}
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	// Owned here: it ends when run returns, whatever ctx does.
	hctx, stopHUP := context.WithCancel(ctx)
	defer stopHUP()
	go reloadOnHUP(hctx, hup, a.ReloadGossipKeys, cfg.Logger)
	if keeper == nil {
		return a.Run(ctx)
	}
	a.Registry().Register(keeper.Collector())
	// The keeper runs beside the agent, which never waits for it: until
	// the first certificate exists the uplink's handshakes fail and retry,
	// while health checks and restart policies run.
	kctx, stopKeeper := context.WithCancel(ctx)
	kdone := make(chan error, 1)
	go func() { kdone <- keeper.Run(kctx) }()
	err = a.Run(ctx)
	stopKeeper()
	return errors.Join(err, <-kdone)
}

// splitList splits a comma-separated flag value, dropping empty items; nil
// for an empty value.
func splitList(v string) []string {
	var out []string
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// gossipFlagsCheck names the flags for the gossip mistakes the agent's own
// validation reports without them.
func gossipFlagsCheck(g agent.GossipConfig) error {
	set := g.Advertise != "" || len(g.Seeds) > 0 || g.SeedDNS != "" || g.KeyFile != "" || g.Insecure || g.CrossCheckPeers != 0
	switch {
	case g.CrossCheckPeers < 0:
		return fmt.Errorf("--gossip-cross-check-peers %d: want 0 (off) or more: %w", g.CrossCheckPeers, errdefs.ErrInvalid)
	case g.Listen == "" && set:
		return fmt.Errorf("--gossip-advertise, --gossip-seeds, --gossip-seed-dns, --gossip-key-file, --gossip-insecure and --gossip-cross-check-peers need --gossip-listen (gossip is off without it): %w", errdefs.ErrInvalid)
	case g.Listen == "":
		return nil
	case g.KeyFile == "" && !g.Insecure:
		return fmt.Errorf("--gossip-listen needs --gossip-key-file (gossip is encrypted), or --gossip-insecure for a test cluster: %w", errdefs.ErrInvalid)
	case g.KeyFile != "" && g.Insecure:
		return fmt.Errorf("--gossip-key-file and --gossip-insecure are both set: choose one: %w", errdefs.ErrInvalid)
	}
	return nil
}

// reloadOnHUP calls reload (the gossip keys) on every signal received from
// hup until ctx ends; a failure is logged, and the keys in use stay.
func reloadOnHUP(ctx context.Context, hup <-chan os.Signal, reload func() error, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if err := reload(); err != nil {
				log.Error("SIGHUP: gossip keys not reloaded; the keys in use stay", "err", err)
				continue
			}
			log.Info("SIGHUP: gossip keys reloaded")
		}
	}
}
