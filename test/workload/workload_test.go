package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func TestParseArgs(t *testing.T) {
	tests := []struct {
		args    string
		want    config
		wantErr string
	}{
		{args: "exit 3", want: config{mode: modeExit, code: 3}},
		{args: "exit 0 --after 2s", want: config{mode: modeExit, after: 2 * time.Second}},
		{args: "exit --after 150ms 137", want: config{mode: modeExit, code: 137, after: 150 * time.Millisecond}},
		{args: "serve --http :8080 --tcp :8081 --grpc :8082 --unhealthy-after 1s --crash-after 2s --code 7",
			want: config{mode: modeServe, httpAddr: ":8080", tcpAddr: ":8081", grpcAddr: ":8082",
				unhealthyAfter: time.Second, crashAfter: 2 * time.Second, code: 7}},
		{args: "serve --http :8080", want: config{mode: modeServe, httpAddr: ":8080", code: 1}},
		{args: "oom --mb 64", want: config{mode: modeOOM, mb: 64}},
		{args: "oom", want: config{mode: modeOOM}},
		{args: "spin", want: config{mode: modeSpin, threads: 1}},
		{args: "spin --threads 2", want: config{mode: modeSpin, threads: 2}},
		{args: "sleep", want: config{mode: modeSleep}},

		{args: "", wantErr: "no mode"},
		{args: "dance", wantErr: `unknown mode "dance"`},
		{args: "exit", wantErr: "exactly one exit CODE"},
		{args: "exit x", wantErr: `CODE "x"`},
		{args: "exit 256", wantErr: "0..255"},
		{args: "exit -1", wantErr: "flag provided but not defined"},
		{args: "exit 1 2", wantErr: "unexpected arguments"},
		{args: "exit 1 --after soon", wantErr: "invalid value"},
		{args: "exit 1 --after -1s", wantErr: "negative --after"},
		{args: "serve", wantErr: "at least one of"},
		{args: "serve --http :1 --code 300", wantErr: "out of 0..255"},
		{args: "serve --http :1 --unhealthy-after -1s", wantErr: "must not be negative"},
		{args: "serve --http :1 extra", wantErr: "unexpected arguments"},
		{args: "oom --mb -1", wantErr: "negative --mb"},
		{args: "spin --threads 0", wantErr: "at least 1"},
		{args: "sleep --for 1s", wantErr: "flag provided but not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.args, func(t *testing.T) {
			got, err := parseArgs(strings.Fields(tt.args))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseArgs(%q) error = %v, want one containing %q", tt.args, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseArgs(%q): %v", tt.args, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("parseArgs(%q) = %+v, want %+v", tt.args, got, tt.want)
			}
		})
	}
}

func FuzzParseArgs(f *testing.F) {
	for _, s := range []string{"exit 3 --after 1s", "serve --http :80 --tcp :81 --grpc :82 --unhealthy-after 1s", "oom --mb 5", "spin --threads 2", "sleep", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cfg, err := parseArgs(strings.Fields(s))
		if err != nil {
			return
		}
		// What parses is runnable: a known mode and values in range.
		switch cfg.mode {
		case modeExit, modeServe, modeOOM, modeSpin, modeSleep:
		default:
			t.Fatalf("parseArgs(%q) accepted mode %q", s, cfg.mode)
		}
		if cfg.code < 0 || cfg.code > 255 || cfg.after < 0 || cfg.mb < 0 {
			t.Fatalf("parseArgs(%q) = %+v: out of range", s, cfg)
		}
	})
}

func TestRunExit(t *testing.T) {
	var out strings.Builder
	start := time.Now()
	code, err := run(context.Background(), config{mode: modeExit, code: 42, after: 50 * time.Millisecond}, &out)
	if err != nil || code != 42 {
		t.Fatalf("run exit = %d, %v; want 42", code, err)
	}
	if time.Since(start) < 50*time.Millisecond {
		t.Errorf("exited before --after")
	}
	if !strings.Contains(out.String(), "exit: code 42") {
		t.Errorf("output %q lacks the state line", out.String())
	}
}

func TestRunSleepEndsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	go func() {
		code, _ := run(ctx, config{mode: modeSleep}, io.Discard)
		done <- code
	}()
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("sleep exit code %d after SIGTERM, want 0", code)
	}
}

// lines collects the workload's state lines for a test to wait on.
type lines struct {
	mu  sync.Mutex
	all []string
	ch  chan string
}

func (l *lines) say(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	l.mu.Lock()
	l.all = append(l.all, s)
	l.mu.Unlock()
	l.ch <- s
}

func (l *lines) waitFor(t *testing.T, prefix string) string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case s := <-l.ch:
			if strings.HasPrefix(s, prefix) {
				return s
			}
		case <-timeout:
			t.Fatalf("no line starting with %q", prefix)
		}
	}
}

func TestServeFollowsHealthFlag(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	l := &lines{ch: make(chan string, 100)}
	usr1 := make(chan os.Signal, 1)
	done := make(chan int, 1)
	cfg := config{mode: modeServe, httpAddr: "127.0.0.1:0", tcpAddr: "127.0.0.1:0", grpcAddr: "127.0.0.1:0", code: 1}
	go func() {
		code, err := serve(ctx, cfg, l.say, usr1)
		if err != nil {
			t.Error(err)
		}
		done <- code
	}()
	httpAddr := strings.TrimPrefix(l.waitFor(t, "serve: http listening on "), "serve: http listening on ")
	grpcAddr := strings.TrimPrefix(l.waitFor(t, "serve: grpc listening on "), "serve: grpc listening on ")
	tcpAddr := strings.TrimPrefix(l.waitFor(t, "serve: tcp listening on "), "serve: tcp listening on ")
	l.waitFor(t, "serve: healthy")

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)

	// /endless-headers keeps sending headers: a client with a limit stops.
	ec, err := net.Dial("tcp", httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(ec, "GET /endless-headers HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	n, _ := io.Copy(io.Discard, io.LimitReader(ec, 1<<20))
	ec.Close()
	if n != 1<<20 {
		t.Fatalf("/endless-headers sent %d bytes before stopping, want endless", n)
	}

	check := func(wantHealthy bool) {
		t.Helper()
		resp, err := http.Get("http://" + httpAddr + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		wantCode := http.StatusOK
		if !wantHealthy {
			wantCode = http.StatusServiceUnavailable
		}
		if resp.StatusCode != wantCode {
			t.Errorf("/healthz = %d, want %d", resp.StatusCode, wantCode)
		}
		gr, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		wantStatus := healthpb.HealthCheckResponse_SERVING
		if !wantHealthy {
			wantStatus = healthpb.HealthCheckResponse_NOT_SERVING
		}
		if gr.Status != wantStatus {
			t.Errorf("grpc health = %v, want %v", gr.Status, wantStatus)
		}
		c, err := net.DialTimeout("tcp", tcpAddr, 2*time.Second)
		if wantHealthy {
			if err != nil {
				t.Fatalf("tcp while healthy: %v", err)
			}
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if line != "ok\n" {
				t.Errorf("tcp said %q, want ok", line)
			}
		} else if err == nil {
			c.Close()
			t.Errorf("tcp accepted while unhealthy")
		}
	}

	check(true)
	resp, err := http.Post("http://"+httpAddr+"/toggle", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	l.waitFor(t, "serve: unhealthy (/toggle)")
	check(false)
	usr1 <- syscall.SIGUSR1
	l.waitFor(t, "serve: healthy (SIGUSR1)")
	check(true)

	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("serve exit code %d after SIGTERM, want 0", code)
	}
}

func TestServeUnhealthyAfterThenCrash(t *testing.T) {
	l := &lines{ch: make(chan string, 100)}
	cfg := config{mode: modeServe, httpAddr: "127.0.0.1:0", unhealthyAfter: 20 * time.Millisecond, crashAfter: 100 * time.Millisecond, code: 9}
	code, err := serve(context.Background(), cfg, l.say, make(chan os.Signal))
	if err != nil || code != 9 {
		t.Fatalf("serve = %d, %v; want exit code 9", code, err)
	}
	joined := strings.Join(l.all, "\n")
	if !strings.Contains(joined, "serve: unhealthy (--unhealthy-after)") || !strings.Contains(joined, "serve: crashing with code 9") {
		t.Fatalf("state lines:\n%s", joined)
	}
}

// TestServeUnhealthyOnce: the first run turns unhealthy and leaves its mark;
// the next run (a restart on the same root filesystem) stays healthy.
func TestServeUnhealthyOnce(t *testing.T) {
	mark := filepath.Join(t.TempDir(), "was-unhealthy")
	run := func() string {
		l := &lines{ch: make(chan string, 100)}
		cfg := config{mode: modeServe, httpAddr: "127.0.0.1:0", unhealthyAfter: 20 * time.Millisecond, unhealthyOnce: mark, crashAfter: 150 * time.Millisecond, code: 9}
		if code, err := serve(context.Background(), cfg, l.say, make(chan os.Signal)); err != nil || code != 9 {
			t.Fatalf("serve = %d, %v; want exit code 9", code, err)
		}
		return strings.Join(l.all, "\n")
	}
	if first := run(); !strings.Contains(first, "serve: unhealthy (--unhealthy-after)") {
		t.Fatalf("first run did not turn unhealthy:\n%s", first)
	}
	if second := run(); strings.Contains(second, "unhealthy (--unhealthy-after)") || !strings.Contains(second, "staying healthy") {
		t.Fatalf("second run:\n%s", second)
	}
}
