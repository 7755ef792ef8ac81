package health

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/runtime"
)

// Execer runs a command inside a running container: the agent satisfies it
// with the runtime's task exec. It must honour ctx (kill the process and
// return when ctx is done), capture stdout and stderr interleaved up to
// outputCap bytes, and return an error only when the command could not be
// run (a non-zero exit is a result, not an error). It must be safe for
// concurrent use.
type Execer interface {
	Exec(ctx context.Context, key container.Key, args []string, outputCap int) (runtime.ExecResult, error)
}

// Target is where a container's probes go.
type Target struct {
	// Key names the container (exec probes run in it).
	Key container.Key
	// NetNS is the path of the container's network namespace for network
	// probes (NetNSOfPid(task pid), or a bind-mounted path); "" is the
	// agent's own namespace, for host-network containers.
	NetNS string
	// StartedAt is when the container's task started; the start period
	// counts from it. Zero means when the target is added.
	StartedAt time.Time
	// OwnNetNS says the container has a network namespace of its own (it
	// is not on the host's network). A network probe of such a target
	// with an empty NetNS (its task's pid is not known) is refused rather
	// than run in the agent's own namespace, where it could reach the
	// host's services instead of the container's.
	OwnNetNS bool
}

// DefaultOutputCap is how much output a probe result keeps.
const DefaultOutputCap = 4096

// Probe limits.
const (
	// MaxHTTPResponseHead bounds what an HTTP probe reads of a response's
	// status line and headers; a response whose head is longer fails the
	// probe (it is not an answer a health check expects, and an endless
	// one must not grow the agent's heap).
	MaxHTTPResponseHead = 64 << 10
	// DefaultMaxTimeout caps every probe's timeout, whatever a label or an
	// image asks: a probe holds a worker for its timeout, and workloads
	// that hang must not starve the others. A timeout is also cut to the
	// probe's interval.
	DefaultMaxTimeout = time.Minute
)

// prober runs single probes. It is safe for concurrent use.
type prober struct {
	exec       Execer
	outputCap  int
	maxTimeout time.Duration
}

// newProber returns a prober; maxTimeout 0 means DefaultMaxTimeout.
func newProber(exec Execer, outputCap int, maxTimeout time.Duration) *prober {
	if maxTimeout <= 0 {
		maxTimeout = DefaultMaxTimeout
	}
	return &prober{exec: exec, outputCap: outputCap, maxTimeout: maxTimeout}
}

// timeout is cfg's timeout, cut to its interval and to the prober's cap.
func (p *prober) timeout(cfg *Config) time.Duration {
	t := cfg.Timeout
	if cfg.Interval > 0 && t > cfg.Interval {
		t = cfg.Interval
	}
	if p.maxTimeout > 0 && t > p.maxTimeout {
		t = p.maxTimeout
	}
	return t
}

// errNoNetNS refuses a network probe of a container whose namespace is not
// known.
var errNoNetNS = errors.New("the container has a network namespace of its own but its task's pid is not known: the probe is not run in the agent's namespace")

// errTimeout marks a probe that ran out of time, for the failure metric.
var errTimeout = errors.New("probe timed out")

// run runs one probe of cfg against tgt, bounded by its timeout (timeout), and
// returns its result; failed says why it failed when it did ("timeout",
// "error": the probe could not be carried out, "unhealthy": the check
// answered no).
func (p *prober) run(ctx context.Context, cfg *Config, tgt *Target) (r Result, failed string) {
	timeout := p.timeout(cfg)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	r.Start = time.Now()
	var err error
	switch {
	case cfg.Kind != KindExec && tgt.OwnNetNS && tgt.NetNS == "":
		err = errNoNetNS
	case cfg.Kind == KindExec:
		r.Code, r.Output, err = p.execProbe(ctx, cfg, tgt)
	case cfg.Kind == KindHTTP:
		r.Code, r.Output, err = p.httpProbe(ctx, cfg, tgt)
	case cfg.Kind == KindTCP:
		r.Code, r.Output, err = p.tcpProbe(ctx, cfg, tgt)
	case cfg.Kind == KindGRPC:
		r.Code, r.Output, err = p.grpcProbe(ctx, cfg, tgt)
	default:
		err = fmt.Errorf("unknown probe kind %d", int(cfg.Kind))
	}
	r.Duration = time.Since(r.Start)
	switch {
	case err == nil:
		r.OK = true
	case errors.Is(err, errUnhealthy):
		failed = "unhealthy"
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, errTimeout):
		failed = "timeout"
		r.Code = -1
		r.Output = p.capOutput(fmt.Sprintf("timed out after %s: %v", timeout, err))
	default:
		failed = "error"
		r.Code = -1
		r.Output = p.capOutput(err.Error())
	}
	return r, failed
}

// errUnhealthy marks a probe that ran and got a negative answer.
var errUnhealthy = errors.New("unhealthy")

// execGrace is how long after its deadline an exec probe is waited for
// before it is abandoned (an Execer that ignores ctx must not hold a
// worker).
const execGrace = 2 * time.Second

func (p *prober) execProbe(ctx context.Context, cfg *Config, tgt *Target) (int, string, error) {
	if p.exec == nil {
		return -1, "", errors.New("no exec support configured")
	}
	type out struct {
		res runtime.ExecResult
		err error
	}
	ch := make(chan out, 1)
	go func() {
		res, err := p.exec.Exec(ctx, tgt.Key, cfg.Command, p.outputCap)
		ch <- out{res, err}
	}()
	var o out
	select {
	case o = <-ch:
	case <-ctx.Done():
		t := time.NewTimer(execGrace)
		defer t.Stop()
		select {
		case o = <-ch:
		case <-t.C:
			return -1, "", fmt.Errorf("%w: exec did not return %s after its deadline; abandoned", errTimeout, execGrace)
		}
	}
	if o.err != nil {
		if ctx.Err() != nil {
			return -1, "", fmt.Errorf("exec: %w (%v)", ctx.Err(), o.err)
		}
		return -1, "", fmt.Errorf("exec: %w", o.err)
	}
	output := p.capOutput(string(o.res.Output))
	if o.res.ExitCode != 0 {
		return o.res.ExitCode, output, fmt.Errorf("%w: exit code %d", errUnhealthy, o.res.ExitCode)
	}
	return 0, output, nil
}

// httpProbe sends one HTTP/1.1 GET on a fresh connection dialed inside the
// target's namespace and judges the status line: 2xx and 3xx are healthy
// (redirects are not followed), as in Docker's curl checks and the
// kubelet's. It speaks HTTP on the connection itself rather than through an
// http.Transport: a probe needs one request per connection (keep-alive
// would hide a server that no longer accepts), and the transport's
// connection machinery was most of a probe's CPU.
func (p *prober) httpProbe(ctx context.Context, cfg *Config, tgt *Target) (int, string, error) {
	conn, err := dialTCP(ctx, tgt.NetNS, cfg.Addr)
	if err != nil {
		return -1, "", err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(longAgo) })
	defer stop()
	req := "GET " + cfg.Path + " HTTP/1.1\r\nHost: " + cfg.Addr.String() +
		"\r\nUser-Agent: vigil-health/1\r\nAccept: */*\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return -1, "", p.ctxErr(ctx, err)
	}
	return p.readHTTPResult(ctx, conn)
}

// readHTTPResult reads an HTTP probe's response from r and judges it: the
// head (status line and headers) is read through a limit of
// MaxHTTPResponseHead, past which the probe fails with a clear output; the
// body only up to the output cap, for the operator (a body that stops
// short, or hangs until the timeout, changes nothing).
func (p *prober) readHTTPResult(ctx context.Context, r io.Reader) (int, string, error) {
	head := &io.LimitedReader{R: r, N: MaxHTTPResponseHead}
	resp, err := http.ReadResponse(bufio.NewReaderSize(head, 2048), nil)
	if err != nil {
		if head.N <= 0 {
			return -1, "", fmt.Errorf("the HTTP response's status line and headers exceed %d KiB: not read further", MaxHTTPResponseHead>>10)
		}
		return -1, "", p.ctxErr(ctx, fmt.Errorf("read HTTP response: %w", err))
	}
	defer resp.Body.Close()
	head.N += int64(p.outputCap) // the body's share
	body, _ := io.ReadAll(io.LimitReader(resp.Body, int64(p.outputCap)))
	out := p.capOutput(fmt.Sprintf("HTTP %s\n%s", resp.Status, body))
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return resp.StatusCode, out, fmt.Errorf("%w: HTTP status %d", errUnhealthy, resp.StatusCode)
	}
	return resp.StatusCode, out, nil
}

// ctxErr adds ctx's error to err when ctx ended: a deadline set from ctx
// shows up as an i/o timeout, which must count as the probe's timeout.
func (p *prober) ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		return fmt.Errorf("%w: %w", ctx.Err(), err)
	}
	return err
}

func (p *prober) tcpProbe(ctx context.Context, cfg *Config, tgt *Target) (int, string, error) {
	c, err := dialTCP(ctx, tgt.NetNS, cfg.Addr)
	if err != nil {
		return -1, "", err
	}
	c.Close()
	return 0, "connected to " + cfg.Addr.String(), nil
}

func (p *prober) grpcProbe(ctx context.Context, cfg *Config, tgt *Target) (int, string, error) {
	ns, addr := tgt.NetNS, cfg.Addr
	conn, err := grpc.NewClient("passthrough:///"+addr.String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return dialTCP(ctx, ns, addr) }),
		grpc.WithUserAgent("vigil-health/1"),
	)
	if err != nil {
		return -1, "", err
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: cfg.Service})
	if err != nil {
		if ctx.Err() != nil {
			return -1, "", fmt.Errorf("grpc health check: %w (%v)", ctx.Err(), err)
		}
		return -1, "", fmt.Errorf("grpc health check: %w", err)
	}
	st := resp.GetStatus()
	out := "grpc.health.v1 " + st.String()
	if st != healthpb.HealthCheckResponse_SERVING {
		return int(st), out, fmt.Errorf("%w: %s", errUnhealthy, st)
	}
	return int(st), out, nil
}

// capOutput cuts s to the output cap, on a rune boundary, and makes it
// valid UTF-8 (the protocol carries it as a string).
func (p *prober) capOutput(s string) string {
	if len(s) > p.outputCap {
		s = s[:p.outputCap]
		// Drop a rune the cut split in two.
		for i := 0; i < utf8.UTFMax-1 && len(s) > 0; i++ {
			if r, size := utf8.DecodeLastRuneInString(s); r != utf8.RuneError || size != 1 {
				break
			}
			s = s[:len(s)-1]
		}
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}
