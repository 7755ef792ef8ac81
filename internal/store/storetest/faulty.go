package storetest

import (
	"context"
	"sync"
	"time"

	"github.com/vigilhq/vigil/internal/store"
)

// Call is one call to a Faulty store, as its fault function sees it.
type Call struct {
	// Method is the store.Store method: "Get", "List", "Txn", "Watch",
	// "Grant", "KeepAlive", "Revoke" or "TimeToLive".
	Method string
	// Keys are the keys the call names: Get's key, List's and Watch's
	// prefix, a Txn's cond keys then op keys; none for leases.
	Keys []string
}

// Faulty wraps a real store and fails calls on demand, for the faults a
// real store cannot produce at an exact moment (a disk that stops taking
// writes, etcd losing quorum between two calls). Without a fault it is
// the store it wraps. Safe for concurrent use.
type Faulty struct {
	store.Store

	mu    sync.Mutex
	fault func(Call) error
}

var _ store.Store = (*Faulty)(nil)

// NewFaulty wraps s.
func NewFaulty(s store.Store) *Faulty { return &Faulty{Store: s} }

// Inject makes every later call for which fault returns an error fail with
// that error, before it reaches the store (so it applies nothing); a nil
// fault, or one returning nil, lets calls through. A Watch refused this way
// gets the error as its only response.
func (f *Faulty) Inject(fault func(Call) error) {
	f.mu.Lock()
	f.fault = fault
	f.mu.Unlock()
}

func (f *Faulty) check(method string, keys ...string) error {
	f.mu.Lock()
	fault := f.fault
	f.mu.Unlock()
	if fault == nil {
		return nil
	}
	return fault(Call{Method: method, Keys: keys})
}

// Get implements store.Store.
func (f *Faulty) Get(ctx context.Context, key string) (store.KV, error) {
	if err := f.check("Get", key); err != nil {
		return store.KV{}, err
	}
	return f.Store.Get(ctx, key)
}

// List implements store.Store.
func (f *Faulty) List(ctx context.Context, prefix string, limit int) ([]store.KV, int64, error) {
	if err := f.check("List", prefix); err != nil {
		return nil, 0, err
	}
	return f.Store.List(ctx, prefix, limit)
}

// Txn implements store.Store.
func (f *Faulty) Txn(ctx context.Context, conds []store.Cond, ops []store.Op) (store.TxnResult, error) {
	keys := make([]string, 0, len(conds)+len(ops))
	for _, c := range conds {
		keys = append(keys, c.Key)
	}
	for _, op := range ops {
		keys = append(keys, op.Key)
	}
	if err := f.check("Txn", keys...); err != nil {
		return store.TxnResult{}, err
	}
	return f.Store.Txn(ctx, conds, ops)
}

// Watch implements store.Store.
func (f *Faulty) Watch(ctx context.Context, prefix string, afterRev int64) <-chan store.WatchResponse {
	if err := f.check("Watch", prefix); err != nil {
		ch := make(chan store.WatchResponse, 1)
		ch <- store.WatchResponse{Err: err}
		close(ch)
		return ch
	}
	return f.Store.Watch(ctx, prefix, afterRev)
}

// Grant implements store.Store.
func (f *Faulty) Grant(ctx context.Context, ttl time.Duration) (store.LeaseID, error) {
	if err := f.check("Grant"); err != nil {
		return 0, err
	}
	return f.Store.Grant(ctx, ttl)
}

// KeepAlive implements store.Store.
func (f *Faulty) KeepAlive(ctx context.Context, id store.LeaseID) error {
	if err := f.check("KeepAlive"); err != nil {
		return err
	}
	return f.Store.KeepAlive(ctx, id)
}

// Revoke implements store.Store.
func (f *Faulty) Revoke(ctx context.Context, id store.LeaseID) error {
	if err := f.check("Revoke"); err != nil {
		return err
	}
	return f.Store.Revoke(ctx, id)
}

// TimeToLive implements store.Store.
func (f *Faulty) TimeToLive(ctx context.Context, id store.LeaseID) (time.Duration, error) {
	if err := f.check("TimeToLive"); err != nil {
		return 0, err
	}
	return f.Store.TimeToLive(ctx, id)
}
