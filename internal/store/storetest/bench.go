package storetest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/store"
)

// BenchCreate measures create-if-absent Txns (store.Create of a new key,
// the claim of an alert's intent) from workers goroutines at once: b.N
// creates in all. It reports creates per second and each create's latency
// at p50 and p99.
func BenchCreate(b *testing.B, s store.Store, workers int) {
	ctx := context.Background()
	value := make([]byte, 200) // about an intent's size
	var next atomic.Int64
	lat := make([][]time.Duration, workers)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				t0 := time.Now()
				if _, err := store.Create(ctx, s, fmt.Sprintf("bench/intent/%09d", i), value, store.NoLease); err != nil {
					b.Error(err)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	reportLatency(b, slices.Concat(lat...), elapsed)
}

// BenchWatch measures how long a change takes from the start of its write
// to a watcher's channel, one write at a time: b.N writes. It reports the
// write's latency and the delivery's, at p50 and p99.
func BenchWatch(b *testing.B, s store.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, rev, err := s.List(ctx, "bench/watch/", 1)
	if err != nil {
		b.Fatal(err)
	}
	ch := s.Watch(ctx, "bench/watch/", rev)
	writes := make([]time.Duration, 0, b.N)
	deliveries := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		t0 := time.Now()
		if _, err := store.PutKey(ctx, s, fmt.Sprintf("bench/watch/%d", i%100), []byte("x")); err != nil {
			b.Fatal(err)
		}
		writes = append(writes, time.Since(t0))
		select {
		case resp := <-ch:
			if resp.Err != nil || len(resp.Events) != 1 {
				b.Fatalf("watch: %+v", resp)
			}
		case <-time.After(10 * time.Second):
			b.Fatal("no event within 10 s")
		}
		deliveries = append(deliveries, time.Since(t0))
	}
	elapsed := time.Since(start)
	b.StopTimer()
	reportLatency(b, writes, elapsed)
	slices.Sort(deliveries)
	b.ReportMetric(ms(quantile(deliveries, 0.50)), "deliver-p50-ms")
	b.ReportMetric(ms(quantile(deliveries, 0.99)), "deliver-p99-ms")
}

func reportLatency(b *testing.B, lat []time.Duration, elapsed time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "ops/s")
	b.ReportMetric(ms(quantile(lat, 0.50)), "p50-ms")
	b.ReportMetric(ms(quantile(lat, 0.99)), "p99-ms")
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchCreateAtRate starts b.N create-if-absent Txns at perSecond, each in
// a goroutine of its own whether or not the earlier ones are done (open
// loop, as webhooks arrive), and reports each one's latency at p50 and p99
// and the rate achieved: the figure behind "500 alerts/s journaled, p99
// under 25 ms".
func BenchCreateAtRate(b *testing.B, s store.Store, perSecond int) {
	ctx := context.Background()
	value := make([]byte, 200)
	lat := make([]time.Duration, b.N)
	interval := time.Second / time.Duration(perSecond)
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		// Due times, not sleeps between starts: a late start does not
		// lower the rate that follows.
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			if _, err := store.Create(ctx, s, fmt.Sprintf("bench/rate/%09d", i), value, store.NoLease); err != nil {
				b.Error(err)
			}
			lat[i] = time.Since(t0)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	reportLatency(b, lat, elapsed)
}
