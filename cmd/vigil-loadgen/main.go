// Command vigil-loadgen simulates N agents with M containers each against a
// vigil-aggregator through the real gRPC stream, and reports the message
// rate. With --tls-dir it generates a CA and a server certificate for the
// aggregator, prints the aggregator's flags, and issues each simulated node
// its own client certificate.
//
// Given several addresses (the replicas of an aggregator), the nodes are
// spread over them evenly, and each node fails over as an agent does: when
// its replica goes, it reconnects to the next address of its list.
//
//	vigil-loadgen --insecure --aggregator 127.0.0.1:7400 --nodes 1000 --containers 100 --interval 10s --duration 5m
//	vigil-loadgen --insecure --aggregator 127.0.0.1:7400,127.0.0.1:7410,127.0.0.1:7420 --nodes 2000
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/vigilhq/vigil/internal/aggregator/loadgen"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/pki"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "vigil-loadgen:", err)
		os.Exit(1)
	}
}

type options struct {
	cfg          loadgen.Config
	addrs        []string // the aggregator's addresses (several: replicas)
	insecure     bool
	waitReplicas time.Duration
	ramp         int
	tlsDir       string
	reportEvery  time.Duration
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("vigil-loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.cfg.Target, "aggregator", "127.0.0.1:7400", "aggregator gRPC address host:port, or several (replicas) separated by commas: the nodes are spread over them evenly and each fails over to the next when its own goes")
	fs.StringVar(&o.cfg.Target, "target", "127.0.0.1:7400", "the same as --aggregator (older name)")
	fs.IntVar(&o.ramp, "ramp", 0, "connect the nodes in batches of this many, each once the one before is connected (at most 30 s later): thousands of TLS handshakes at once on a small machine time out and retry without end (0: all at once)")
	fs.DurationVar(&o.waitReplicas, "wait-replicas", 5*time.Minute, "with several --aggregator addresses, wait this long for every one to take TCP connections before the load starts")
	fs.IntVar(&o.cfg.Nodes, "nodes", 100, "simulated agents (N)")
	fs.IntVar(&o.cfg.Containers, "containers", 100, "application containers per node (M)")
	fs.DurationVar(&o.cfg.Interval, "interval", 10*time.Second, "sample interval of every agent")
	fs.IntVar(&o.cfg.EventEvery, "event-every", 6, "one container event per node every this many intervals (negative: none)")
	fs.DurationVar(&o.cfg.Duration, "duration", time.Minute, "run this long after every agent connected (0: until interrupted)")
	fs.StringVar(&o.cfg.NodePrefix, "node-prefix", "loadgen-", "node name prefix")
	fs.BoolVar(&o.insecure, "insecure", false, "connect without TLS (the aggregator runs with --insecure)")
	fs.StringVar(&o.tlsDir, "tls-dir", "", "generate a CA and an aggregator certificate into this directory and use mutual TLS")
	fs.DurationVar(&o.reportEvery, "report-every", 10*time.Second, "print the rates this often")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case o.insecure == (o.tlsDir != ""):
		return o, fmt.Errorf("give exactly one of --insecure and --tls-dir: %w", errdefs.ErrInvalid)
	case o.cfg.Nodes < 1 || o.cfg.Containers < 0 || o.cfg.Interval <= 0 || o.reportEvery <= 0 || o.ramp < 0:
		return o, fmt.Errorf("--nodes must be at least 1, --containers and --ramp not negative, --interval and --report-every positive: %w", errdefs.ErrInvalid)
	}
	for _, a := range strings.Split(o.cfg.Target, ",") {
		a = strings.TrimSpace(a)
		if _, _, err := net.SplitHostPort(a); err != nil {
			return o, fmt.Errorf("--aggregator %q: %v: %w", a, err, errdefs.ErrInvalid)
		}
		o.addrs = append(o.addrs, a)
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if o.tlsDir != "" {
		ca, err := pki.NewCA("vigil-loadgen-ca")
		if err != nil {
			return err
		}
		f, err := ca.WriteFiles(o.tlsDir, "aggregator", "aggregator")
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "start the aggregator with: --tls-cert %s --tls-key %s --tls-ca %s\n", f.Cert, f.Key, f.CA)
		o.cfg.ClientTLS = func(node string) (*tls.Config, error) {
			certPEM, keyPEM, err := ca.Issue(node, nil, nil)
			if err != nil {
				return nil, err
			}
			cert, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				return nil, err
			}
			tc, err := pki.ClientConfig(f, "localhost")
			if err != nil {
				return nil, err
			}
			// The node's own certificate: ClientConfig's callback would
			// present the aggregator's (the files it was given), and a
			// callback wins over Certificates.
			tc.GetClientCertificate = nil
			tc.Certificates = []tls.Certificate{cert}
			return tc, nil
		}
	}

	if len(o.addrs) > 1 {
		// A node whose replica is not up yet would settle on the next
		// one for good (pick_first stays while its connection lives):
		// start once every replica takes connections, so the spread is
		// even.
		if err := waitListening(ctx, o.addrs, o.waitReplicas, stderr); err != nil {
			return err
		}
		o.cfg.Target = registerSpread(o.addrs)
	}
	var stats loadgen.Stats
	start := time.Now()
	done := make(chan error, 1)
	if o.ramp > 0 && o.ramp < o.cfg.Nodes {
		go func() { done <- runRamped(ctx, o.cfg, o.ramp, &stats, stdout) }()
	} else {
		go func() { done <- loadgen.Run(ctx, o.cfg, &stats) }()
	}
	t := time.NewTicker(o.reportEvery)
	defer t.Stop()
	var lastMsgs, lastSamples uint64
	last := start
	for {
		select {
		case err := <-done:
			el := time.Since(start).Seconds()
			fmt.Fprintf(stdout, "done: %d nodes x %d containers, %.0fs: %d messages (%.1f/s), %d samples (%.0f/s), %.1f MB sent, %d acks, %d stream errors\n",
				o.cfg.Nodes, o.cfg.Containers, el, stats.Messages.Load(), float64(stats.Messages.Load())/el,
				stats.Samples.Load(), float64(stats.Samples.Load())/el, float64(stats.Bytes.Load())/1e6, stats.Acks.Load(), stats.Errors.Load())
			return err
		case now := <-t.C:
			m, s := stats.Messages.Load(), stats.Samples.Load()
			el := now.Sub(last).Seconds()
			fmt.Fprintf(stdout, "%s connected=%d messages/s=%.1f samples/s=%.0f acks=%d errors=%d\n", now.Format(time.TimeOnly),
				stats.Connected.Load(), float64(m-lastMsgs)/el, float64(s-lastSamples)/el, stats.Acks.Load(), stats.Errors.Load())
			lastMsgs, lastSamples, last = m, s, now
		}
	}
}

// waitListening waits until every address takes a TCP connection, or
// fails after timeout.
func waitListening(ctx context.Context, addrs []string, timeout time.Duration, log io.Writer) error {
	deadline := time.Now().Add(timeout)
	for _, a := range addrs {
		for {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("aggregator %s takes no connections after %s: %v: %w", a, timeout, err, errdefs.ErrUnavailable)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	fmt.Fprintf(log, "all %d aggregators take connections\n", len(addrs))
	return nil
}

// runRamped runs the fleet as batches of ramp nodes (named PREFIX bNNN-
// INDEX), each started once the nodes before it are connected or 30 s
// after the one before; cfg.Duration then counts from the last batch.
func runRamped(ctx context.Context, cfg loadgen.Config, ramp int, stats *loadgen.Stats, log io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	prefix := cfg.NodePrefix
	if prefix == "" {
		prefix = "loadgen-"
	}
	errs := make(chan error, cfg.Nodes/ramp+1)
	batches := 0
	for start := 0; start < cfg.Nodes; start += ramp {
		b := cfg
		b.Nodes = min(ramp, cfg.Nodes-start)
		b.NodePrefix = fmt.Sprintf("%sb%03d-", prefix, batches)
		b.Duration = 0
		batches++
		go func() { errs <- loadgen.Run(ctx, b, stats) }()
		deadline := time.Now().Add(30 * time.Second)
		for stats.Connected.Load() < int64(start+b.Nodes) && time.Now().Before(deadline) {
			select {
			case <-ctx.Done():
				return nil
			case err := <-errs:
				return err // a setup error: Run returned early
			case <-time.After(100 * time.Millisecond):
			}
		}
		fmt.Fprintf(log, "%s ramp: %d of %d nodes started, %d connected\n", time.Now().Format(time.TimeOnly), start+b.Nodes, cfg.Nodes, stats.Connected.Load())
	}
	if cfg.Duration > 0 {
		select {
		case <-time.After(cfg.Duration):
		case <-ctx.Done():
		}
	} else {
		<-ctx.Done()
	}
	cancel()
	var first error
	for range batches {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}
