package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/store"
)

// Config says which etcd cluster to use and how. Zero fields take the
// defaults written beside them; Endpoints is required.
type Config struct {
	// Endpoints are the cluster members' client URLs
	// ("https://10.0.0.1:2379"); the client balances over them and skips
	// those that do not answer.
	Endpoints []string
	// TLS is the client's TLS configuration (the cluster's CA, and a client
	// certificate when the cluster asks for one). Nil speaks plain gRPC,
	// for loopback tests only.
	TLS *tls.Config
	// Prefix is put before every key, so that several deployments (or
	// tests) share a cluster without seeing each other; List and Watch
	// strip it. It ends in exactly one "/" whether given with one or not
	// ("/x" and "/x/" are the same prefix); one of slashes only ("/") is
	// refused. Default "/vigil/".
	Prefix string
	// DialTimeout bounds the first connection to an endpoint. Default 5 s.
	DialTimeout time.Duration
	// RequestTimeout bounds every call, within the caller's context: a
	// cluster that does not answer in time (no quorum, no endpoint up)
	// gives errdefs.ErrUnavailable rather than a wait. Default 5 s.
	RequestTimeout time.Duration
	// WatchBuffer is how many responses each watch channel holds. Events
	// a consumer has not taken wait in the etcd client (unbounded, per
	// watch) and never hold back other watchers. Default 128.
	WatchBuffer int
	// Logger receives the etcd client's own log. Default: discard (every
	// failure reaches the caller as an error).
	Logger *zap.Logger
}

// NormalizePrefix is the prefix keys are joined to: p with exactly one
// trailing "/" ("/x" and "/x/" give "/x/"). A prefix without a name ("",
// "/", "//") is refused with errdefs.ErrInvalid: its keys would be the
// cluster's top level, shared with everything else on it.
func NormalizePrefix(p string) (string, error) {
	name := strings.TrimRight(p, "/")
	if strings.Trim(name, "/") == "" {
		return "", fmt.Errorf("etcd key prefix %q has no name (give one such as /vigil/): %w", p, errdefs.ErrInvalid)
	}
	return name + "/", nil
}

func (c *Config) setDefaults() {
	if c.Prefix == "" {
		c.Prefix = "/vigil/"
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 5 * time.Second
	}
	if c.WatchBuffer <= 0 {
		c.WatchBuffer = 128
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
}

// Store is a store.Store on an etcd cluster. Its methods are safe for
// concurrent use.
type Store struct {
	cfg Config
	cli *clientv3.Client

	closed    atomic.Bool
	done      chan struct{} // closed by Close: watch goroutines end
	watches   sync.WaitGroup
	closeOnce sync.Once
}

var _ store.Store = (*Store)(nil)

// New connects to the cluster. It does not wait for an answer: a cluster
// that is down now makes calls fail with errdefs.ErrUnavailable until it is
// back.
func New(cfg Config) (*Store, error) {
	cfg.setDefaults()
	prefix, err := NormalizePrefix(cfg.Prefix)
	if err != nil {
		return nil, fmt.Errorf("etcd store: %w", err)
	}
	cfg.Prefix = prefix
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("etcd store: no endpoints: %w", errdefs.ErrInvalid)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		TLS:         cfg.TLS,
		DialTimeout: cfg.DialTimeout,
		Logger:      cfg.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("etcd store %v: %v: %w", cfg.Endpoints, err, errdefs.ErrInvalid)
	}
	return &Store{cfg: cfg, cli: cli, done: make(chan struct{})}, nil
}

// Client is the underlying etcd client, for what the store does not offer
// (elections, member status). Closed by Close.
func (s *Store) Client() *clientv3.Client { return s.cli }

// call returns the context for one request: the caller's, bounded by the
// request timeout, and refused by a member that has no leader (rather than
// waiting for one).
func (s *Store) call(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if s.closed.Load() {
		return nil, nil, fmt.Errorf("etcd store: %w", store.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	rctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), s.cfg.RequestTimeout)
	return rctx, cancel, nil
}

// mapErr translates an etcd client error into the store's vocabulary. The
// caller's context errors are kept as they are.
func (s *Store) mapErr(ctx context.Context, what string, err error) error {
	if err == nil {
		return nil
	}
	if s.closed.Load() {
		return fmt.Errorf("etcd store: %s: %w", what, store.ErrClosed)
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("etcd store: %s: %w", what, cerr)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return fmt.Errorf("etcd store: %s: no answer from %v within %v: %w", what, s.cfg.Endpoints, s.cfg.RequestTimeout, errdefs.ErrUnavailable)
	}
	code := codes.Unknown
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		code = ee.Code()
	} else if st, ok := status.FromError(err); ok {
		code = st.Code()
	}
	switch code {
	case codes.NotFound:
		return fmt.Errorf("etcd store: %s: %v: %w", what, err, errdefs.ErrNotFound)
	case codes.InvalidArgument:
		return fmt.Errorf("etcd store: %s: %v: %w", what, err, errdefs.ErrInvalid)
	case codes.OutOfRange:
		if errors.Is(err, rpctypes.ErrCompacted) {
			return fmt.Errorf("etcd store: %s: %w", what, store.ErrCompacted)
		}
		return fmt.Errorf("etcd store: %s: %v: %w", what, err, errdefs.ErrInvalid)
	case codes.PermissionDenied, codes.Unauthenticated:
		return fmt.Errorf("etcd store: %s: %v: %w", what, err, errdefs.ErrPermission)
	}
	// Unavailable (no leader, leader changed, server stopped, no
	// connection), ResourceExhausted (too many requests, no space) and
	// anything unforeseen: trying later may work.
	return fmt.Errorf("etcd store: %s: %v: %w", what, err, errdefs.ErrUnavailable)
}

// key is the one place a key is joined to the prefix, which ends in one
// "/" (NormalizePrefix): keys are relative ("nodes/n1/holder").
func (s *Store) key(k string) string { return s.cfg.Prefix + k }

func (s *Store) kv(kv *mvccpb.KeyValue) store.KV {
	return store.KV{
		Key:            strings.TrimPrefix(string(kv.Key), s.cfg.Prefix),
		Value:          kv.Value,
		CreateRevision: kv.CreateRevision,
		ModRevision:    kv.ModRevision,
		Lease:          store.LeaseID(kv.Lease),
	}
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, key string) (store.KV, error) {
	if key == "" {
		return store.KV{}, fmt.Errorf("get: empty key: %w", errdefs.ErrInvalid)
	}
	rctx, cancel, err := s.call(ctx)
	if err != nil {
		return store.KV{}, err
	}
	defer cancel()
	resp, err := s.cli.Get(rctx, s.key(key))
	if err != nil {
		return store.KV{}, s.mapErr(ctx, "get "+key, err)
	}
	if len(resp.Kvs) == 0 {
		return store.KV{}, fmt.Errorf("get %q: %w", key, errdefs.ErrNotFound)
	}
	return s.kv(resp.Kvs[0]), nil
}

// List implements store.Store.
func (s *Store) List(ctx context.Context, prefix string, limit int) ([]store.KV, int64, error) {
	if limit < 0 {
		return nil, 0, fmt.Errorf("list %q: negative limit %d: %w", prefix, limit, errdefs.ErrInvalid)
	}
	rctx, cancel, err := s.call(ctx)
	if err != nil {
		return nil, 0, err
	}
	defer cancel()
	resp, err := s.cli.Get(rctx, s.key(prefix), clientv3.WithPrefix(), clientv3.WithLimit(int64(limit)),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, 0, s.mapErr(ctx, "list "+prefix, err)
	}
	kvs := make([]store.KV, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		kvs = append(kvs, s.kv(kv))
	}
	return kvs, resp.Header.Revision, nil
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

// Txn implements store.Store.
func (s *Store) Txn(ctx context.Context, conds []store.Cond, ops []store.Op) (store.TxnResult, error) {
	if err := validate(conds, ops); err != nil {
		return store.TxnResult{}, err
	}
	rctx, cancel, err := s.call(ctx)
	if err != nil {
		return store.TxnResult{}, err
	}
	defer cancel()
	cmps := make([]clientv3.Cmp, 0, len(conds))
	for _, c := range conds {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(s.key(c.Key)), "=", c.ModRevision))
	}
	thens := make([]clientv3.Op, 0, len(ops))
	for _, op := range ops {
		if op.Kind == store.OpPut {
			thens = append(thens, clientv3.OpPut(s.key(op.Key), string(op.Value), clientv3.WithLease(clientv3.LeaseID(op.Lease))))
		} else {
			thens = append(thens, clientv3.OpDelete(s.key(op.Key)))
		}
	}
	resp, err := s.cli.Txn(rctx).If(cmps...).Then(thens...).Commit()
	if err != nil {
		return store.TxnResult{}, s.mapErr(ctx, "txn", err)
	}
	return store.TxnResult{Succeeded: resp.Succeeded, Revision: resp.Header.Revision}, nil
}

// Grant implements store.Store. etcd counts TTLs in whole seconds: ttl is
// rounded up, and the server raises it to its minimum TTL.
func (s *Store) Grant(ctx context.Context, ttl time.Duration) (store.LeaseID, error) {
	if ttl <= 0 {
		return 0, fmt.Errorf("grant: TTL %v is not positive: %w", ttl, errdefs.ErrInvalid)
	}
	rctx, cancel, err := s.call(ctx)
	if err != nil {
		return 0, err
	}
	defer cancel()
	resp, err := s.cli.Grant(rctx, int64(math.Ceil(ttl.Seconds())))
	if err != nil {
		return 0, s.mapErr(ctx, "grant", err)
	}
	return store.LeaseID(resp.ID), nil
}

// KeepAlive implements store.Store.
func (s *Store) KeepAlive(ctx context.Context, id store.LeaseID) error {
	rctx, cancel, err := s.call(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	_, err = s.cli.KeepAliveOnce(rctx, clientv3.LeaseID(id))
	return s.mapErr(ctx, fmt.Sprintf("keep alive lease %x", int64(id)), err)
}

// Revoke implements store.Store.
func (s *Store) Revoke(ctx context.Context, id store.LeaseID) error {
	rctx, cancel, err := s.call(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	_, err = s.cli.Revoke(rctx, clientv3.LeaseID(id))
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return nil
	}
	return s.mapErr(ctx, fmt.Sprintf("revoke lease %x", int64(id)), err)
}

// TimeToLive implements store.Store with etcd's LeaseTimeToLive, which
// answers in whole seconds: a lease with less than a second left, or
// expired but not yet revoked by the server's timer, is ErrNotFound.
func (s *Store) TimeToLive(ctx context.Context, id store.LeaseID) (time.Duration, error) {
	rctx, cancel, err := s.call(ctx)
	if err != nil {
		return 0, err
	}
	defer cancel()
	resp, err := s.cli.TimeToLive(rctx, clientv3.LeaseID(id))
	if err != nil {
		return 0, s.mapErr(ctx, fmt.Sprintf("time to live of lease %x", int64(id)), err)
	}
	if resp.TTL <= 0 {
		// -1: no such lease (the server answers so rather than with an
		// error); 0: expired, its keys about to go.
		return 0, fmt.Errorf("time to live of lease %x: %w", int64(id), errdefs.ErrNotFound)
	}
	return time.Duration(resp.TTL) * time.Second, nil
}

// Compact discards the cluster's history up to rev (for every key in the
// cluster, not only under Prefix): a later Watch from before rev gets
// store.ErrCompacted. etcd keeps every revision until compacted; a
// deployment runs the server with --auto-compaction-retention instead.
func (s *Store) Compact(ctx context.Context, rev int64) error {
	rctx, cancel, err := s.call(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	_, err = s.cli.Compact(rctx, rev, clientv3.WithCompactPhysical())
	return s.mapErr(ctx, fmt.Sprintf("compact to %d", rev), err)
}

// Watch implements store.Store on an etcd watch. A member that loses its
// leader ends the watch with errdefs.ErrUnavailable; a watch from a
// compacted revision ends with store.ErrCompacted; Close ends it with
// store.ErrClosed.
func (s *Store) Watch(ctx context.Context, prefix string, afterRev int64) <-chan store.WatchResponse {
	if s.closed.Load() {
		return failed(fmt.Errorf("etcd store: %w", store.ErrClosed))
	}
	if afterRev < 0 {
		return failed(fmt.Errorf("watch %q: negative revision %d: %w", prefix, afterRev, errdefs.ErrInvalid))
	}
	out := make(chan store.WatchResponse, s.cfg.WatchBuffer)
	if ctx.Err() != nil {
		close(out)
		return out
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	wch := s.cli.Watch(wctx, s.key(prefix), clientv3.WithPrefix(), clientv3.WithRev(afterRev+1))
	s.watches.Add(1)
	go func() {
		defer s.watches.Done()
		defer close(out)
		defer cancel()
		w := watch{out: out, ctx: ctx, done: s.done}
		for {
			var wr clientv3.WatchResponse
			var ok bool
			select {
			case wr, ok = <-wch:
			case <-ctx.Done():
				return
			case <-s.done:
				w.finish(fmt.Errorf("etcd store: %w", store.ErrClosed))
				return
			}
			switch {
			case !ok && ctx.Err() != nil:
				return
			case !ok:
				w.finish(s.mapErr(ctx, "watch "+prefix, errors.New("watch ended by the client")))
				return
			case wr.CompactRevision != 0:
				w.finish(fmt.Errorf("etcd store: watch %q from revision %d: compacted up to %d: %w", prefix, afterRev, wr.CompactRevision, store.ErrCompacted))
				return
			case wr.Err() != nil:
				w.finish(s.mapErr(ctx, "watch "+prefix, wr.Err()))
				return
			case len(wr.Events) == 0:
				continue
			}
			evs := make([]store.Event, 0, len(wr.Events))
			for _, ev := range wr.Events {
				kv := s.kv(ev.Kv)
				typ := store.EventPut
				if ev.Type == mvccpb.DELETE {
					typ = store.EventDelete
					kv = store.KV{Key: kv.Key, ModRevision: kv.ModRevision}
				}
				evs = append(evs, store.Event{Type: typ, KV: kv})
			}
			if !w.send(store.WatchResponse{Events: evs}) {
				return
			}
		}
	}()
	return out
}

// watch is the sending end of one Watch's channel.
type watch struct {
	out  chan store.WatchResponse
	ctx  context.Context
	done <-chan struct{}
}

// send delivers resp unless the watch's context ends or the store closes
// (then it sends ErrClosed and reports false).
func (w watch) send(resp store.WatchResponse) bool {
	select {
	case w.out <- resp:
		return true
	case <-w.ctx.Done():
		return false
	case <-w.done:
		w.finish(fmt.Errorf("etcd store: %w", store.ErrClosed))
		return false
	}
}

// finish sends the watch's last response; when the store is closing and the
// consumer does not read, unread responses are dropped to make room for it.
func (w watch) finish(err error) {
	select {
	case w.out <- store.WatchResponse{Err: err}:
		return
	case <-w.ctx.Done():
		return
	case <-w.done:
	}
	for {
		select {
		case w.out <- store.WatchResponse{Err: fmt.Errorf("etcd store: %w", store.ErrClosed)}:
			return
		default:
		}
		select {
		case <-w.out:
		default:
		}
	}
}

func failed(err error) <-chan store.WatchResponse {
	ch := make(chan store.WatchResponse, 1)
	ch <- store.WatchResponse{Err: err}
	close(ch)
	return ch
}

// Close implements store.Store: it ends every watch with store.ErrClosed and
// closes the client. Calls in flight fail with store.ErrClosed.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.done)
		s.watches.Wait()
		if cerr := s.cli.Close(); cerr != nil && !errors.Is(cerr, context.Canceled) {
			err = fmt.Errorf("etcd store: close: %w", cerr)
		}
	})
	return err
}
