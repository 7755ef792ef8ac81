package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	bbolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/store"
)

// Options configure a Store. The zero value is usable: zero fields take the
// defaults written beside them.
type Options struct {
	// History is how many recent change events are kept in memory to serve
	// Watch. A Watch from a revision older than the oldest kept, and a
	// watcher whose unread changes have left the history, get
	// store.ErrCompacted and must list again. Default 10000 (at the 500
	// alerts/s goal and a few events per alert, several seconds of lag).
	History int
	// WatchBuffer is how many responses each watch channel holds before
	// the watcher stops reading the history and waits for its consumer.
	// Default 128.
	WatchBuffer int
	// LockTimeout is how long Open waits for the file's lock, held by
	// another process (or another Open of the same file) that has it open.
	// Default 1 s.
	LockTimeout time.Duration
	// Now is the clock, for lease deadlines; default time.Now.
	Now func() time.Time
	// Logger receives what the store cannot return to a caller (a lease
	// expiry that could not be written; it is tried again). Default: discard.
	Logger *slog.Logger
}

func (o *Options) setDefaults() {
	if o.History <= 0 {
		o.History = 10000
	}
	if o.WatchBuffer <= 0 {
		o.WatchBuffer = 128
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// maxKeySize leaves room for the lease index's 8-byte prefix within
// bbolt's limit.
const maxKeySize = bbolt.MaxKeySize - 8

// format names this file layout in the meta bucket; Open refuses others.
const format = "vigil-store-v1"

var (
	bucketMeta      = []byte("meta")
	bucketKV        = []byte("kv")
	bucketLeases    = []byte("leases")
	bucketLeaseKeys = []byte("lease-keys") // lease id (8 bytes, big endian) + key
	metaFormat      = []byte("format")
	metaRevision    = []byte("revision")
	metaLastLease   = []byte("last-lease")
)

// Store is a store.Store on one bbolt file. Its methods are safe for
// concurrent use. Writes (Txn, Grant, KeepAlive, Revoke, lease expiry) are
// serialized, each one committed with fsync (concurrent Txns share one);
// Get and List read a snapshot without waiting for writers. Grant,
// KeepAlive, Revoke and a Txn already taken into a batch wait for the
// commit in progress (one fsync) even past their ctx, so that their outcome
// is known; a Txn still queued leaves the queue when its ctx ends.
type Store struct {
	path string
	opts Options
	db   *bbolt.DB
	hist *history

	// mu serializes writes and guards leases and the publication of their
	// events in revision order.
	mu     sync.Mutex
	leases map[store.LeaseID]*lease

	// pmu guards the Txns waiting for a commit (group commit).
	pmu        sync.Mutex
	pending    []*txnReq
	committing bool

	closed    atomic.Bool
	done      chan struct{} // closed by Close: the expiry loop and watchers stop
	leaseWake chan struct{} // a Grant may have set an earlier deadline
	closeOnce sync.Once
	closeErr  error
	loops     sync.WaitGroup // the expiry loop
}

type lease struct {
	ttl      time.Duration
	deadline time.Time
}

var _ store.Store = (*Store)(nil)

// Open opens (creating it if needed) the store in the file at path. It fails
// with an error naming the file when another process holds it (after
// opts.LockTimeout; errdefs.ErrUnavailable) or when it is not a store of
// this kind or is damaged (errdefs.ErrInvalid). Leases whose deadline
// passed while the store was closed are expired, their keys deleted, before
// Open returns.
func Open(path string, opts Options) (*Store, error) {
	opts.setDefaults()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: opts.LockTimeout})
	if err != nil {
		switch {
		case errors.Is(err, bolterrors.ErrTimeout):
			return nil, fmt.Errorf("open store %s: the file is locked by another process (another aggregator with the same data dir?); gave up after %v: %w",
				path, opts.LockTimeout, errdefs.ErrUnavailable)
		case errors.Is(err, bolterrors.ErrInvalid), errors.Is(err, bolterrors.ErrChecksum), errors.Is(err, bolterrors.ErrVersionMismatch):
			return nil, fmt.Errorf("open store %s: not a valid bbolt file (damaged, or not a store): %v: %w", path, err, errdefs.ErrInvalid)
		}
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s := &Store{
		path:      path,
		opts:      opts,
		db:        db,
		leases:    make(map[store.LeaseID]*lease),
		done:      make(chan struct{}),
		leaseWake: make(chan struct{}, 1),
	}
	rev, err := s.load()
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	s.hist = newHistory(opts.History, rev)
	// Leases that ran out while closed: their deletes are the first
	// changes in the history, which starts at the revision found.
	if _, err := s.expire(); err != nil {
		_ = db.Close()
		return nil, err
	}
	s.loops.Add(1)
	go s.expireLoop()
	return s, nil
}

// load creates the buckets of a new file, checks the format of an existing
// one, and reads the revision and the leases.
func (s *Store) load() (int64, error) {
	var rev int64
	err := s.db.Update(func(tx *bbolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			empty := true
			_ = tx.ForEach(func([]byte, *bbolt.Bucket) error { empty = false; return nil })
			if !empty {
				return fmt.Errorf("open store %s: a bbolt file, but not a Vigil store (no %q bucket): %w", s.path, bucketMeta, errdefs.ErrInvalid)
			}
			var err error
			if meta, err = tx.CreateBucket(bucketMeta); err != nil {
				return err
			}
			if err := meta.Put(metaFormat, []byte(format)); err != nil {
				return err
			}
			// etcd's first revision is 1; so is ours, the first write's 2.
			if err := meta.Put(metaRevision, u64(1)); err != nil {
				return err
			}
			for _, b := range [][]byte{bucketKV, bucketLeases, bucketLeaseKeys} {
				if _, err := tx.CreateBucket(b); err != nil {
					return err
				}
			}
		}
		if f := meta.Get(metaFormat); !bytes.Equal(f, []byte(format)) {
			return fmt.Errorf("open store %s: format %q, this build reads %q: %w", s.path, f, format, errdefs.ErrInvalid)
		}
		for _, b := range [][]byte{bucketKV, bucketLeases, bucketLeaseKeys} {
			if tx.Bucket(b) == nil {
				return fmt.Errorf("open store %s: bucket %q missing: %w", s.path, b, errdefs.ErrInvalid)
			}
		}
		r := meta.Get(metaRevision)
		if len(r) != 8 {
			return fmt.Errorf("open store %s: revision record of %d bytes: %w", s.path, len(r), errdefs.ErrInvalid)
		}
		rev = int64(binary.BigEndian.Uint64(r))
		return tx.Bucket(bucketLeases).ForEach(func(k, v []byte) error {
			id, l, err := decodeLease(k, v)
			if err != nil {
				return fmt.Errorf("open store %s: %w", s.path, err)
			}
			s.leases[id] = l
			return nil
		})
	})
	if err != nil {
		if errors.Is(err, errdefs.ErrInvalid) {
			return 0, err
		}
		return 0, fmt.Errorf("open store %s: %w", s.path, err)
	}
	return rev, nil
}

// Path is the file the store lives in.
func (s *Store) Path() string { return s.path }

// enter fails when the store is closed or ctx has ended.
func (s *Store) enter(ctx context.Context) error {
	if s.closed.Load() {
		return fmt.Errorf("store %s: %w", s.path, store.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return nil
}

// writeErr wraps a failure to commit: the journal cannot be written.
// Refusals (a missing lease, bad input) pass through.
func (s *Store) writeErr(err error) error {
	switch {
	case errors.Is(err, errdefs.ErrNotFound), errors.Is(err, errdefs.ErrInvalid):
		return err
	case s.closed.Load():
		return fmt.Errorf("store %s: %w", s.path, store.ErrClosed)
	}
	return fmt.Errorf("store %s: write: %v: %w", s.path, err, errdefs.ErrUnavailable)
}

func (s *Store) readErr(err error) error {
	if s.closed.Load() {
		return fmt.Errorf("store %s: %w", s.path, store.ErrClosed)
	}
	if errors.Is(err, errdefs.ErrInvalid) {
		return err
	}
	return fmt.Errorf("store %s: read: %v: %w", s.path, err, errdefs.ErrUnavailable)
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, key string) (store.KV, error) {
	if err := s.enter(ctx); err != nil {
		return store.KV{}, err
	}
	if key == "" {
		return store.KV{}, fmt.Errorf("get: empty key: %w", errdefs.ErrInvalid)
	}
	var kv store.KV
	found := false
	err := s.db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket(bucketKV).Get([]byte(key))
		if v == nil {
			return nil
		}
		var err error
		kv, err = decodeKV(key, v)
		found = err == nil
		return err
	})
	if err != nil {
		return store.KV{}, s.readErr(err)
	}
	if !found {
		return store.KV{}, fmt.Errorf("get %q: %w", key, errdefs.ErrNotFound)
	}
	return kv, nil
}

// List implements store.Store.
func (s *Store) List(ctx context.Context, prefix string, limit int) ([]store.KV, int64, error) {
	if err := s.enter(ctx); err != nil {
		return nil, 0, err
	}
	if limit < 0 {
		return nil, 0, fmt.Errorf("list %q: negative limit %d: %w", prefix, limit, errdefs.ErrInvalid)
	}
	var kvs []store.KV
	var rev int64
	err := s.db.View(func(tx *bbolt.Tx) error {
		rev = int64(binary.BigEndian.Uint64(tx.Bucket(bucketMeta).Get(metaRevision)))
		c := tx.Bucket(bucketKV).Cursor()
		p := []byte(prefix)
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			kv, err := decodeKV(string(k), v)
			if err != nil {
				return err
			}
			kvs = append(kvs, kv)
			if limit > 0 && len(kvs) == limit {
				break
			}
		}
		return nil
	})
	if err != nil {
		return nil, 0, s.readErr(err)
	}
	return kvs, rev, nil
}

func validate(conds []store.Cond, ops []store.Op) error {
	for _, c := range conds {
		if c.Key == "" {
			return fmt.Errorf("txn: cond on an empty key: %w", errdefs.ErrInvalid)
		}
		if c.ModRevision < 0 {
			return fmt.Errorf("txn: cond on %q at negative revision %d: %w", c.Key, c.ModRevision, errdefs.ErrInvalid)
		}
	}
	seen := make(map[string]bool, len(ops))
	for _, op := range ops {
		if op.Key == "" {
			return fmt.Errorf("txn: op on an empty key: %w", errdefs.ErrInvalid)
		}
		if len(op.Key) > maxKeySize {
			return fmt.Errorf("txn: key of %d bytes, more than %d: %w", len(op.Key), maxKeySize, errdefs.ErrInvalid)
		}
		if op.Kind != store.OpPut && op.Kind != store.OpDelete {
			return fmt.Errorf("txn: op on %q of unknown kind %d: %w", op.Key, op.Kind, errdefs.ErrInvalid)
		}
		if seen[op.Key] {
			return fmt.Errorf("txn: key %q named by two ops: %w", op.Key, errdefs.ErrInvalid)
		}
		seen[op.Key] = true
	}
	return nil
}

// Txn implements store.Store. Concurrent Txns are committed together, each
// at its own revision, in one bbolt transaction and one fsync (group
// commit): the first caller to find no commit in progress commits every
// Txn queued by then, and hands the next batch to a caller waiting in it.
// A Txn whose ctx ends while it is queued leaves the queue; once a batch
// has taken it, it waits for that batch's commit (one fsync) and is applied
// only if its ctx is still live when its turn in the batch comes.
func (s *Store) Txn(ctx context.Context, conds []store.Cond, ops []store.Op) (store.TxnResult, error) {
	if err := s.enter(ctx); err != nil {
		return store.TxnResult{}, err
	}
	if err := validate(conds, ops); err != nil {
		return store.TxnResult{}, err
	}
	r := &txnReq{ctx: ctx, conds: conds, ops: ops, done: make(chan struct{}), lead: make(chan struct{})}
	s.pmu.Lock()
	s.pending = append(s.pending, r)
	leader := !s.committing
	s.committing = true
	s.pmu.Unlock()
	if !leader {
		select {
		case <-r.done:
			return r.res, r.err
		case <-r.lead:
		case <-ctx.Done():
			if s.unqueue(r) {
				return store.TxnResult{}, ctx.Err()
			}
			// Taken into a batch, or its turn to commit one: see it through.
			select {
			case <-r.done:
				return r.res, r.err
			case <-r.lead:
			}
		}
	}
	// This caller commits the batch it is in, then hands on.
	s.pmu.Lock()
	batch := s.pending
	s.pending = nil
	s.pmu.Unlock()
	s.commit(batch)
	s.pmu.Lock()
	if len(s.pending) > 0 {
		close(s.pending[0].lead)
	} else {
		s.committing = false
	}
	s.pmu.Unlock()
	return r.res, r.err
}

// unqueue takes r out of the queue if no batch has taken it and it has not
// been asked to commit the next one.
func (s *Store) unqueue(r *txnReq) bool {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	select {
	case <-r.lead:
		return false
	default:
	}
	for i, p := range s.pending {
		if p == r {
			s.pending = append(s.pending[:i], s.pending[i+1:]...)
			return true
		}
	}
	return false
}

// txnReq is one queued Txn: its result is set and done closed by the
// caller that commits its batch; lead is closed when it is its caller's
// turn to commit.
type txnReq struct {
	ctx   context.Context
	conds []store.Cond
	ops   []store.Op
	res   store.TxnResult
	evs   []store.Event
	err   error
	done  chan struct{}
	lead  chan struct{}
}

// commit applies a batch of Txns in one bbolt transaction, each at the
// next revision, publishes their events in order and completes them.
func (s *Store) commit(batch []*txnReq) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer func() {
		for _, r := range batch {
			close(r.done)
		}
	}()
	if s.closed.Load() {
		for _, r := range batch {
			r.err = fmt.Errorf("store %s: %w", s.path, store.ErrClosed)
		}
		return
	}
	now := s.opts.Now()
	err := s.db.Update(func(tx *bbolt.Tx) error {
		for _, r := range batch {
			if err := r.ctx.Err(); err != nil {
				r.err = err
				continue
			}
			if err := s.apply(tx, r, now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		for _, r := range batch {
			r.res, r.evs, r.err = store.TxnResult{}, nil, s.writeErr(err)
		}
		return
	}
	for _, r := range batch {
		if r.err == nil {
			s.hist.publish(r.res.Revision, r.evs)
		}
	}
}

// apply carries out one Txn inside tx. A Txn refused (a missing lease, a
// damaged record) sets r.err and writes nothing; an error returned is the
// transaction's and fails the whole batch.
func (s *Store) apply(tx *bbolt.Tx, r *txnReq, now time.Time) error {
	w := newWriter(tx)
	r.res.Revision = w.rev
	for _, c := range r.conds {
		if w.modRevision(c.Key) != c.ModRevision {
			return nil
		}
	}
	for _, op := range r.ops {
		if op.Kind == store.OpPut && op.Lease != store.NoLease {
			if l, ok := s.leases[op.Lease]; !ok || !now.Before(l.deadline) {
				r.err = fmt.Errorf("txn: put %q with lease %x: lease %w", op.Key, int64(op.Lease), errdefs.ErrNotFound)
				return nil
			}
		}
		if old := w.kv.Get([]byte(op.Key)); old != nil && op.Kind == store.OpPut {
			if _, err := decodeKV(op.Key, old); err != nil {
				r.err = fmt.Errorf("store %s: txn: %w", s.path, err)
				return nil
			}
		}
	}
	r.res.Succeeded = true
	for _, op := range r.ops {
		var err error
		if op.Kind == store.OpPut {
			err = w.put(op.Key, op.Value, op.Lease)
		} else {
			err = w.delete(op.Key)
		}
		if err != nil {
			return err
		}
	}
	r.evs = w.events
	r.res.Revision = w.newRev()
	return w.commit()
}

// Close implements store.Store: it stops lease expiry, ends every watch with
// store.ErrClosed, waits for a write in progress and closes the file.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.done)
		s.loops.Wait()
		s.mu.Lock()
		s.closeErr = s.db.Close()
		s.mu.Unlock()
		s.hist.close()
	})
	return s.closeErr
}

// writer applies the ops of one bbolt transaction at the next revision and
// records their events.
type writer struct {
	tx        *bbolt.Tx
	kv        *bbolt.Bucket
	leaseKeys *bbolt.Bucket
	rev       int64 // the revision before this transaction
	events    []store.Event
}

func newWriter(tx *bbolt.Tx) *writer {
	return &writer{
		tx:        tx,
		kv:        tx.Bucket(bucketKV),
		leaseKeys: tx.Bucket(bucketLeaseKeys),
		rev:       int64(binary.BigEndian.Uint64(tx.Bucket(bucketMeta).Get(metaRevision))),
	}
}

// newRev is the revision of this transaction's writes, or the unchanged
// revision when it wrote nothing.
func (w *writer) newRev() int64 {
	if len(w.events) == 0 {
		return w.rev
	}
	return w.rev + 1
}

func (w *writer) modRevision(key string) int64 {
	v := w.kv.Get([]byte(key))
	if v == nil {
		return 0
	}
	kv, err := decodeKV(key, v)
	if err != nil {
		return -1 // matches no cond: a damaged record is never overwritten by a CAS
	}
	return kv.ModRevision
}

func (w *writer) put(key string, value []byte, id store.LeaseID) error {
	rev := w.rev + 1
	kv := store.KV{Key: key, Value: value, CreateRevision: rev, ModRevision: rev, Lease: id}
	if old := w.kv.Get([]byte(key)); old != nil {
		prev, err := decodeKV(key, old)
		if err != nil {
			return err
		}
		kv.CreateRevision = prev.CreateRevision
		if prev.Lease != store.NoLease && prev.Lease != id {
			if err := w.leaseKeys.Delete(leaseKey(prev.Lease, key)); err != nil {
				return err
			}
		}
	}
	if id != store.NoLease {
		if err := w.leaseKeys.Put(leaseKey(id, key), nil); err != nil {
			return err
		}
	}
	if err := w.kv.Put([]byte(key), encodeKV(kv)); err != nil {
		return err
	}
	if value == nil {
		kv.Value = []byte{}
	} else {
		kv.Value = bytes.Clone(value)
	}
	w.events = append(w.events, store.Event{Type: store.EventPut, KV: kv})
	return nil
}

func (w *writer) delete(key string) error {
	old := w.kv.Get([]byte(key))
	if old == nil {
		return nil
	}
	prev, err := decodeKV(key, old)
	if err == nil && prev.Lease != store.NoLease {
		if err := w.leaseKeys.Delete(leaseKey(prev.Lease, key)); err != nil {
			return err
		}
	}
	if err := w.kv.Delete([]byte(key)); err != nil {
		return err
	}
	w.events = append(w.events, store.Event{Type: store.EventDelete, KV: store.KV{Key: key, ModRevision: w.rev + 1}})
	return nil
}

// commit stores the new revision if anything changed.
func (w *writer) commit() error {
	if len(w.events) == 0 {
		return nil
	}
	return w.tx.Bucket(bucketMeta).Put(metaRevision, u64(uint64(w.rev+1)))
}

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

func leaseKey(id store.LeaseID, key string) []byte {
	b := make([]byte, 8, 8+len(key))
	binary.BigEndian.PutUint64(b, uint64(id))
	return append(b, key...)
}
