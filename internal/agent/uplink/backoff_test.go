package uplink

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func TestBackoffGrowsAndIsCapped(t *testing.T) {
	top := func(n int64) int64 { return n - 1 } // the largest draw
	b := backoff{initial: 100 * time.Millisecond, max: time.Second, int64n: top}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000, 1000}
	for attempt, w := range want {
		if got := b.delay(attempt); got != w*time.Millisecond {
			t.Errorf("delay(%d) with the largest draw = %s, want %s", attempt, got, w*time.Millisecond)
		}
	}
	if got := b.delay(10_000); got != time.Second {
		t.Errorf("delay(10000) = %s, want the cap", got)
	}
	huge := backoff{initial: time.Second, max: math.MaxInt64, int64n: top}
	if got := huge.ceiling(200); got != math.MaxInt64 {
		t.Errorf("ceiling(200) without a practical cap = %d, want MaxInt64 (no overflow)", got)
	}
	zero := backoff{initial: 100 * time.Millisecond, max: time.Second, int64n: func(int64) int64 { return 0 }}
	if got := zero.delay(3); got != 0 {
		t.Errorf("delay with the smallest draw = %s, want 0 (full jitter reaches zero)", got)
	}
}

// Full jitter: draws cover the whole window [0, ceiling], so agents that
// lost the same aggregator at the same moment come back spread out.
func TestBackoffJitterSpreadsOverTheWindow(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	b := backoff{initial: 100 * time.Millisecond, max: 10 * time.Second, int64n: r.Int64N}
	for _, attempt := range []int{0, 3, 20} {
		ceil := b.ceiling(attempt)
		lo, hi := time.Duration(math.MaxInt64), time.Duration(0)
		var sum time.Duration
		const n = 2000
		for range n {
			d := b.delay(attempt)
			if d < 0 || d > ceil {
				t.Fatalf("delay(%d) = %s outside [0, %s]", attempt, d, ceil)
			}
			lo, hi, sum = min(lo, d), max(hi, d), sum+d
		}
		if lo > ceil/20 || hi < ceil*19/20 {
			t.Errorf("attempt %d: draws span [%s, %s], want nearly all of [0, %s]", attempt, lo, hi, ceil)
		}
		if mean := sum / n; mean < ceil*2/5 || mean > ceil*3/5 {
			t.Errorf("attempt %d: mean %s, want about half of %s", attempt, mean, ceil)
		}
	}
}

// A retry hint (the holder's lease end) replaces the backoff: raised to
// initial, capped at max, plus a jitter of a tenth (at least 100ms).
func TestBackoffAfterHint(t *testing.T) {
	top := func(n int64) int64 { return n - 1 }
	zero := func(int64) int64 { return 0 }
	b := backoff{initial: 500 * time.Millisecond, max: 30 * time.Second, int64n: top}
	for _, c := range []struct{ hint, want time.Duration }{
		{7 * time.Second, 7*time.Second + 700*time.Millisecond},
		{0, 500*time.Millisecond + 100*time.Millisecond},  // never a tight loop
		{time.Hour, 30*time.Second + 3*time.Second},       // capped
		{time.Second, time.Second + 100*time.Millisecond}, // jitter at least 100ms
	} {
		if got := b.after(c.hint); got != c.want {
			t.Errorf("after(%v) with the largest draw = %v, want %v", c.hint, got, c.want)
		}
	}
	b.int64n = zero
	if got := b.after(7 * time.Second); got != 7*time.Second {
		t.Errorf("after(7s) with the smallest draw = %v, want 7s", got)
	}
}
