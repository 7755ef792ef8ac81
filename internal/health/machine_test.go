package health

import (
	"fmt"
	"testing"
	"time"
)

func TestMachine(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	type probe struct {
		at         float64 // seconds after start
		ok         bool
		wantStatus Status
		wantStreak int
	}
	tests := []struct {
		name        string
		retries     int
		startPeriod time.Duration
		probes      []probe
	}{
		{name: "success ends starting", retries: 3, probes: []probe{
			{1, true, StatusHealthy, 0},
		}},
		{name: "retries failures make unhealthy", retries: 3, probes: []probe{
			{1, false, StatusStarting, 1},
			{2, false, StatusStarting, 2},
			{3, false, StatusUnhealthy, 3},
			{4, false, StatusUnhealthy, 4},
			{5, true, StatusHealthy, 0},
		}},
		{name: "from healthy", retries: 2, probes: []probe{
			{1, true, StatusHealthy, 0},
			{2, false, StatusHealthy, 1},
			{3, true, StatusHealthy, 0},
			{4, false, StatusHealthy, 1},
			{5, false, StatusUnhealthy, 2},
		}},
		{name: "start period: failures do not count", retries: 1, startPeriod: 10 * time.Second, probes: []probe{
			{1, false, StatusStarting, 0},
			{9.9, false, StatusStarting, 0},
			{10, false, StatusUnhealthy, 1},
		}},
		{name: "start period: a success ends it", retries: 2, startPeriod: 10 * time.Second, probes: []probe{
			{1, false, StatusStarting, 0},
			{2, true, StatusHealthy, 0},
			{3, false, StatusHealthy, 1},
			{4, false, StatusUnhealthy, 2},
		}},
		{name: "retries 1", retries: 1, probes: []probe{
			{1, false, StatusUnhealthy, 1},
			{2, true, StatusHealthy, 0},
			{3, false, StatusUnhealthy, 1},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMachine(Config{Kind: KindTCP, Source: SourceLabel, Retries: tt.retries, StartPeriod: tt.startPeriod}, start)
			if m.Status() != StatusStarting {
				t.Fatalf("initial status %v", m.Status())
			}
			for i, p := range tt.probes {
				prev := m.Status()
				before := m.Record(Result{Start: start.Add(time.Duration(p.at * float64(time.Second))), OK: p.ok})
				if before != prev {
					t.Errorf("probe %d: Record returned %v, status was %v", i, before, prev)
				}
				h := m.Health()
				if h.Status != p.wantStatus || h.FailingStreak != p.wantStreak {
					t.Fatalf("probe %d (at %vs, ok %v): %v streak %d, want %v streak %d", i, p.at, p.ok, h.Status, h.FailingStreak, p.wantStatus, p.wantStreak)
				}
			}
		})
	}
}

func TestMachineHistory(t *testing.T) {
	m := NewMachine(Config{Kind: KindExec, Source: SourceImage, Retries: 3}, time.Now())
	for i := range 8 {
		m.Record(Result{OK: i%2 == 0, Output: fmt.Sprint(i)})
	}
	h := m.Health()
	if len(h.Last) != HistoryLen {
		t.Fatalf("kept %d results, want %d", len(h.Last), HistoryLen)
	}
	for i, r := range h.Last {
		if want := fmt.Sprint(i + 3); r.Output != want {
			t.Errorf("Last[%d] = %q, want %q (oldest first)", i, r.Output, want)
		}
	}
	if h.Kind != KindExec || h.Source != SourceImage {
		t.Errorf("health %+v lacks kind or source", h)
	}
	h.Last[0].Output = "changed"
	if m.Health().Last[0].Output == "changed" {
		t.Error("Health shares its history with the machine")
	}
}

func TestCapOutput(t *testing.T) {
	p := newProber(nil, 5, 0)
	for in, want := range map[string]string{
		"abc":       "abc",
		"abcdefgh":  "abcde",
		"abcdé":     "abcd", // é is two bytes: the cut would split it
		"ab\xffcd":  "ab\uFFFDcd",
		"é\xff\xfe": "é\uFFFD", // invalid bytes become one replacement
	} {
		if got := p.capOutput(in); got != want {
			t.Errorf("capOutput(%q) = %q, want %q", in, got, want)
		}
	}
}
