package aggregator

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestExpositionStatsForgetIdleShards: a shard not scraped for
// expositionTTL disappears from the self-metrics (after resharding, the old
// shards' series must go), and no more than maxExpositionShards are kept
// whatever shard parameters clients send.
func TestExpositionStatsForgetIdleShards(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

	e := newExpositionStats(clock)
	reg := prometheus.NewRegistry()
	reg.MustRegister(e)
	shards := func(name string) []string {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, m := range mf.GetMetric() {
				out = append(out, fmt.Sprintf("%s=%g", m.GetLabel()[0].GetValue(), m.GetGauge().GetValue()))
			}
		}
		slices.Sort(out)
		return out
	}

	e.record("0/3", time.Second, 10, 100)
	e.record("1/3", time.Second, 20, 200)
	advance(expositionTTL / 2)
	e.record("0/2", time.Second, 30, 300)
	e.record("0/3", time.Second, 11, 110)
	if got, want := shards("vigil_aggregator_exposition_series"), []string{"0/2=30", "0/3=11", "1/3=20"}; !slices.Equal(got, want) {
		t.Fatalf("series by shard %v, want %v", got, want)
	}
	advance(expositionTTL/2 + time.Second)
	for _, name := range []string{"vigil_aggregator_exposition_series", "vigil_aggregator_exposition_bytes", "vigil_aggregator_exposition_duration_seconds"} {
		got := shards(name)
		if len(got) != 2 || got[0][:4] != "0/2=" || got[1][:4] != "0/3=" {
			t.Fatalf("%s after 1/3 went idle: %v, want 0/2 and 0/3 only", name, got)
		}
	}

	for i := range maxExpositionShards + 10 {
		advance(time.Millisecond)
		e.record(fmt.Sprintf("%d/1024", i), time.Millisecond, i, i)
	}
	got := shards("vigil_aggregator_exposition_series")
	if len(got) != maxExpositionShards || !slices.Contains(got, fmt.Sprintf("%d/1024=%d", maxExpositionShards+9, maxExpositionShards+9)) || slices.Contains(got, "0/1024=0") {
		t.Fatalf("after %d shards: %d kept (newest kept, oldest dropped expected)", maxExpositionShards+10, len(got))
	}
}
