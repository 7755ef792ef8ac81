// Package store holds the aggregator's durable, shared state behind one small
// interface: the remediation journal, deduplication keys, cooldowns and
// budgets, which replica holds which node, and commands waiting for a node.
//
// Two implementations pass one conformance suite (storetest): bbolt, the
// embedded default (a file, nothing to install), and etcd, for several
// aggregator replicas. The interface is shaped after etcd's data model
// (one store-wide revision, a key's create and mod revisions, transactions
// guarded by revision comparisons, leases), because that is the stronger
// of the two; bbolt implements the same semantics in one process.
//
// Correctness never rests on locks: a writer that must not race another
// reads a key's revision and writes with a Txn conditioned on it.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// Errors, beside errdefs' vocabulary: ErrNotFound (Get of a missing key,
// a lease that does not exist), ErrUnavailable (the store cannot be reached
// or has lost quorum; trying again later may work), ErrInvalid (an empty
// key, a non-positive TTL).
var (
	// ErrCompacted: a Watch asked for changes older than the store keeps.
	// The caller lists again and watches from the list's revision.
	ErrCompacted = fmt.Errorf("revision compacted: %w", errdefs.ErrNotFound)
	// ErrClosed: the store was closed.
	ErrClosed = fmt.Errorf("store closed: %w", errdefs.ErrUnavailable)
)

// LeaseID names a lease; NoLease (0) means a key is not attached to one.
type LeaseID int64

// NoLease is the zero LeaseID: the key lives until deleted.
const NoLease LeaseID = 0

// KV is a key and its value as of a revision.
type KV struct {
	Key   string
	Value []byte
	// CreateRevision is the store revision at which the key was created
	// (since it last did not exist).
	CreateRevision int64
	// ModRevision is the store revision of the key's last write. A Txn
	// conditioned on it succeeds only if nobody wrote the key since.
	ModRevision int64
	// Lease the key is attached to, NoLease if none.
	Lease LeaseID
}

// Cond is one comparison of a Txn: it holds when Key's ModRevision equals
// ModRevision. ModRevision 0 means "Key does not exist", which makes a Txn a
// create-if-absent.
type Cond struct {
	Key         string
	ModRevision int64
}

// OpKind is what an Op does.
type OpKind int

const (
	// OpPut writes Value at Key (attached to Lease, if set).
	OpPut OpKind = iota + 1
	// OpDelete removes Key; deleting a missing key is not an error.
	OpDelete
)

// Op is one write of a Txn.
type Op struct {
	Kind  OpKind
	Key   string
	Value []byte
	Lease LeaseID
}

// Put is an OpPut of value at key without a lease.
func Put(key string, value []byte) Op { return Op{Kind: OpPut, Key: key, Value: value} }

// PutWithLease is an OpPut attached to lease: the key is deleted when the
// lease expires or is revoked.
func PutWithLease(key string, value []byte, lease LeaseID) Op {
	return Op{Kind: OpPut, Key: key, Value: value, Lease: lease}
}

// Delete is an OpDelete of key.
func Delete(key string) Op { return Op{Kind: OpDelete, Key: key} }

// TxnResult says whether a Txn's conditions held and at which revision.
type TxnResult struct {
	// Succeeded is true when every Cond held and every Op was applied.
	Succeeded bool
	// Revision is the store's revision after the Txn: the revision of its
	// writes when it succeeded (all Ops of one Txn share it), the current
	// revision when it did not.
	Revision int64
}

// EventType is what happened to a key.
type EventType int

const (
	// EventPut: the key was created or written.
	EventPut EventType = iota + 1
	// EventDelete: the key was deleted (by a Txn or by its lease's end).
	EventDelete
)

// Event is one change seen by a Watch. For EventDelete, KV.Value is nil and
// KV.ModRevision is the revision of the delete.
type Event struct {
	Type EventType
	KV   KV
}

// WatchResponse is one batch of a Watch, in revision order. Err is set on the
// last response of a watch that ended for a reason other than its context
// (ErrCompacted, ErrUnavailable, ErrClosed); the channel is closed after it.
type WatchResponse struct {
	Events []Event
	Err    error
}

// Store is the aggregator's durable state. Every method is safe for
// concurrent use and honours ctx; a store that cannot be reached answers
// ErrUnavailable, never blocks past ctx.
type Store interface {
	// Get returns key's current value, or ErrNotFound.
	Get(ctx context.Context, key string) (KV, error)
	// List returns every key with prefix, sorted by key, and the store
	// revision the listing was read at (a Watch from it misses nothing).
	// limit > 0 returns at most that many keys (the first ones).
	List(ctx context.Context, prefix string, limit int) ([]KV, int64, error)
	// Txn applies ops atomically if every cond holds, and nothing otherwise.
	// A Txn with no ops only compares. An Op may name a key at most once
	// in a Txn (etcd refuses a second write of one key in a transaction):
	// a Txn naming a key twice fails with ErrInvalid and applies nothing.
	// A Txn that changes nothing (only deletes of missing keys) does not
	// advance the revision. A Txn whose conds hold but that attaches a key
	// to a lease that does not exist fails with ErrNotFound and applies
	// nothing. A Txn that fails with ErrUnavailable or a context error
	// may still have been applied (etcd cannot tell a lost answer from a
	// lost request): conditions make the retry safe, and its conflict
	// (or a Get) tells.
	Txn(ctx context.Context, conds []Cond, ops []Op) (TxnResult, error)
	// Watch streams every change to keys with prefix at revisions after
	// afterRev, in revision order, until ctx ends (the channel is then
	// closed without an error) or the watch fails (a last response carries
	// Err). afterRev is a revision the caller read (from List, Get or a
	// Txn); one older than the store keeps gives ErrCompacted in the first
	// response. All events of one revision arrive in one response. The
	// channel is buffered; a consumer that does not read holds the watch
	// back, never writers or other watchers (a store that cannot keep a
	// slow watch's changes ends it with ErrCompacted, never skips any).
	Watch(ctx context.Context, prefix string, afterRev int64) <-chan WatchResponse
	// Grant creates a lease that expires ttl after its last KeepAlive.
	// Keys attached to it are deleted when it expires or is revoked.
	// The store may round ttl up: etcd grants at least its minimum TTL
	// (1.5 election timeouts, 2 s with its default settings).
	Grant(ctx context.Context, ttl time.Duration) (LeaseID, error)
	// KeepAlive renews the lease once, for its full TTL; ErrNotFound when it
	// has expired or was revoked (the holder must assume it lost everything
	// attached to it).
	KeepAlive(ctx context.Context, id LeaseID) error
	// Revoke ends the lease now and deletes its keys; revoking a lease that
	// does not exist is not an error.
	Revoke(ctx context.Context, id LeaseID) error
	// TimeToLive is how long the lease has left unless it is kept alive:
	// more than 0 and at most its TTL; ErrNotFound when it has expired,
	// was revoked or never existed. etcd answers in whole seconds (rounded
	// down) and deletes an expired lease's keys on a timer of its own, so
	// a caller that waits for the keys to go adds a second.
	TimeToLive(ctx context.Context, id LeaseID) (time.Duration, error)
	// Close releases the store; calls after Close fail with ErrClosed.
	// Close is idempotent.
	Close() error
}

// Create writes value at key only if key does not exist: the durable
// create-if-absent that claims an intent. It returns the write's revision,
// or ErrConflict (with the existing key's revisions unknown: Get it) when
// the key exists.
func Create(ctx context.Context, s Store, key string, value []byte, lease LeaseID) (int64, error) {
	res, err := s.Txn(ctx, []Cond{{Key: key, ModRevision: 0}}, []Op{PutWithLease(key, value, lease)})
	if err != nil {
		return 0, err
	}
	if !res.Succeeded {
		return 0, fmt.Errorf("create %q: exists: %w", key, errdefs.ErrConflict)
	}
	return res.Revision, nil
}

// CompareAndSwap writes value at key only if key's ModRevision is still
// modRev, and returns the write's revision or ErrConflict.
func CompareAndSwap(ctx context.Context, s Store, key string, value []byte, modRev int64) (int64, error) {
	res, err := s.Txn(ctx, []Cond{{Key: key, ModRevision: modRev}}, []Op{Put(key, value)})
	if err != nil {
		return 0, err
	}
	if !res.Succeeded {
		return 0, fmt.Errorf("update %q: changed since revision %d: %w", key, modRev, errdefs.ErrConflict)
	}
	return res.Revision, nil
}

// PutKey writes value at key unconditionally and returns the revision.
func PutKey(ctx context.Context, s Store, key string, value []byte) (int64, error) {
	res, err := s.Txn(ctx, nil, []Op{Put(key, value)})
	if err != nil {
		return 0, err
	}
	return res.Revision, nil
}

// DeleteKey deletes key unconditionally.
func DeleteKey(ctx context.Context, s Store, key string) error {
	_, err := s.Txn(ctx, nil, []Op{Delete(key)})
	return err
}

// IsConflict reports whether err is a failed condition.
func IsConflict(err error) bool { return errors.Is(err, errdefs.ErrConflict) }
