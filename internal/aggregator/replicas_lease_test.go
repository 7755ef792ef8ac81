package aggregator

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/store"
	"github.com/vigilhq/vigil/internal/store/bolt"
	"github.com/vigilhq/vigil/internal/store/storetest"
)

// testClock is a clock that moves only when told.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *testClock) advance(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

// TestLeaseRemainingThroughTheStore: the refusal's retry delay is the
// holder lease's time to live from the store interface (any store, a
// wrapped one too), plus a second, capped at the TTL plus a second; a
// second when the lease has just ended; the TTL when the store cannot
// tell. (It was read through the etcd store's client, so bbolt, or etcd
// behind a wrapper, always gave the whole TTL.)
func TestLeaseRemainingThroughTheStore(t *testing.T) {
	clock := &testClock{now: time.Unix(1_800_000_000, 0)}
	st, err := bolt.Open(filepath.Join(t.TempDir(), "s.db"), bolt.Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	faulty := storetest.NewFaulty(st)
	const ttl = 10 * time.Second
	r := newReplicas(faulty, "r0", ttl, "", slog.New(slog.DiscardHandler), nil)
	ctx := context.Background()

	lease, err := st.Grant(ctx, ttl)
	if err != nil {
		t.Fatal(err)
	}
	clock.advance(7 * time.Second)
	if got, want := r.leaseRemaining(ctx, lease), 3*time.Second+time.Second; got != want {
		t.Fatalf("holder's lease with 3s left: retry after %v, want %v", got, want)
	}
	faulty.Inject(func(c storetest.Call) error {
		if c.Method == "TimeToLive" {
			return errdefs.ErrUnavailable
		}
		return nil
	})
	if got := r.leaseRemaining(ctx, lease); got != ttl {
		t.Fatalf("store unavailable: retry after %v, want the TTL %v", got, ttl)
	}
	faulty.Inject(nil)
	clock.advance(4 * time.Second)
	if _, err := st.TimeToLive(ctx, lease); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("bbolt's TimeToLive past the deadline: %v, want ErrNotFound", err)
	}
	if got := r.leaseRemaining(ctx, lease); got != time.Second {
		t.Fatalf("holder's lease past its deadline: retry after %v, want 1s", got)
	}
	if got := r.leaseRemaining(ctx, store.NoLease); got != ttl {
		t.Fatalf("holder key without a lease: retry after %v, want the TTL", got)
	}
}

// TestLeaderGaugeReadsState: vigil_aggregator_leader is read from the
// replica's state when scraped: 1 while it is elected and renewed its
// lease within the TTL, 0 once that renewal is older (no tick needed to
// update it, so it cannot go stale), and 0 once the lease is lost.
func TestLeaderGaugeReadsState(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newSelfMetrics(reg, NewFleet())
	if err != nil {
		t.Fatal(err)
	}
	const ttl = 3 * time.Second
	r := newReplicas(nil, "r0", ttl, "", slog.New(slog.DiscardHandler), m)
	r.drop = func(string, *agentStream, error) {}
	leaderOf := r.leader
	m.leaderOf.Store(&leaderOf)
	gauge := func() float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "vigil_aggregator_leader" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatal("no vigil_aggregator_leader")
		return -1
	}
	if g := gauge(); g != 0 {
		t.Fatalf("leader %v before any lease, want 0", g)
	}
	r.mu.Lock()
	r.lease, r.isLeader, r.renewed = 1, true, time.Now()
	r.mu.Unlock()
	if g := gauge(); g != 1 {
		t.Fatalf("leader %v when elected and renewed now, want 1", g)
	}
	r.mu.Lock()
	r.renewed = time.Now().Add(-2 * ttl)
	r.mu.Unlock()
	if g := gauge(); g != 0 {
		t.Fatalf("leader %v when the last renewal is two TTLs old, want 0", g)
	}
	r.mu.Lock()
	r.renewed = time.Now()
	r.mu.Unlock()
	r.lost(1)
	if g := gauge(); g != 0 {
		t.Fatalf("leader %v after the lease was lost, want 0", g)
	}
}
