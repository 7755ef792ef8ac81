package gossip

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

var benchWindow = flag.Duration("gossip.window", 30*time.Second,
	"how long BenchmarkGossip measures steady-state traffic per cluster size (30s covers one push/pull interval)")

// BenchmarkGossip runs n members in one process on memNet, encrypted as in
// production, with the default tunables: the time for all to see each other,
// the traffic per member in steady state over -gossip.window, and, after
// one member is killed (taken off the network without leaving), the time
// until two peers see it dead (NodeDown's quorum) and until all do. The
// baseline in the same run is memberlist's LAN default SuspicionMult 4 at
// 50 members. Run it with -benchtime 1x.
//
//	go test -run '^$' -bench BenchmarkGossip -benchtime 1x ./internal/gossip
func BenchmarkGossip(b *testing.B) {
	for _, tc := range []struct {
		name      string
		n, mult   int
		bandwidth bool
	}{
		{"n=5", 5, 0, true},
		{"n=20", 20, 0, true},
		{"n=50", 50, 0, true},
		{"n=50/memberlist-default-SuspicionMult-4", 50, 4, false},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for range b.N {
				benchCluster(b, tc.n, tc.mult, tc.bandwidth)
			}
		})
	}
}

// processCPU is the process's user and system CPU time so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// waitUntil polls cond every 50ms for at most timeout.
func waitUntil(timeout time.Duration, cond func() bool) bool {
	for end := time.Now().Add(timeout); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(end) {
			return false
		}
	}
	return true
}

func benchCluster(b *testing.B, n, suspicionMult int, bandwidth bool) {
	b.StopTimer()
	keyFile := filepath.Join(b.TempDir(), "keys")
	writeKeys(b, keyFile, key(5, 32))
	var mn memNet
	ms := make([]*Member, n)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, n)
	defer func() {
		cancel()
		for range n {
			<-done
		}
	}()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	begin := time.Now()
	for i := range n {
		tr := mn.transport()
		cfg := Config{Name: fmt.Sprintf("m%02d", i), AgentVersion: "v1.0.0", Transport: tr, KeyFile: keyFile,
			Logger: quiet, SuspicionMult: suspicionMult, JoinBackoffInitial: 100 * time.Millisecond, JoinBackoffMax: time.Second}
		if i > 0 {
			cfg.Seeds = []string{ms[0].LocalAddr().String()}
		}
		m, err := New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		ms[i] = m
		go func() { _ = m.Run(ctx); done <- struct{}{} }()
		<-m.Ready()
	}
	converged := func() bool {
		for _, m := range ms {
			alive := 0
			for _, v := range m.Views() {
				if v.State == StateAlive {
					alive++
				}
			}
			if alive != n-1 {
				return false
			}
		}
		return true
	}
	// Joins spread by gossip, and a member that missed one learns it at its
	// next push/pull (every 60 s at 50 members): allow for two of those.
	if !waitUntil(150*time.Second, converged) {
		var lagging []string
		for _, m := range ms {
			for _, v := range m.Views() {
				if v.State != StateAlive {
					lagging = append(lagging, fmt.Sprintf("%s sees %s %v since %v ago", m.Name(), v.Name, v.State, time.Since(v.Since).Round(time.Millisecond)))
				}
			}
			if len(m.Views()) < n-1 {
				lagging = append(lagging, fmt.Sprintf("%s knows %d peers (memberlist: %d members alive, events dropped %d, resyncs %d)",
					m.Name(), len(m.Views()), m.ml.Load().NumMembers(), m.stats.eventsDropped.Load(), m.stats.resyncs.Load()))
			}
		}
		b.Fatalf("after 150s, not all members see all others alive: %v", lagging)
	}
	b.ReportMetric(time.Since(begin).Seconds(), "s-converge")

	if bandwidth {
		before := make([]Traffic, n)
		for i, m := range ms {
			before[i] = m.Traffic()
		}
		cpu0 := processCPU(b)
		start := time.Now()
		time.Sleep(*benchWindow) // the measured window
		secs := time.Since(start).Seconds()
		cpu := processCPU(b) - cpu0
		var sent, recv, packets uint64
		for i, m := range ms {
			t := m.Traffic()
			sent += t.BytesSent() - before[i].BytesSent()
			recv += t.BytesReceived() - before[i].BytesReceived()
			packets += t.PacketsSent - before[i].PacketsSent
		}
		perMember := float64(sent) / secs / float64(n)
		b.ReportMetric(perMember, "B/s-sent/member")
		b.ReportMetric(float64(recv)/secs/float64(n), "B/s-recv/member")
		b.ReportMetric(perMember*8/1000, "kbit/s-sent/member")
		b.ReportMetric(float64(packets)/secs/float64(n), "pkt/s-sent/member")
		// The whole process's CPU over the window, shared out: every
		// member's memberlist, view and encryption, plus memNet's copies.
		b.ReportMetric(100*cpu.Seconds()/secs/float64(n), "%core/member")
	}

	// A kill: the victim leaves the network without a word.
	victim := ms[n-1]
	killed := time.Now()
	victim.crash()
	var quorum time.Duration
	waitFor(b, 120*time.Second, "every member sees the killed one dead", func() bool {
		dead := 0
		for _, m := range ms[:n-1] {
			if v, _ := viewOf(m, victim.Name()); v.State == StateDead {
				dead++
			}
		}
		if dead >= 2 && quorum == 0 {
			quorum = time.Since(killed)
		}
		return dead == n-1
	})
	b.ReportMetric(quorum.Seconds(), "s-to-2-dead")
	b.ReportMetric(time.Since(killed).Seconds(), "s-to-all-dead")
}
