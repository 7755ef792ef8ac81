package uplink

import (
	"math/rand/v2"
	"time"
)

// backoff computes reconnect delays: exponential growth from initial,
// capped at max, with full jitter (a uniform draw between zero and the
// exponential value). Full jitter spreads a fleet's reconnects over the
// whole window, so an aggregator that restarts is not hit by every agent
// at the same instant.
type backoff struct {
	initial, max time.Duration
	// int64n returns a uniform value in [0, n); nil uses math/rand/v2.
	int64n func(n int64) int64
}

// ceiling is the upper bound of the delay before attempt (0-based):
// initial * 2^attempt, capped at max.
func (b backoff) ceiling(attempt int) time.Duration {
	d := b.initial
	for i := 0; i < attempt && d < b.max; i++ {
		if d > b.max/2 {
			return b.max
		}
		d *= 2
	}
	return min(d, b.max)
}

// delay draws the wait before attempt, uniform in [0, ceiling(attempt)].
func (b backoff) delay(attempt int) time.Duration {
	c := int64(b.ceiling(attempt))
	if c <= 0 {
		return 0
	}
	draw := b.int64n
	if draw == nil {
		draw = rand.Int64N
	}
	return time.Duration(draw(c + 1))
}

// after is the wait before retrying when the aggregator said when to retry
// (a replica refusing a node another replica's lease still holds tells when
// that lease ends at the latest): the hint, raised to initial (never a tight
// loop) and capped at max, plus a jitter of up to a tenth of it (at least
// 100ms) so the agents the same replica refused do not come back at once.
func (b backoff) after(hint time.Duration) time.Duration {
	d := min(max(hint, b.initial), b.max)
	j := int64(max(d/10, 100*time.Millisecond))
	draw := b.int64n
	if draw == nil {
		draw = rand.Int64N
	}
	return d + time.Duration(draw(j+1))
}
