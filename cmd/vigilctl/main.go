// Command vigilctl is the operator's CLI over the aggregator's Vigil gRPC
// API.
//
//	vigilctl [global flags] nodes
//	vigilctl [global flags] nodes release NAME
//	vigilctl [global flags] containers [--node N] [--namespace NS] [--pod P] [--unhealthy] [--all]
//	vigilctl [global flags] events [--node N] [--namespace NS] [--since DURATION]
//	vigilctl [global flags] remediations [--node N] [--limit N]
//	vigilctl [global flags] restart|stop|start|kill|link-up TARGET --reason R [--dry-run] [--wait] [--signal SIG]
//	vigilctl [global flags] version
//
// Global flags (also accepted after the command): --server (env
// VIGIL_SERVER, default 127.0.0.1:7400; port 7400 when none is given),
// --tls-cert/--tls-key/--tls-ca (env VIGIL_TLS_CERT, VIGIL_TLS_KEY,
// VIGIL_TLS_CA) or --insecure (env VIGIL_INSECURE=true), --tls-server-name,
// --timeout, -o table|wide|json, and --version. Every command takes -h and
// --help. The exit status is 0 when done, 1 when the call failed, 2 for a
// wrong command line, 3 for an action not carried out, 4 for an action
// whose outcome is not known (exit.go).
package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
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

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// maxRecvBytes bounds one answer; pageSize is the containers asked for per
// page (the aggregator caps a page at 5000).
const (
	maxRecvBytes = 64 << 20
	pageSize     = 1000
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "vigilctl:", err)
	}
	os.Exit(exitCode(err))
}

// run executes one vigilctl command line (without the program name),
// writing results (and the help asked for) to stdout, and warnings and
// the usage that goes with a wrong command line to stderr. Its error
// decides the exit status (exitCode); the caller prints it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runAt(ctx, args, stdout, stderr, time.Now, os.Getenv)
}

// runAt is run with its clock (for ages in tables) and environment given.
func runAt(ctx context.Context, args []string, stdout, stderr io.Writer, now func() time.Time, getenv func(string) string) error {
	inv, err := parseArgs(args, getenv)
	var help *helpRequest
	var wrong *usageError
	switch {
	case errors.As(err, &help):
		_, werr := io.WriteString(stdout, help.usage)
		return errors.Join(err, werr)
	case errors.As(err, &wrong):
		io.WriteString(stderr, wrong.usage)
		return err
	case err != nil:
		return err
	case inv.command == "version":
		_, err := fmt.Fprintln(stdout, versionText())
		return err
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
	return requestRemediation(ctx, client, inv, out)
}

// versionText is "vigilctl VERSION", with the commit and Go version the
// binary was built from when the build recorded them.
func versionText() string {
	s := "vigilctl " + version
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return s
	}
	var extra []string
	for _, kv := range bi.Settings {
		if kv.Key == "vcs.revision" && len(kv.Value) >= 12 {
			extra = append(extra, "commit "+kv.Value[:12])
		}
		if kv.Key == "vcs.modified" && kv.Value == "true" {
			extra = append(extra, "modified")
		}
	}
	return s + " (" + strings.Join(append(extra, bi.GoVersion), ", ") + ")"
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

// firstCall runs do once, when the first call starts: the warning that
// goes with connecting, printed only when vigilctl does connect.
type firstCall struct {
	once sync.Once
	do   func()
}

func (f *firstCall) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	f.once.Do(f.do)
	return invoker(ctx, method, req, reply, cc, opts...)
}

func (f *firstCall) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	f.once.Do(f.do)
	return streamer(ctx, desc, cc, method, opts...)
}

// dial makes the client connection; it connects at the first call. Its
// errors (the TLS files, the address) are usage errors: nothing was sent.
func dial(g globalFlags, stderr io.Writer) (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if !g.insecure {
		tc, err := pki.ClientConfig(g.tls, g.tlsServerName)
		if err != nil {
			return nil, usagef("--tls-cert/--tls-key/--tls-ca: %v", err)
		}
		// The wall clock, as the aggregator's handshake reads it (not the
		// clock the output's ages are computed from).
		if err := certInForce(g.tls.Cert, time.Now()); err != nil {
			return nil, usagef("%v", err)
		}
		creds = credentials.NewTLS(tc)
	}
	// A page of containers with labels can pass gRPC's default 4 MiB.
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvBytes))}
	if g.insecure {
		warn := &firstCall{do: func() {
			fmt.Fprintf(stderr, "vigilctl: warning: connecting to %s without TLS: nothing authenticates the aggregator or protects what it answers (demo aggregators only)\n", g.server)
		}}
		opts = append(opts, grpc.WithChainUnaryInterceptor(warn.unary), grpc.WithChainStreamInterceptor(warn.stream))
	}
	pw := &partialWarner{w: stderr}
	opts = append(opts, grpc.WithChainUnaryInterceptor(pw.unary), grpc.WithChainStreamInterceptor(pw.stream))
	conn, err := grpc.NewClient(g.server, opts...)
	if err != nil {
		return nil, usagef("--server %q: %v", g.server, err)
	}
	return conn, nil
}

// certInForce refuses a client certificate that is expired or not yet
// valid: the aggregator would refuse it in the handshake, and the client
// would only see a broken pipe.
func certInForce(certFile string, now time.Time) error {
	if certFile == "" {
		return nil
	}
	b, err := os.ReadFile(certFile)
	if err != nil {
		return fmt.Errorf("--tls-cert: %v", err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil // pki.ClientConfig has read it: not ours to judge
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil
	}
	switch {
	case now.After(c.NotAfter):
		return fmt.Errorf("--tls-cert %s expired at %s: renew it (the aggregator would refuse it)", certFile, c.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(c.NotBefore):
		return fmt.Errorf("--tls-cert %s is not valid before %s (is this machine's clock right?)", certFile, c.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// callError explains a failed call in the operator's terms.
func (g *globalFlags) callError(what string, err error) error {
	st, _ := status.FromError(err)
	switch st.Code() {
	case codes.Unavailable:
		return fmt.Errorf("cannot reach aggregator at %s: %s%s: %w", g.server, st.Message(), g.transportHint(st.Message()), errdefs.ErrUnavailable)
	case codes.DeadlineExceeded:
		return fmt.Errorf("aggregator at %s did not answer %s within %s: %w", g.server, what, g.timeout, errdefs.ErrUnavailable)
	case codes.Canceled:
		return fmt.Errorf("%s: interrupted: %w", what, context.Canceled)
	}
	return fmt.Errorf("%s: %w", what, errdefs.FromGRPC(err))
}

// transportHint is what a connection error's text suggests about --server
// or the transport security chosen ("" when nothing): gRPC's own words
// name the symptom, not the likely mistake.
func (g *globalFlags) transportHint(msg string) string {
	switch {
	case strings.Contains(msg, "looked like an HTTP/1.1 header"):
		return fmt.Sprintf("; is this the aggregator's gRPC API port? it answered HTTP/1.1 (the aggregator serves gRPC on %s and HTTP on 7401 by default)", defaultPort)
	case g.insecure && (strings.Contains(msg, "server preface") || strings.Contains(msg, "client preface")): // EOF or a reset
		return "; the server may require TLS: drop --insecure and give --tls-ca (with --tls-cert and --tls-key for mutual TLS)"
	case !g.insecure && strings.Contains(msg, "first record does not look like a TLS handshake"):
		return "; the server does not speak TLS: an aggregator started with --insecure needs --insecure"
	case !g.insecure && g.tls.Cert != "" && (strings.Contains(msg, "broken pipe") || strings.Contains(msg, "connection reset by peer") ||
		strings.Contains(msg, "bad certificate") || strings.Contains(msg, "unknown certificate authority") ||
		strings.Contains(msg, "certificate required") || strings.Contains(msg, "expired certificate") || strings.Contains(msg, "revoked")):
		return "; the aggregator may have refused the client certificate --tls-cert (not signed by a CA in its --tls-ca, or revoked); its log says why"
	}
	return ""
}

func listNodes(ctx context.Context, c vigilv1.VigilClient, inv *invocation, out *printer) error {
	ctx, cancel := context.WithTimeout(ctx, inv.global.timeout)
	defer cancel()
	resp, err := c.ListNodes(ctx, &vigilv1.ListNodesRequest{})
	if err != nil {
		return inv.global.callError("list nodes", err)
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
			return inv.global.callError("list containers", err)
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
		return inv.global.callError("release node "+inv.release, err)
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
