// Command vigilctl is the operator's CLI over the aggregator's Vigil gRPC
// API.
//
//	vigilctl [global flags] nodes
//	vigilctl [global flags] nodes release NAME
//	vigilctl [global flags] containers [--node N] [--namespace NS] [--pod P] [--unhealthy] [--all]
//	vigilctl [global flags] events [--node N] [--namespace NS] [--since DURATION]
//	vigilctl [global flags] restart|stop|start|kill|link-up TARGET --reason R [--dry-run] [--signal SIG]
//	vigilctl [global flags] remediations [--node N] [--limit N]
//
// Global flags (also accepted after the command): --server (env
// VIGIL_SERVER, default 127.0.0.1:7400), --tls-cert/--tls-key/--tls-ca
// (env VIGIL_TLS_CERT, VIGIL_TLS_KEY, VIGIL_TLS_CA) or --insecure (env
// VIGIL_INSECURE=true), --tls-server-name, --timeout, and -o table|wide|json.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/pki"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// defaultServer is the aggregator's default gRPC address.
const defaultServer = "127.0.0.1:7400"

// maxRecvBytes bounds one answer; pageSize is the containers asked for per
// page (the aggregator caps a page at 5000).
const (
	maxRecvBytes = 64 << 20
	pageSize     = 1000
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "vigilctl:", err)
		os.Exit(1)
	}
}

// run executes one vigilctl command line (without the program name),
// writing results to stdout and usage to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runAt(ctx, args, stdout, stderr, time.Now, os.Getenv)
}

// runAt is run with its clock (for ages in tables) and environment given.
func runAt(ctx context.Context, args []string, stdout, stderr io.Writer, now func() time.Time, getenv func(string) string) error {
	inv, err := parseArgs(args, stderr, getenv)
	if err != nil {
		return err
	}
	if inv.global.insecure {
		fmt.Fprintf(stderr, "vigilctl: warning: connecting to %s without TLS: nothing authenticates the aggregator or protects what it answers (demo aggregators only)\n", inv.global.server)
	}
	conn, err := dial(inv.global, stderr)
	if err != nil {
		return err
	}
	defer conn.Close()
	client := vigilv1.NewVigilClient(conn)
	out := &printer{w: stdout, errw: stderr, format: inv.global.output, now: now()}
	switch inv.command {
	case "nodes":
		if inv.release != "" {
			return releaseNode(ctx, vigilv1.NewBootstrapClient(conn), inv, stdout)
		}
		return listNodes(ctx, client, inv, out)
	case "containers":
		return listContainers(ctx, client, inv, out)
	case "events":
		return watchEvents(ctx, client, inv, out)
	case "remediations":
		return listRemediations(ctx, client, inv, out)
	}
	if _, ok := actionCommands[inv.command]; ok {
		return requestRemediation(ctx, client, inv, out)
	}
	return fmt.Errorf("unknown command %q: %w", inv.command, errdefs.ErrInvalid)
}

// globalFlags are accepted before and after the command.
type globalFlags struct {
	server        string
	tls           pki.Files
	tlsServerName string
	insecure      bool
	output        string
	timeout       time.Duration
}

// invocation is a parsed command line.
type invocation struct {
	global  globalFlags
	command string
	// filters of containers and events
	node, namespace, pod string
	unhealthy, all       bool
	// nodes release NAME
	release string
	// action commands: the target, the operator's reason, a dry run, the
	// signal of kill; remediations: how many
	target, reason, signal string
	dryRun                 bool
	limit                  int
	// events --since
	since time.Duration
}

const usage = `vigilctl: operate a Vigil fleet through the aggregator's API.

Usage:
  vigilctl [flags] nodes
  vigilctl [flags] nodes release NAME
  vigilctl [flags] containers [--node N] [--namespace NS] [--pod P] [--unhealthy] [--all]
  vigilctl [flags] events [--node N] [--namespace NS] [--since DURATION]
  vigilctl [flags] restart|stop|start|kill|link-up TARGET --reason R [--dry-run] [--signal SIG]
  vigilctl [flags] remediations [--node N] [--limit N]

Commands:
  nodes        list the nodes the aggregator knows
  nodes release NAME
               let another machine bootstrap as node NAME (operators only)
  containers   list containers (pod sandboxes only with --all)
  events       print container events as they happen, until interrupted;
               --since 1h first prints the last hour's from the aggregator's history;
               dropped for reading too slowly, it watches again from the
               aggregator's history (a warning on stderr) and prints each event once
  restart, stop, start, kill, link-up TARGET
               ask for an action (operators only), through the same journal,
               budgets and fences as alerts; prints the decision. TARGET is
               NODE/NAMESPACE/CONTAINER_ID, NODE/POD_NAMESPACE/POD/CONTAINER,
               with %INTERFACE for link-up (NODE%INTERFACE: a host link).
               stop is for good: the container stays stopped (restart
               policies included) until start.
  remediations list what was decided and done, newest first

Flags:
`

func (g *globalFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&g.server, "server", g.server, "aggregator gRPC address (env VIGIL_SERVER)")
	fs.StringVar(&g.tls.Cert, "tls-cert", g.tls.Cert, "client certificate for mutual TLS (env VIGIL_TLS_CERT)")
	fs.StringVar(&g.tls.Key, "tls-key", g.tls.Key, "client private key (env VIGIL_TLS_KEY)")
	fs.StringVar(&g.tls.CA, "tls-ca", g.tls.CA, "CA bundle that signs the aggregator's certificate (env VIGIL_TLS_CA)")
	fs.StringVar(&g.tlsServerName, "tls-server-name", g.tlsServerName, "name to verify in the aggregator's certificate (default: the host of --server)")
	fs.BoolVar(&g.insecure, "insecure", g.insecure, "connect without TLS (demo aggregators started with --insecure; env VIGIL_INSECURE=true)")
	fs.StringVar(&g.output, "o", g.output, "output format: table, wide or json")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "deadline of each request (not of events)")
}

// parseArgs parses a command line. Errors wrap errdefs.ErrInvalid (or are
// flag.ErrHelp for -h).
func parseArgs(args []string, stderr io.Writer, getenv func(string) string) (*invocation, error) {
	inv := &invocation{global: globalFlags{
		server: defaultServer, output: "table", timeout: 10 * time.Second,
		tls: pki.Files{Cert: getenv("VIGIL_TLS_CERT"), Key: getenv("VIGIL_TLS_KEY"), CA: getenv("VIGIL_TLS_CA")},
	}}
	if s := getenv("VIGIL_SERVER"); s != "" {
		inv.global.server = s
	}
	if s := getenv("VIGIL_INSECURE"); s != "" {
		b, err := strconv.ParseBool(s)
		if err != nil {
			return nil, fmt.Errorf("VIGIL_INSECURE=%q: want true or false: %w", s, errdefs.ErrInvalid)
		}
		inv.global.insecure = b
	}

	top := flag.NewFlagSet("vigilctl", flag.ContinueOnError)
	top.SetOutput(stderr)
	top.Usage = func() {
		fmt.Fprint(top.Output(), usage)
		top.PrintDefaults()
	}
	inv.global.register(top)
	if err := top.Parse(args); err != nil {
		return nil, flagError(err)
	}
	if top.NArg() == 0 {
		top.Usage()
		return nil, fmt.Errorf("no command given: want nodes, containers or events: %w", errdefs.ErrInvalid)
	}
	inv.command = top.Arg(0)
	fs := flag.NewFlagSet("vigilctl "+inv.command, flag.ContinueOnError)
	fs.SetOutput(stderr)
	inv.global.register(fs)
	switch inv.command {
	case "nodes":
	case "containers":
		fs.StringVar(&inv.node, "node", "", "only containers of this node")
		fs.StringVar(&inv.namespace, "namespace", "", "only containers of this containerd namespace")
		fs.StringVar(&inv.pod, "pod", "", "only containers of pods with this name")
		fs.BoolVar(&inv.unhealthy, "unhealthy", false, "only containers whose health check fails, that crash-loop, or whose restart policy gave up")
		fs.BoolVar(&inv.all, "all", false, "include pod sandbox containers")
	case "events":
		fs.StringVar(&inv.node, "node", "", "only events of this node")
		fs.StringVar(&inv.namespace, "namespace", "", "only events of this containerd namespace")
		fs.DurationVar(&inv.since, "since", 0, "first print the events of this long ago to now from the aggregator's history (e.g. 1h), then follow")
	case "remediations":
		fs.StringVar(&inv.node, "node", "", "only remediations of this node")
		fs.IntVar(&inv.limit, "limit", 0, "at most this many (default: the aggregator's, 100)")
	default:
		if _, ok := actionCommands[inv.command]; !ok {
			return nil, fmt.Errorf("unknown command %q: want nodes, containers, events, remediations, restart, stop, start, kill or link-up: %w", inv.command, errdefs.ErrInvalid)
		}
		fs.StringVar(&inv.reason, "reason", "", "why (journaled with the action; required)")
		fs.BoolVar(&inv.dryRun, "dry-run", false, "decide and journal, do not act")
		if inv.command == "kill" {
			fs.StringVar(&inv.signal, "signal", "", "signal to send (name or number; default SIGKILL)")
		}
	}
	if err := fs.Parse(top.Args()[1:]); err != nil {
		return nil, flagError(err)
	}
	if inv.command == "nodes" && fs.NArg() > 0 && fs.Arg(0) == "release" {
		if fs.NArg() != 2 || fs.Arg(1) == "" {
			return nil, fmt.Errorf("nodes release: want one node name, got %q: %w", fs.Args()[1:], errdefs.ErrInvalid)
		}
		inv.release = fs.Arg(1)
	} else if _, ok := actionCommands[inv.command]; ok {
		// Flags may follow the target too.
		if fs.NArg() == 0 {
			return nil, fmt.Errorf("%s: no target: want NODE/NAMESPACE/CONTAINER_ID or NODE/POD_NAMESPACE/POD/CONTAINER: %w", inv.command, errdefs.ErrInvalid)
		}
		inv.target = fs.Arg(0)
		if err := fs.Parse(fs.Args()[1:]); err != nil {
			return nil, flagError(err)
		}
		if fs.NArg() > 0 {
			return nil, fmt.Errorf("%s: unexpected arguments %q: %w", inv.command, fs.Args(), errdefs.ErrInvalid)
		}
		if strings.TrimSpace(inv.reason) == "" {
			return nil, fmt.Errorf("%s: --reason is required: it is journaled with the action: %w", inv.command, errdefs.ErrInvalid)
		}
	} else if fs.NArg() > 0 {
		return nil, fmt.Errorf("%s: unexpected arguments %q: %w", inv.command, fs.Args(), errdefs.ErrInvalid)
	}
	if inv.since < 0 {
		return nil, fmt.Errorf("--since %s: want a positive duration: %w", inv.since, errdefs.ErrInvalid)
	}
	if inv.limit < 0 {
		return nil, fmt.Errorf("--limit %d: want 0 or more: %w", inv.limit, errdefs.ErrInvalid)
	}

	g := &inv.global
	switch g.output {
	case "table", "wide", "json":
	default:
		return nil, fmt.Errorf("-o %q: want table, wide or json: %w", g.output, errdefs.ErrInvalid)
	}
	if g.server == "" {
		return nil, fmt.Errorf("--server is empty: %w", errdefs.ErrInvalid)
	}
	if g.timeout <= 0 {
		return nil, fmt.Errorf("--timeout %s: want a positive duration: %w", g.timeout, errdefs.ErrInvalid)
	}
	anyTLS := g.tls.Cert != "" || g.tls.Key != "" || g.tls.CA != ""
	switch {
	case anyTLS && g.insecure:
		return nil, fmt.Errorf("--insecure and --tls-* are both given: choose one: %w", errdefs.ErrInvalid)
	case !anyTLS && !g.insecure:
		return nil, fmt.Errorf("no transport security: give --tls-cert, --tls-key and --tls-ca (the aggregator's mutual TLS), or --insecure for a demo aggregator: %w", errdefs.ErrInvalid)
	}
	return inv, nil
}

func flagError(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	return fmt.Errorf("%v: %w", err, errdefs.ErrInvalid)
}

// partialHeader is the gRPC header an aggregator replica sets on a
// fleet-wide answer that misses the replicas named in it
// (aggregator.PartialHeader).
const partialHeader = "vigil-partial"

// partialWarner prints one warning line on stderr when an answer is
// partial (some replicas did not answer), whatever the output format.
type partialWarner struct {
	w    io.Writer
	once sync.Once
}

func (p *partialWarner) check(md metadata.MD) {
	if v := md.Get(partialHeader); len(v) > 0 {
		p.once.Do(func() {
			fmt.Fprintf(p.w, "vigilctl: warning: the answer is partial: %s\n", strings.Join(v, "; "))
		})
	}
}

func (p *partialWarner) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	var md metadata.MD
	err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Header(&md))...)
	p.check(md)
	return err
}

func (p *partialWarner) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, err
	}
	return &partialStream{ClientStream: cs, p: p}, nil
}

// partialStream checks the stream's header on its first message.
type partialStream struct {
	grpc.ClientStream
	p       *partialWarner
	checked bool
}

func (s *partialStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if !s.checked {
		s.checked = true
		if md, herr := s.ClientStream.Header(); herr == nil {
			s.p.check(md)
		}
	}
	return err
}

func dial(g globalFlags, stderr io.Writer) (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if !g.insecure {
		tc, err := pki.ClientConfig(g.tls, g.tlsServerName)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert/--tls-key/--tls-ca: %w", err)
		}
		creds = credentials.NewTLS(tc)
	}
	// A page of containers with labels can pass gRPC's default 4 MiB.
	pw := &partialWarner{w: stderr}
	conn, err := grpc.NewClient(g.server, grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvBytes)),
		grpc.WithUnaryInterceptor(pw.unary), grpc.WithStreamInterceptor(pw.stream))
	if err != nil {
		return nil, fmt.Errorf("--server %q: %v: %w", g.server, err, errdefs.ErrInvalid)
	}
	return conn, nil
}

// callError explains a failed call in the operator's terms.
func callError(server, what string, timeout time.Duration, err error) error {
	st, _ := status.FromError(err)
	switch st.Code() {
	case codes.Unavailable:
		return fmt.Errorf("cannot reach aggregator at %s: %s: %w", server, st.Message(), errdefs.ErrUnavailable)
	case codes.DeadlineExceeded:
		return fmt.Errorf("aggregator at %s did not answer %s within %s: %w", server, what, timeout, errdefs.ErrUnavailable)
	case codes.Canceled:
		return fmt.Errorf("%s: interrupted: %w", what, context.Canceled)
	}
	return fmt.Errorf("%s: %w", what, errdefs.FromGRPC(err))
}

func listNodes(ctx context.Context, c vigilv1.VigilClient, inv *invocation, out *printer) error {
	ctx, cancel := context.WithTimeout(ctx, inv.global.timeout)
	defer cancel()
	resp, err := c.ListNodes(ctx, &vigilv1.ListNodesRequest{})
	if err != nil {
		return callError(inv.global.server, "list nodes", inv.global.timeout, err)
	}
	return out.nodes(resp)
}

// listContainers pages through the containers (each page with its own
// deadline) and prints them once all are read.
func listContainers(ctx context.Context, c vigilv1.VigilClient, inv *invocation, out *printer) error {
	resp := &vigilv1.ListContainersResponse{}
	req := &vigilv1.ListContainersRequest{
		Node: inv.node, Namespace: inv.namespace, Pod: inv.pod, IncludeSandboxes: inv.all,
		PageSize: pageSize, IncludeProbeOutput: inv.global.output == "json",
	}
	for {
		pctx, cancel := context.WithTimeout(ctx, inv.global.timeout)
		page, err := c.ListContainers(pctx, req)
		cancel()
		if err != nil {
			return callError(inv.global.server, "list containers", inv.global.timeout, err)
		}
		resp.Containers = append(resp.Containers, page.GetContainers()...)
		if page.GetNextPageToken() == "" {
			break
		}
		if page.GetNextPageToken() == req.GetPageToken() {
			return fmt.Errorf("list containers: the aggregator answered the same page token twice: %w", errdefs.ErrUnavailable)
		}
		req.PageToken = page.GetNextPageToken()
	}
	if inv.unhealthy {
		kept := resp.GetContainers()[:0]
		for _, nc := range resp.GetContainers() {
			if unhealthy(nc.GetContainer()) {
				kept = append(kept, nc)
			}
		}
		resp.Containers = kept
	}
	return out.containers(resp)
}

// releaseNode asks the aggregator to forget which key node NAME is bound
// to, so that a replaced machine can bootstrap under the name.
func releaseNode(ctx context.Context, c vigilv1.BootstrapClient, inv *invocation, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, inv.global.timeout)
	defer cancel()
	resp, err := c.ReleaseNode(ctx, &vigilv1.ReleaseNodeRequest{NodeName: inv.release})
	if err != nil {
		return callError(inv.global.server, "release node "+inv.release, inv.global.timeout, err)
	}
	if !resp.GetReleased() {
		_, err = fmt.Fprintf(stdout, "node %s was not bound to a key: nothing to release\n", inv.release)
		return err
	}
	_, err = fmt.Fprintf(stdout, "node %s released (was bound to key sha256 %s); the next bootstrap under this name binds it again\n", inv.release, resp.GetKeySha256())
	return err
}

// unhealthy is what --unhealthy selects: a failing health check, a crash
// loop, or a restart policy that gave up.
func unhealthy(c *vigilv1.Container) bool {
	return c.GetHealth().GetStatus() == vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY ||
		c.GetBackoff().GetCrashLooping() || c.GetBackoff().GetGaveUp()
}
