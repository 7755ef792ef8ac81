package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/vigilhq/vigil/internal/testenv"
)

func TestMain(m *testing.M) {
	if os.Getenv(benchServerEnv) != "" {
		os.Exit(benchServerMain())
	}
	os.Exit(testenv.Run(m))
}

// listenIn opens a TCP listener on 127.0.0.1 inside ns, closed at cleanup.
func listenIn(t testing.TB, ns *testenv.NetNS) net.Listener {
	t.Helper()
	var l net.Listener
	err := ns.Do(func() (err error) {
		l, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", ns.Name, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func addrOf(l net.Listener) netip.AddrPort { return l.Addr().(*net.TCPAddr).AddrPort() }

// serveHTTP serves h on a listener inside ns and returns its address.
func serveHTTP(t testing.TB, ns *testenv.NetNS, h http.Handler) netip.AddrPort {
	t.Helper()
	l := listenIn(t, ns)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return addrOf(l)
}

// silentServer accepts connections inside ns and never answers: a hung
// server.
func silentServer(t testing.TB, ns *testenv.NetNS) netip.AddrPort {
	t.Helper()
	l := listenIn(t, ns)
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return addrOf(l)
}

// fullBacklog returns the address of a listener inside ns whose accept
// queue is full: the kernel drops further SYNs, so a connect hangs.
func fullBacklog(t testing.TB, ns *testenv.NetNS) netip.AddrPort {
	t.Helper()
	var fd int
	var ap netip.AddrPort
	err := ns.Do(func() error {
		var err error
		if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			return err
		}
		if err := unix.Listen(fd, 0); err != nil {
			return err
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			return err
		}
		ap = netip.AddrPortFrom(netip.AddrFrom4(sa.(*unix.SockaddrInet4).Addr), uint16(sa.(*unix.SockaddrInet4).Port))
		return nil
	})
	if err != nil {
		t.Fatalf("backlog-0 listener: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	// Fill the queue (a backlog of 0 holds one connection) until a connect
	// no longer completes.
	for i := 0; ; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		c, err := dialTCP(ctx, ns.Path, ap)
		cancel()
		if err != nil {
			break
		}
		t.Cleanup(func() { c.Close() })
		if i > 8 {
			t.Fatal("the accept queue never filled")
		}
	}
	return ap
}

func grpcServer(t testing.TB, ns *testenv.NetNS) netip.AddrPort {
	t.Helper()
	l := listenIn(t, ns)
	srv := grpc.NewServer()
	hs := grpchealth.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("vigil.Up", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("vigil.Down", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return addrOf(l)
}

// closedPort returns an address inside ns where nothing listens.
func closedPort(t testing.TB, ns *testenv.NetNS) netip.AddrPort {
	t.Helper()
	l := listenIn(t, ns)
	ap := addrOf(l)
	l.Close()
	return ap
}

// TestNetworkProbes runs HTTP, TCP and gRPC probes from the host against
// servers that exist only inside a network namespace the test made (no
// route, no published port), through the namespace's path.
func TestNetworkProbes(t *testing.T) {
	ns := testenv.NewNetNS(t)
	status := func(code int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(code)
			fmt.Fprintf(w, "path %s says %d", r.URL.Path, code)
		}
	}
	ok := serveHTTP(t, ns, status(200))
	sick := serveHTTP(t, ns, status(503))
	redirect := serveHTTP(t, ns, status(302))
	hung := silentServer(t, ns)
	backlog := fullBacklog(t, ns)
	g := grpcServer(t, ns)
	closed := closedPort(t, ns)

	const timeout = 400 * time.Millisecond
	const answerTimeout = 10 * time.Second
	tests := []struct {
		name       string
		cfg        Config
		wantOK     bool
		wantFailed string
		wantCode   int
		wantOut    string
	}{
		{name: "http 200", cfg: Config{Kind: KindHTTP, Addr: ok, Path: "/healthz"}, wantOK: true, wantCode: 200, wantOut: "path /healthz says 200"},
		{name: "http 302 is healthy", cfg: Config{Kind: KindHTTP, Addr: redirect, Path: "/"}, wantOK: true, wantCode: 302},
		{name: "http 503", cfg: Config{Kind: KindHTTP, Addr: sick, Path: "/"}, wantFailed: "unhealthy", wantCode: 503, wantOut: "503 Service Unavailable"},
		{name: "http hung server", cfg: Config{Kind: KindHTTP, Addr: hung, Path: "/"}, wantFailed: "timeout", wantCode: -1, wantOut: "timed out"},
		{name: "http refused", cfg: Config{Kind: KindHTTP, Addr: closed, Path: "/"}, wantFailed: "error", wantCode: -1, wantOut: "connection refused"},
		{name: "tcp open", cfg: Config{Kind: KindTCP, Addr: ok}, wantOK: true},
		{name: "tcp refused", cfg: Config{Kind: KindTCP, Addr: closed}, wantFailed: "error", wantCode: -1, wantOut: "connection refused"},
		{name: "tcp hung (full accept queue)", cfg: Config{Kind: KindTCP, Addr: backlog}, wantFailed: "timeout", wantCode: -1},
		{name: "grpc serving", cfg: Config{Kind: KindGRPC, Addr: g}, wantOK: true, wantCode: int(healthpb.HealthCheckResponse_SERVING)},
		{name: "grpc service serving", cfg: Config{Kind: KindGRPC, Addr: g, Service: "vigil.Up"}, wantOK: true, wantCode: 1},
		{name: "grpc service not serving", cfg: Config{Kind: KindGRPC, Addr: g, Service: "vigil.Down"}, wantFailed: "unhealthy",
			wantCode: int(healthpb.HealthCheckResponse_NOT_SERVING), wantOut: "NOT_SERVING"},
		{name: "grpc unknown service", cfg: Config{Kind: KindGRPC, Addr: g, Service: "vigil.Nope"}, wantFailed: "error", wantCode: -1, wantOut: "NotFound"},
		{name: "grpc hung server", cfg: Config{Kind: KindGRPC, Addr: hung}, wantFailed: "timeout", wantCode: -1},
		{name: "grpc refused", cfg: Config{Kind: KindGRPC, Addr: closed}, wantFailed: "error", wantCode: -1},
	}
	p := newProber(nil, 256, 0)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := tt.cfg
			// The short timeout only where a timeout is the answer: a
			// server that answers may take longer than that on a loaded
			// machine (CI: "http 200" timed out at 400 ms under load).
			cfg.Timeout, cfg.Interval, cfg.Retries = answerTimeout, time.Second, 1
			if tt.wantFailed == "timeout" {
				cfg.Timeout = timeout
			}
			start := time.Now()
			r, failed := p.run(context.Background(), &cfg, &Target{NetNS: ns.Path})
			if r.OK != tt.wantOK || failed != tt.wantFailed {
				t.Fatalf("ok %v failed %q (output %q), want ok %v failed %q", r.OK, failed, r.Output, tt.wantOK, tt.wantFailed)
			}
			if tt.wantCode != 0 && r.Code != tt.wantCode {
				t.Errorf("code %d, want %d", r.Code, tt.wantCode)
			}
			if !strings.Contains(r.Output, tt.wantOut) {
				t.Errorf("output %q does not contain %q", r.Output, tt.wantOut)
			}
			if len(r.Output) > 256 {
				t.Errorf("output of %d bytes exceeds the cap", len(r.Output))
			}
			if elapsed := time.Since(start); elapsed > cfg.Timeout+2*time.Second {
				t.Errorf("probe took %s with a timeout of %s", elapsed, cfg.Timeout)
			}
			if r.Duration <= 0 || r.Start.IsZero() {
				t.Errorf("result lacks its timing: %+v", r)
			}
		})
	}

	t.Run("not reachable from the host namespace", func(t *testing.T) {
		if c, err := net.DialTimeout("tcp", ok.String(), time.Second); err == nil {
			c.Close()
			t.Skipf("something on the host listens on %s too", ok)
		}
		cfg := Config{Kind: KindHTTP, Addr: ok, Path: "/", Timeout: timeout}
		if r, _ := p.run(context.Background(), &cfg, &Target{}); r.OK {
			t.Fatalf("probe in the host namespace reached the server in %s: %+v", ns.Name, r)
		}
	})
}

// TestNetNSDialErrors checks dialing into namespaces that do not exist or
// are not namespaces, and that every thread of the process is back in its
// original namespace afterwards, failures included.
func TestNetNSDialErrors(t *testing.T) {
	ns := testenv.NewNetNS(t)
	l := listenIn(t, ns)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// Threads already elsewhere are not ours to judge (testenv leaves the
	// thread that created a namespace wedged inside it when that thread is
	// the main thread, which the Go runtime cannot terminate).
	own, before := threadNetNS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, bad := range []string{"/nonexistent/netns", "/proc/self/status", t.TempDir()} {
		if c, err := dialTCP(ctx, bad, addrOf(l)); err == nil {
			c.Close()
			t.Errorf("dial through %s succeeded", bad)
		} else if !strings.Contains(err.Error(), bad) {
			t.Errorf("error %q does not name the namespace %s", err, bad)
		}
	}
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			c, err := dialTCP(ctx, ns.Path, addrOf(l))
			if err != nil {
				t.Errorf("dial: %v", err)
				return
			}
			c.Close()
		})
	}
	wg.Wait()

	_, after := threadNetNS(t)
	for task, ns := range after {
		if ns != own && before[task] != ns {
			t.Errorf("thread %s is in %s, the test's thread in %s", task, ns, own)
		}
	}
}

// threadNetNS returns the network namespace of the calling thread and of
// every thread of the process.
func threadNetNS(t *testing.T) (own string, threads map[string]string) {
	t.Helper()
	own, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := filepath.Glob("/proc/self/task/*/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	threads = map[string]string{}
	for _, task := range tasks {
		if ns, err := os.Readlink(task); err == nil { // else the thread exited
			threads[task] = ns
		}
	}
	return own, threads
}

// TestDialCancel checks that cancelling the context interrupts a hung
// connect at once.
func TestDialCancel(t *testing.T) {
	ns := testenv.NewNetNS(t)
	ap := fullBacklog(t, ns)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	c, err := dialTCP(ctx, ns.Path, ap)
	if err == nil {
		c.Close()
		t.Fatal("dial into a full accept queue succeeded")
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancel took %s to interrupt the connect", d)
	}
}

// TestDialData checks that a connection dialed into a namespace carries data
// both ways from an ordinary goroutine.
func TestDialData(t *testing.T) {
	ns := testenv.NewNetNS(t)
	l := listenIn(t, ns)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	c, err := dialTCP(context.Background(), ns.Path, addrOf(l))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: %q, %v", buf, err)
	}
}
