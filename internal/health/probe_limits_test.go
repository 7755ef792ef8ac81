package health

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"
)

// endlessHeaders listens on loopback and answers every connection with a
// status line and then headers without end, as fast as the probe reads.
func endlessHeaders(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = bufio.NewReader(c).ReadString('\n') // the request line
				w := bufio.NewWriter(c)
				_, _ = w.WriteString("HTTP/1.1 200 OK\r\n")
				junk := strings.Repeat("x", 1000)
				for i := 0; ; i++ {
					if _, err := fmt.Fprintf(w, "X-Junk-%d: %s\r\n", i, junk); err != nil {
						return
					}
				}
			}()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

// TestHTTPProbeEndlessHeaders: a workload that answers with endless headers
// fails the probe with a clear output, well before the timeout, and the
// agent's heap stays bounded while eight such probes run at once, again
// and again.
func TestHTTPProbeEndlessHeaders(t *testing.T) {
	addr := endlessHeaders(t)
	p := newProber(nil, DefaultOutputCap, 0)
	cfg := Config{Kind: KindHTTP, Addr: addr, Path: "/healthz", Timeout: 10 * time.Second, Interval: 30 * time.Second, Retries: 1}

	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
		}
	}()
	var wg sync.WaitGroup
	start := time.Now()
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				r, failed := p.run(context.Background(), &cfg, &Target{})
				if r.OK || failed != "error" || !strings.Contains(r.Output, "headers exceed 64 KiB") {
					t.Errorf("worker %d: ok %v failed %q output %q; want an error saying the headers exceed 64 KiB", w, r.OK, failed, r.Output)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	took := time.Since(start)
	growth := int64(peak.Load()) - int64(base.HeapInuse)
	t.Logf("80 probes in %v; heap in use grew by at most %d KiB", took.Round(time.Millisecond), growth>>10)
	// That each probe ended at the limit, not at its timeout, is the error
	// checked above: a probe cut by its timeout says so instead. (No bound
	// on the time taken: this machine may be loaded.)
	// Eight probes hold 8 x 64 KiB at most; the bound leaves room for the
	// race detector and what other tests of the package left running.
	// Without the limit each probe reads headers for its whole timeout.
	if growth > 64<<20 {
		t.Errorf("heap in use grew by %d MiB during the probes; want it bounded (8 probes x 64 KiB)", growth>>20)
	}
}

// TestProbeWithoutNetNSIsRefused: a container with a network namespace of
// its own whose pid is not known is not probed in the agent's namespace.
func TestProbeWithoutNetNSIsRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := netip.MustParseAddrPort(ln.Addr().String())
	p := newProber(nil, DefaultOutputCap, 0)
	for _, kind := range []Kind{KindHTTP, KindTCP, KindGRPC} {
		cfg := Config{Kind: kind, Addr: addr, Path: "/", Timeout: time.Second, Interval: time.Second, Retries: 1}
		r, failed := p.run(context.Background(), &cfg, &Target{OwnNetNS: true})
		if r.OK || failed != "error" || !strings.Contains(r.Output, "pid is not known") {
			t.Fatalf("%s: ok %v failed %q output %q; want refused, saying the pid is not known", kind, r.OK, failed, r.Output)
		}
	}
	// A host-network container (no namespace of its own) is probed in the
	// agent's namespace, as before.
	cfg := Config{Kind: KindTCP, Addr: addr, Timeout: time.Second, Interval: time.Second, Retries: 1}
	if r, _ := p.run(context.Background(), &cfg, &Target{}); !r.OK {
		t.Fatalf("host network tcp probe: %+v", r)
	}
}

// TestProbeTimeoutCapped: a probe's timeout is cut to its interval and to
// the prober's maximum, whatever the label asked.
func TestProbeTimeoutCapped(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // accepts and never answers
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	addr := netip.MustParseAddrPort(ln.Addr().String())
	p := newProber(nil, DefaultOutputCap, 0)
	for _, tc := range []struct {
		name              string
		timeout, interval time.Duration
		max               time.Duration
		want              time.Duration
	}{
		{"interval", 10 * time.Second, 300 * time.Millisecond, time.Minute, 300 * time.Millisecond},
		{"maximum", 10 * time.Second, 20 * time.Second, 400 * time.Millisecond, 400 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p.maxTimeout = tc.max
			cfg := Config{Kind: KindHTTP, Addr: addr, Path: "/", Timeout: tc.timeout, Interval: tc.interval, Retries: 1}
			start := time.Now()
			r, failed := p.run(context.Background(), &cfg, &Target{})
			took := time.Since(start)
			if failed != "timeout" || !strings.Contains(r.Output, "timed out after "+tc.want.String()) {
				t.Fatalf("failed %q output %q; want a timeout after %s", failed, r.Output, tc.want)
			}
			if took > tc.want+3*time.Second {
				t.Fatalf("the probe took %v, its timeout was cut to %v", took, tc.want)
			}
		})
	}
}

// FuzzHTTPResponse: any bytes a workload answers an HTTP probe with give a
// judged result: healthy only for a 2xx/3xx status, output within the cap
// and valid UTF-8; never a panic.
func FuzzHTTPResponse(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"))
	f.Add([]byte("HTTP/1.1 503 Service Unavailable\r\n\r\nunhealthy"))
	f.Add([]byte("HTTP/1.1 301 Moved\r\nLocation: /x\r\n\r\n"))
	f.Add([]byte("HTTP/1.0 200\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, resp []byte) {
		p := newProber(nil, 256, 0)
		code, out, err := p.readHTTPResult(context.Background(), strings.NewReader(string(resp)))
		if len(out) > 256 || !utf8.ValidString(out) {
			t.Fatalf("output of %d bytes (valid UTF-8: %v)", len(out), utf8.ValidString(out))
		}
		if err == nil && (code < 200 || code >= 400) {
			t.Fatalf("status %d judged healthy", code)
		}
	})
}

// TestSchedulerMaxTimeout: the scheduler's cap reaches its prober (the
// agent's --max-probe-timeout), 0 takes the default, a negative one is
// refused.
func TestSchedulerMaxTimeout(t *testing.T) {
	for _, tc := range []struct{ in, want time.Duration }{{0, DefaultMaxTimeout}, {5 * time.Second, 5 * time.Second}} {
		s, err := NewScheduler(SchedulerConfig{MaxTimeout: tc.in})
		if err != nil {
			t.Fatal(err)
		}
		if got := s.prober.timeout(&Config{Timeout: time.Hour, Interval: 2 * time.Hour}); got != tc.want {
			t.Errorf("MaxTimeout %v: a probe's timeout of an hour is cut to %v, want %v", tc.in, got, tc.want)
		}
	}
	if _, err := NewScheduler(SchedulerConfig{MaxTimeout: -time.Second}); err == nil {
		t.Error("a negative MaxTimeout was accepted")
	}
}
