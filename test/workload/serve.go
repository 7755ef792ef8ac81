package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// server holds the health flag and the things that follow it.
type server struct {
	say func(string, ...any)

	mu      sync.Mutex
	healthy bool
	grpc    *health.Server // nil without --grpc
	tcpAddr string         // resolved after the first listen, so a reopen keeps the port
	tcpLn   net.Listener   // nil while unhealthy or without --tcp
}

// serve runs the servers until ctx is done (exit 0), --crash-after fires
// (exit --code) or a server fails (exit 1).
func serve(ctx context.Context, cfg config, say func(string, ...any), usr1 <-chan os.Signal) (int, error) {
	s := &server{say: say, healthy: true, tcpAddr: cfg.tcpAddr}
	if usr1 == nil {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGUSR1)
		defer signal.Stop(ch)
		usr1 = ch
	}
	errc := make(chan error, 2)

	if cfg.httpAddr != "" {
		ln, err := net.Listen("tcp", cfg.httpAddr)
		if err != nil {
			return 1, err
		}
		srv := &http.Server{Handler: s.handler(), ReadHeaderTimeout: 5 * time.Second}
		go func() { errc <- fmt.Errorf("http: %w", srv.Serve(ln)) }() // ends at Close below
		defer srv.Close()
		say("serve: http listening on %s", ln.Addr())
	}
	if cfg.grpcAddr != "" {
		ln, err := net.Listen("tcp", cfg.grpcAddr)
		if err != nil {
			return 1, err
		}
		gs := grpc.NewServer()
		s.grpc = health.NewServer()
		s.grpc.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
		healthpb.RegisterHealthServer(gs, s.grpc)
		go func() { errc <- fmt.Errorf("grpc: %w", gs.Serve(ln)) }() // ends at Stop below
		defer gs.Stop()
		say("serve: grpc listening on %s", ln.Addr())
	}
	if cfg.tcpAddr != "" {
		if err := s.openTCP(); err != nil {
			return 1, err
		}
		defer s.closeTCP()
	}
	say("serve: healthy")

	var unhealthyC, crashC <-chan time.Time
	once := true
	if cfg.unhealthyOnce != "" {
		if _, err := os.Stat(cfg.unhealthyOnce); err == nil {
			once = false
			say("serve: %s exists: staying healthy (--unhealthy-once)", cfg.unhealthyOnce)
		}
	}
	if cfg.unhealthyAfter > 0 && once {
		t := time.NewTimer(cfg.unhealthyAfter)
		defer t.Stop()
		unhealthyC = t.C
	}
	if cfg.crashAfter > 0 {
		t := time.NewTimer(cfg.crashAfter)
		defer t.Stop()
		crashC = t.C
	}
	for {
		select {
		case <-ctx.Done():
			say("serve: terminated")
			return 0, nil
		case <-usr1:
			s.toggle("SIGUSR1")
		case <-unhealthyC:
			if cfg.unhealthyOnce != "" {
				if err := os.WriteFile(cfg.unhealthyOnce, nil, 0o644); err != nil {
					return 1, fmt.Errorf("--unhealthy-once: %w", err)
				}
			}
			s.set(false, "--unhealthy-after")
		case <-crashC:
			say("serve: crashing with code %d", cfg.code)
			return cfg.code, nil
		case err := <-errc:
			return 1, err
		}
	}
}

func (s *server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if s.isHealthy() {
			fmt.Fprintln(w, "ok")
			return
		}
		http.Error(w, "unhealthy", http.StatusServiceUnavailable)
	})
	// /endless-headers answers a status line and then headers without end,
	// until the client hangs up: a hostile or broken workload for the HTTP
	// probe's limits.
	mux.HandleFunc("/endless-headers", func(w http.ResponseWriter, _ *http.Request) {
		hj, ok := w.(http.Hijacker)
		if !ok {
			http.Error(w, "cannot hijack", http.StatusInternalServerError)
			return
		}
		c, bw, err := hj.Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Time{})
		_, _ = bw.WriteString("HTTP/1.1 200 OK\r\n")
		junk := strings.Repeat("x", 1000)
		for i := 0; ; i++ {
			if _, err := fmt.Fprintf(bw, "X-Junk-%d: %s\r\n", i, junk); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/toggle", func(w http.ResponseWriter, _ *http.Request) {
		if s.toggle("/toggle") {
			fmt.Fprintln(w, "healthy")
		} else {
			fmt.Fprintln(w, "unhealthy")
		}
	})
	return mux
}

func (s *server) isHealthy() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.healthy
}

// toggle flips the health flag and returns the new value.
func (s *server) toggle(why string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setLocked(!s.healthy, why)
	return s.healthy
}

func (s *server) set(healthy bool, why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setLocked(healthy, why)
}

func (s *server) setLocked(healthy bool, why string) {
	if healthy == s.healthy {
		return
	}
	s.healthy = healthy
	status := healthpb.HealthCheckResponse_NOT_SERVING
	if healthy {
		status = healthpb.HealthCheckResponse_SERVING
	}
	if s.grpc != nil {
		s.grpc.SetServingStatus("", status)
	}
	if s.tcpAddr != "" {
		if healthy {
			if err := s.openTCPLocked(); err != nil {
				s.say("serve: reopening tcp: %v", err)
			}
		} else {
			s.closeTCPLocked()
		}
	}
	if healthy {
		s.say("serve: healthy (%s)", why)
	} else {
		s.say("serve: unhealthy (%s)", why)
	}
}

func (s *server) openTCP() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.openTCPLocked()
}

// openTCPLocked listens and answers every connection with "ok\n". The
// accept loop ends when closeTCPLocked closes the listener.
func (s *server) openTCPLocked() error {
	if s.tcpLn != nil {
		return nil
	}
	ln, err := net.Listen("tcp", s.tcpAddr)
	if err != nil {
		return err
	}
	if s.tcpAddr != ln.Addr().String() {
		s.tcpAddr = ln.Addr().String()
		s.say("serve: tcp listening on %s", ln.Addr())
	}
	s.tcpLn = ln
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					s.say("serve: tcp accept: %v", err)
				}
				return
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = c.Write([]byte("ok\n"))
			_ = c.Close()
		}
	}()
	return nil
}

func (s *server) closeTCP() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closeTCPLocked()
}

func (s *server) closeTCPLocked() {
	if s.tcpLn != nil {
		_ = s.tcpLn.Close()
		s.tcpLn = nil
	}
}
