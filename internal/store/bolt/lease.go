package bolt

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/store"
)

// Grant implements store.Store. TTLs are kept exactly (no rounding).
func (s *Store) Grant(ctx context.Context, ttl time.Duration) (store.LeaseID, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	if ttl <= 0 {
		return 0, fmt.Errorf("grant: TTL %v is not positive: %w", ttl, errdefs.ErrInvalid)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	l := &lease{ttl: ttl, deadline: s.opts.Now().Add(ttl)}
	var id store.LeaseID
	err := s.db.Update(func(tx *bbolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		var last uint64
		if b := meta.Get(metaLastLease); len(b) == 8 {
			last = binary.BigEndian.Uint64(b)
		}
		id = store.LeaseID(last + 1)
		if err := meta.Put(metaLastLease, u64(uint64(id))); err != nil {
			return err
		}
		return tx.Bucket(bucketLeases).Put(u64(uint64(id)), encodeLease(l))
	})
	if err != nil {
		return 0, s.writeErr(err)
	}
	s.leases[id] = l
	select {
	case s.leaseWake <- struct{}{}:
	default:
	}
	return id, nil
}

// KeepAlive implements store.Store. The new deadline is written with fsync,
// so that a lease kept alive survives a restart of the store.
func (s *Store) KeepAlive(ctx context.Context, id store.LeaseID) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(ctx); err != nil {
		return err
	}
	now := s.opts.Now()
	l, ok := s.leases[id]
	if !ok || !now.Before(l.deadline) {
		// An expired lease not yet revoked is gone all the same: its
		// holder must assume its keys are.
		return fmt.Errorf("keep alive: lease %x: %w", int64(id), errdefs.ErrNotFound)
	}
	renewed := &lease{ttl: l.ttl, deadline: now.Add(l.ttl)}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketLeases).Put(u64(uint64(id)), encodeLease(renewed))
	})
	if err != nil {
		return s.writeErr(err)
	}
	s.leases[id] = renewed
	return nil
}

// TimeToLive implements store.Store, to the nanosecond of the store's
// clock. A lease past its deadline is ErrNotFound even before the expiry
// loop has deleted its keys (as KeepAlive treats it).
func (s *Store) TimeToLive(ctx context.Context, id store.LeaseID) (time.Duration, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	now := s.opts.Now()
	l, ok := s.leases[id]
	if !ok || !now.Before(l.deadline) {
		return 0, fmt.Errorf("time to live: lease %x: %w", int64(id), errdefs.ErrNotFound)
	}
	return l.deadline.Sub(now), nil
}

// Revoke implements store.Store.
func (s *Store) Revoke(ctx context.Context, id store.LeaseID) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(ctx); err != nil {
		return err
	}
	if _, ok := s.leases[id]; !ok {
		return nil
	}
	return s.revokeLocked(id)
}

// revokeLocked deletes the lease and its keys in one transaction, at one
// revision, and publishes the deletes. s.mu is held.
func (s *Store) revokeLocked(id store.LeaseID) error {
	var rev int64
	var evs []store.Event
	err := s.db.Update(func(tx *bbolt.Tx) error {
		w := newWriter(tx)
		var keys []string
		prefix := u64(uint64(id))
		c := w.leaseKeys.Cursor()
		for k, _ := c.Seek(prefix); k != nil && len(k) >= 8 && string(k[:8]) == string(prefix); k, _ = c.Next() {
			keys = append(keys, string(k[8:]))
		}
		for _, key := range keys {
			if err := w.delete(key); err != nil {
				return err
			}
			// An index entry whose key is gone or moved on is dropped too.
			if err := w.leaseKeys.Delete(leaseKey(id, key)); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketLeases).Delete(prefix); err != nil {
			return err
		}
		evs = w.events
		rev = w.newRev()
		return w.commit()
	})
	if err != nil {
		return s.writeErr(err)
	}
	delete(s.leases, id)
	s.hist.publish(rev, evs)
	return nil
}

// expire revokes every lease past its deadline and returns the earliest
// deadline of those left (zero if none).
func (s *Store) expire() (time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Now()
	var next time.Time
	for id, l := range s.leases {
		if now.Before(l.deadline) {
			if next.IsZero() || l.deadline.Before(next) {
				next = l.deadline
			}
			continue
		}
		if err := s.revokeLocked(id); err != nil {
			return now.Add(time.Second), fmt.Errorf("expire lease %x: %w", int64(id), err)
		}
	}
	return next, nil
}

// expireLoop expires leases at their deadlines until Close.
func (s *Store) expireLoop() {
	defer s.loops.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next, err := s.expire()
		if err != nil {
			s.opts.Logger.Error("lease expiry failed; trying again", "store", s.path, "err", err)
		}
		wait := time.Hour
		if !next.IsZero() {
			// A deadline is checked against the wall clock; waking a
			// little late is fine, early would only loop once more.
			wait = max(next.Sub(s.opts.Now()), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-s.done:
			return
		case <-s.leaseWake:
			// Reset above needs no drain: timers since Go 1.23 deliver
			// nothing stale.
		case <-timer.C:
		}
	}
}
