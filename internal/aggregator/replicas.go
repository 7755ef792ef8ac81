package aggregator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/store"
)

// Keys of the replicas' coordination in the store (etcd: under
// --etcd-prefix). Every one is attached to its replica's lease, so a replica
// that dies leaves none behind longer than the lease TTL.
//
//	nodes/NODE/holder  the replica id holding NODE's stream
//	replicas/ID        {"id": ID, "api": ADVERTISED gRPC ADDRESS}
//	leader             the replica id running the once-only housekeeping
const (
	holdersPrefix  = "nodes/"
	holderSuffix   = "/holder"
	replicasPrefix = "replicas/"
	leaderKey      = "leader"
)

// DefaultLeaseTTL is the replica lease's default TTL (Config.LeaseTTL).
const DefaultLeaseTTL = 10 * time.Second

func holderKey(node string) string { return holdersPrefix + url.PathEscape(node) + holderSuffix }

// nodeOfHolderKey is holderKey's inverse ("" for another key).
func nodeOfHolderKey(key string) string {
	rest, ok := strings.CutPrefix(key, holdersPrefix)
	if !ok {
		return ""
	}
	esc, ok := strings.CutSuffix(rest, holderSuffix)
	if !ok || strings.Contains(esc, "/") {
		return ""
	}
	node, err := url.PathUnescape(esc)
	if err != nil {
		return ""
	}
	return node
}

// errLeaseLost is the cancel cause of the streams a replica drops when its
// lease ends: another replica may hold their nodes now.
var errLeaseLost = errors.New("this aggregator replica lost its lease in the shared store")

// errHeldElsewhere is the cancel cause of a stream admitted while the store
// was unreachable whose node turned out to be held by another replica.
var errHeldElsewhere = errors.New("the node is held by another aggregator replica")

// replicaInfo is the value of replicas/ID.
type replicaInfo struct {
	ID  string `json:"id"`
	API string `json:"api"`
}

// holding is one node this replica holds: the revision of its holder key
// (0: admitted while the store could not be reached, claim pending) and the
// stream that holds it.
type holding struct {
	rev    int64
	lease  store.LeaseID
	stream *agentStream
}

// replicas is a replica's part in a set of aggregators sharing one store:
// its lease (one per replica, renewed every TTL/3), the nodes whose streams
// it holds under that lease, its registration for the fleet-wide reads,
// and the election of the replica that runs the once-only housekeeping.
//
// Correctness rests on the store's conditions: a node's holder key is
// created only if absent, bound to the lease; a replica that learns its
// lease is gone drops every stream at once. A replica cut off from the
// store keeps its streams (ingest and exposition go on; nobody else can
// claim a node without the store either) until the store tells it its
// lease has ended.
type replicas struct {
	st        store.Store
	id        string
	ttl       time.Duration
	advertise string
	log       *slog.Logger
	m         *selfMetrics
	// drop ends a held stream (lease lost, or claimed elsewhere while this
	// replica could not tell); moved tells the gateway another replica
	// holds node now.
	drop  func(node string, s *agentStream, cause error)
	moved func(node string)

	mu        sync.Mutex
	lease     store.LeaseID
	renewed   time.Time
	held      map[string]*holding
	releases  map[string]int64 // holder keys to delete (a release that failed), by revision
	nodeLocks map[string]*nodeLock
	isLeader  bool
	peers     map[string]string // other replicas: id → advertised address
	peersGen  atomic.Uint64
	holders   map[string]string // every node's holder as the watch saw it: node → replica id
	// unregistered: the watch saw this replica's registration deleted or
	// put under another lease; tick registers it again.
	unregistered bool
	// idTaken: the last registration found the id under another live lease
	// (logged once per such spell).
	idTaken bool

	wake chan struct{}
}

type nodeLock struct {
	mu   sync.Mutex
	refs int
}

func newReplicas(st store.Store, id string, ttl time.Duration, advertise string, log *slog.Logger, m *selfMetrics) *replicas {
	return &replicas{
		st: st, id: id, ttl: ttl, advertise: advertise, log: log, m: m,
		held: map[string]*holding{}, releases: map[string]int64{}, nodeLocks: map[string]*nodeLock{},
		peers: map[string]string{}, holders: map[string]string{}, wake: make(chan struct{}, 1),
	}
}

// lockNode serializes the claim and release of one node.
func (r *replicas) lockNode(node string) func() {
	r.mu.Lock()
	l := r.nodeLocks[node]
	if l == nil {
		l = &nodeLock{}
		r.nodeLocks[node] = l
	}
	l.refs++
	r.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		r.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(r.nodeLocks, node)
		}
		r.mu.Unlock()
	}
}

// claim makes this replica the holder of node for stream s. fresh reports
// that the replica did not hold the node before (its local state of the
// node may be older than what another replica applied: ask for a
// snapshot). A node held by another live replica is refused with
// Unavailable naming it: the agent backs off and tries another address.
// When the store cannot be reached the stream is admitted, and the claim is
// made when the store answers again.
func (r *replicas) claim(ctx context.Context, node string, s *agentStream) (fresh bool, err error) {
	unlock := r.lockNode(node)
	defer unlock()
	r.mu.Lock()
	lease := r.lease
	if h := r.held[node]; h != nil && h.rev != 0 && h.lease == lease {
		h.stream = s // a reconnect replacing the node's stream here
		r.mu.Unlock()
		return false, nil
	}
	pendingRelease, hadRelease := r.releases[node]
	r.mu.Unlock()

	cctx, cancel := context.WithTimeout(ctx, r.ttl/2)
	defer cancel()
	admitUnclaimed := func(err error) (bool, error) {
		r.log.Warn("the store cannot be reached: agent stream admitted without a claim; it is claimed when the store answers", "node", node, "err", err)
		r.mu.Lock()
		r.held[node] = &holding{stream: s}
		r.mu.Unlock()
		r.kick()
		return true, nil
	}
	if lease == store.NoLease {
		return admitUnclaimed(fmt.Errorf("no lease yet: %w", errdefs.ErrUnavailable))
	}
	key := holderKey(node)
	res, err := r.st.Txn(cctx, []store.Cond{{Key: key, ModRevision: 0}}, []store.Op{store.PutWithLease(key, []byte(r.id), lease)})
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		r.lost(lease)
		return false, status.Errorf(codes.Unavailable, "aggregator replica %s lost its lease in the store; connect to another replica", r.id)
	case err != nil:
		return admitUnclaimed(err)
	}
	rev := res.Revision
	if !res.Succeeded {
		kv, err := r.st.Get(cctx, key)
		switch {
		case errors.Is(err, errdefs.ErrNotFound):
			return false, status.Errorf(codes.Unavailable, "node %s was being released by another aggregator replica; try again", node)
		case err != nil:
			return admitUnclaimed(err)
		case string(kv.Value) != r.id || kv.Lease != lease:
			r.m.rejected.WithLabelValues("held_elsewhere").Inc()
			return false, heldElsewhere(node, string(kv.Value), r.leaseRemaining(cctx, kv.Lease))
		}
		// Ours: a release that failed left it (or a stream admitted while
		// the store was away).
		rev = kv.ModRevision
	}
	r.mu.Lock()
	if hadRelease && r.releases[node] == pendingRelease {
		delete(r.releases, node)
	}
	if r.lease != lease {
		r.mu.Unlock()
		return false, status.Errorf(codes.Unavailable, "aggregator replica %s lost its lease in the store; connect to another replica", r.id)
	}
	r.held[node] = &holding{rev: rev, lease: lease, stream: s}
	r.setHeldGauge()
	r.mu.Unlock()
	return true, nil
}

// release gives node up when its stream s ends (unless a newer stream of
// the node holds it). A release the store refuses now is tried again by run.
func (r *replicas) release(node string, s *agentStream) {
	unlock := r.lockNode(node)
	defer unlock()
	r.mu.Lock()
	h := r.held[node]
	if h == nil || h.stream != s {
		r.mu.Unlock()
		return
	}
	delete(r.held, node)
	r.setHeldGauge()
	r.mu.Unlock()
	if h.rev == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.ttl/2)
	defer cancel()
	if err := r.deleteHolder(ctx, node, h.rev); err != nil {
		r.log.Warn("releasing a node's holder key failed; trying again", "node", node, "err", err)
		r.mu.Lock()
		r.releases[node] = h.rev
		r.mu.Unlock()
	}
}

func (r *replicas) deleteHolder(ctx context.Context, node string, rev int64) error {
	key := holderKey(node)
	_, err := r.st.Txn(ctx, []store.Cond{{Key: key, ModRevision: rev}}, []store.Op{store.Delete(key)})
	return err
}

func (r *replicas) setHeldGauge() {
	n := 0
	for _, h := range r.held {
		if h.rev != 0 {
			n++
		}
	}
	r.m.heldNodes.Set(float64(n))
}

// holds reports whether a stream of node is held here now.
func (r *replicas) holds(node string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.held[node] != nil
}

// leader reports whether this replica is the elected one, as of a renewal
// of its lease within the TTL.
func (r *replicas) leader() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.isLeader && r.lease != store.NoLease && time.Since(r.renewed) < r.ttl
}

// lost forgets everything bound to lease (it has ended) and drops every
// stream held under it.
func (r *replicas) lost(lease store.LeaseID) {
	r.mu.Lock()
	if r.lease != lease || lease == store.NoLease {
		r.mu.Unlock()
		return
	}
	r.lease = store.NoLease
	r.isLeader = false
	var drop []*holding
	var nodes []string
	for node, h := range r.held {
		drop = append(drop, h)
		nodes = append(nodes, node)
	}
	r.held = map[string]*holding{}
	r.releases = map[string]int64{}
	r.setHeldGauge()
	r.mu.Unlock()
	r.log.Error("replica lease lost: dropping every agent stream it held; their agents reconnect to a replica with a lease", "lease", fmt.Sprintf("%x", int64(lease)), "streams", len(drop))
	for i, h := range drop {
		r.drop(nodes[i], h.stream, errLeaseLost)
	}
	r.kick()
}

func (r *replicas) kick() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// run keeps the lease, the registration, the election, the pending claims
// and releases, and the watches of holders and replicas until ctx ends,
// then revokes the lease (the replica's keys go at once).
func (r *replicas) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); r.watchPrefix(ctx, holdersPrefix, r.onHolders) }()
	go func() { defer wg.Done(); r.watchPrefix(ctx, replicasPrefix, r.onReplicas) }()
	every := max(r.ttl/3, 50*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		r.tick(ctx)
		select {
		case <-ctx.Done():
			wg.Wait()
			r.mu.Lock()
			lease := r.lease
			r.mu.Unlock()
			if lease != store.NoLease {
				rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				if err := r.st.Revoke(rctx, lease); err != nil {
					r.log.Warn("revoking the replica lease at shutdown; its keys lapse with the TTL", "err", err)
				}
				cancel()
			}
			return
		case <-t.C:
		case <-r.wake:
		}
	}
}

func (r *replicas) tick(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, max(r.ttl/3, 50*time.Millisecond))
	defer cancel()
	r.mu.Lock()
	lease := r.lease
	r.mu.Unlock()
	if lease == store.NoLease {
		id, err := r.st.Grant(cctx, r.ttl)
		if err != nil {
			if ctx.Err() == nil {
				r.log.Warn("no replica lease: the store does not answer", "err", err)
			}
			return
		}
		if _, err := r.register(cctx, id); err != nil {
			r.registerFailed(err)
			_ = r.st.Revoke(cctx, id)
			return
		}
		r.mu.Lock()
		r.lease, r.renewed = id, time.Now()
		r.unregistered, r.idTaken = false, false
		r.mu.Unlock()
		lease = id
		r.log.Info("replica lease granted", "replica", r.id, "lease", fmt.Sprintf("%x", int64(id)), "ttl", r.ttl, "api", r.advertise)
	} else {
		err := r.st.KeepAlive(cctx, lease)
		switch {
		case errors.Is(err, errdefs.ErrNotFound):
			r.lost(lease)
			return
		case err != nil:
			if ctx.Err() == nil {
				r.log.Warn("renewing the replica lease failed; keeping the streams until the store answers", "err", err)
			}
			return
		}
		r.mu.Lock()
		r.renewed = time.Now()
		again := r.unregistered
		r.unregistered = false
		r.mu.Unlock()
		if again {
			r.reregister(cctx, lease)
		}
	}
	r.elect(cctx, lease)
	r.settle(cctx, lease)
}

// errReplicaIDInUse: another live replica is registered under this
// replica's id.
var errReplicaIDInUse = errors.New("replica id in use")

// idInUse describes kv, the registration of id under another live lease.
func idInUse(id string, kv store.KV) error {
	var info replicaInfo
	api := "not known"
	if json.Unmarshal(kv.Value, &info) == nil && info.API != "" {
		api = info.API
	}
	return fmt.Errorf("aggregator replica id %q is held by a live replica (API %s, lease %x): give every replica its own --replica-id: %w: %w",
		id, api, int64(kv.Lease), errReplicaIDInUse, errdefs.ErrConflict)
}

// checkID refuses to start a replica whose id a live replica is registered
// under (its key lives as long as its lease). A store that does not answer
// is not a refusal: tick's registration is conditional too.
func (r *replicas) checkID(ctx context.Context) error {
	kv, err := r.st.Get(ctx, replicasPrefix+r.id)
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		return nil
	case err != nil:
		r.log.Warn("could not check that the replica id is free: the store does not answer; registration checks again", "replica", r.id, "err", err)
		return nil
	}
	return idInUse(r.id, kv)
}

// register puts the registration under lease unless it is there; created
// reports that it was not. It never overwrites another lease's: that is
// errReplicaIDInUse.
func (r *replicas) register(ctx context.Context, lease store.LeaseID) (created bool, err error) {
	key := replicasPrefix + r.id
	info, _ := json.Marshal(replicaInfo{ID: r.id, API: r.advertise})
	res, err := r.st.Txn(ctx, []store.Cond{{Key: key, ModRevision: 0}}, []store.Op{store.PutWithLease(key, info, lease)})
	if err != nil {
		return false, err
	}
	if res.Succeeded {
		return true, nil
	}
	kv, err := r.st.Get(ctx, key)
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		return false, fmt.Errorf("the registration went away while it was made: %w", errdefs.ErrUnavailable)
	case err != nil:
		return false, err
	case kv.Lease == lease:
		return false, nil
	}
	return false, idInUse(r.id, kv)
}

func (r *replicas) registerFailed(err error) {
	if !errors.Is(err, errReplicaIDInUse) {
		r.log.Warn("registering the replica failed; trying again", "replica", r.id, "err", err)
		return
	}
	r.mu.Lock()
	first := !r.idTaken
	r.idTaken = true
	r.mu.Unlock()
	if first {
		r.log.Error("another live replica is registered under this replica's id: this one stays out of the fleet-wide reads until the id is free", "replica", r.id, "err", err)
	}
}

// reregister registers again after the watch saw the registration go
// (deleted by hand, or taken over and then released by a clashing replica).
func (r *replicas) reregister(ctx context.Context, lease store.LeaseID) {
	created, err := r.register(ctx, lease)
	if err != nil {
		r.registerFailed(err)
		r.mu.Lock()
		if r.lease == lease {
			r.unregistered = true // tried again at the next tick
		}
		r.mu.Unlock()
		return
	}
	r.mu.Lock()
	r.idTaken = false
	r.mu.Unlock()
	if created {
		r.log.Warn("replica registration was gone from the store: registered again", "replica", r.id, "lease", fmt.Sprintf("%x", int64(lease)))
	}
}

// elect takes the leader key when it is free. The leader key is bound to
// the lease: it lapses with it.
func (r *replicas) elect(ctx context.Context, lease store.LeaseID) {
	_, err := store.Create(ctx, r.st, leaderKey, []byte(r.id), lease)
	leader := err == nil
	switch {
	case store.IsConflict(err):
		kv, gerr := r.st.Get(ctx, leaderKey)
		if gerr != nil {
			return
		}
		leader = string(kv.Value) == r.id && kv.Lease == lease
	case errors.Is(err, errdefs.ErrNotFound):
		r.lost(lease)
		return
	case err != nil:
		return
	}
	r.mu.Lock()
	changed := r.isLeader != leader && r.lease == lease
	if r.lease == lease {
		r.isLeader = leader
	}
	r.mu.Unlock()
	if changed {
		r.log.Info("replica leadership changed", "replica", r.id, "leader", leader)
	}
}

// settle claims the nodes admitted while the store was away and retries
// failed releases.
func (r *replicas) settle(ctx context.Context, lease store.LeaseID) {
	r.mu.Lock()
	var pending []string
	for node, h := range r.held {
		if h.rev == 0 {
			pending = append(pending, node)
		}
	}
	releases := make(map[string]int64, len(r.releases))
	for node, rev := range r.releases {
		releases[node] = rev
	}
	r.mu.Unlock()
	for node, rev := range releases {
		if err := r.deleteHolder(ctx, node, rev); err != nil {
			continue
		}
		r.mu.Lock()
		if r.releases[node] == rev {
			delete(r.releases, node)
		}
		r.mu.Unlock()
	}
	for _, node := range pending {
		r.claimPending(ctx, node, lease)
	}
}

func (r *replicas) claimPending(ctx context.Context, node string, lease store.LeaseID) {
	unlock := r.lockNode(node)
	defer unlock()
	r.mu.Lock()
	h := r.held[node]
	r.mu.Unlock()
	if h == nil || h.rev != 0 {
		return
	}
	key := holderKey(node)
	res, err := r.st.Txn(ctx, []store.Cond{{Key: key, ModRevision: 0}}, []store.Op{store.PutWithLease(key, []byte(r.id), lease)})
	if err != nil {
		return
	}
	rev := res.Revision
	if !res.Succeeded {
		kv, err := r.st.Get(ctx, key)
		if err != nil {
			return
		}
		if string(kv.Value) != r.id || kv.Lease != lease {
			r.mu.Lock()
			if r.held[node] == h {
				delete(r.held, node)
			}
			r.mu.Unlock()
			r.log.Warn("a stream admitted while the store was away is held by another replica: dropped", "node", node, "holder", string(kv.Value))
			r.drop(node, h.stream, errHeldElsewhere)
			return
		}
		rev = kv.ModRevision
	}
	r.mu.Lock()
	if r.held[node] == h && r.lease == lease {
		h.rev, h.lease = rev, lease
		r.setHeldGauge()
	}
	r.mu.Unlock()
}

// onHolders: another replica holds a node this one has state of: forget it
// here unless a stream of it is held here (a later claim of ours).
func (r *replicas) onHolders(ev store.Event) {
	node := nodeOfHolderKey(ev.KV.Key)
	if node == "" {
		return
	}
	r.mu.Lock()
	if ev.Type == store.EventDelete {
		delete(r.holders, node)
	} else {
		r.holders[node] = string(ev.KV.Value)
	}
	r.mu.Unlock()
	if ev.Type != store.EventPut || string(ev.KV.Value) == r.id {
		return
	}
	r.moved(node)
}

// unregisteredHolders describes the replicas that hold nodes but are not
// in the registry ("" when none): a fleet-wide read cannot ask them, so
// its answer lacks their nodes.
func (r *replicas) unregisteredHolders() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	count := map[string]int{}
	for _, id := range r.holders {
		if _, ok := r.peers[id]; !ok && id != r.id {
			count[id]++
		}
	}
	var out []string
	for id, n := range count {
		out = append(out, fmt.Sprintf("replica %s holds %d nodes but is not registered", id, n))
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

func (r *replicas) onReplicas(ev store.Event) {
	id := strings.TrimPrefix(ev.KV.Key, replicasPrefix)
	if id == "" {
		return
	}
	if id == r.id {
		r.mu.Lock()
		gone := r.lease != store.NoLease && (ev.Type == store.EventDelete || ev.KV.Lease != r.lease)
		if gone {
			r.unregistered = true
		}
		r.mu.Unlock()
		if gone {
			r.kick()
		}
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if ev.Type == store.EventDelete {
		delete(r.peers, id)
		r.m.peerErrors.DeleteLabelValues(id)
	} else {
		var info replicaInfo
		if err := json.Unmarshal(ev.KV.Value, &info); err != nil || info.API == "" {
			return
		}
		r.peers[id] = info.API
		r.m.peerErrors.WithLabelValues(id) // at 0 from when the replica is known
	}
	r.peersGen.Add(1)
}

// forgetPeersGone removes the peer error series of the replicas in before
// that a new listing no longer has.
func (r *replicas) forgetPeersGone(before map[string]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id := range before {
		if _, ok := r.peers[id]; !ok {
			r.m.peerErrors.DeleteLabelValues(id)
		}
	}
}

// peerList returns the other replicas (id → address).
func (r *replicas) peerList() map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]string, len(r.peers))
	for id, a := range r.peers {
		out[id] = a
	}
	return out
}

// watchPrefix lists prefix (each key as a put) and watches it, listing
// again after an error (with a backoff), until ctx ends.
func (r *replicas) watchPrefix(ctx context.Context, prefix string, fn func(store.Event)) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := func() error {
			lctx, cancel := context.WithTimeout(ctx, max(r.ttl/2, time.Second))
			kvs, rev, err := r.st.List(lctx, prefix, 0)
			cancel()
			if err != nil {
				return err
			}
			var before map[string]string
			switch prefix {
			case replicasPrefix:
				// A listing replaces what was known.
				r.mu.Lock()
				before = r.peers
				r.peers = map[string]string{}
				if r.lease != store.NoLease && !slices.ContainsFunc(kvs, func(kv store.KV) bool { return kv.Key == replicasPrefix+r.id }) {
					r.unregistered = true
				}
				r.mu.Unlock()
			case holdersPrefix:
				r.mu.Lock()
				r.holders = map[string]string{}
				r.mu.Unlock()
			}
			for _, kv := range kvs {
				fn(store.Event{Type: store.EventPut, KV: kv})
			}
			if before != nil {
				r.forgetPeersGone(before)
			}
			backoff = 100 * time.Millisecond
			for resp := range r.st.Watch(ctx, prefix, rev) {
				if resp.Err != nil {
					return resp.Err
				}
				for _, ev := range resp.Events {
					fn(ev)
				}
			}
			return ctx.Err()
		}()
		if ctx.Err() != nil {
			return
		}
		r.log.Debug("replica watch ended; listing again", "prefix", prefix, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// leaseRemaining is the longest the holder's lease can still last: its
// remaining TTL from the store plus a second (etcd answers in whole
// seconds and revokes expired leases on a timer), at most the replicas'
// TTL plus that second; a second when the lease has just ended (its keys
// go within a moment); the replicas' TTL when the store cannot tell.
func (r *replicas) leaseRemaining(ctx context.Context, lease store.LeaseID) time.Duration {
	if lease == store.NoLease {
		return r.ttl
	}
	left, err := r.st.TimeToLive(ctx, lease)
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		return time.Second
	case err != nil:
		return r.ttl
	}
	return min(left+time.Second, r.ttl+time.Second)
}

// heldElsewhere is the refusal of a node held by another replica: Unavailable
// naming the holder, with a RetryInfo detail telling when the holder's lease
// ends at the latest (the agent retries then instead of backing off).
func heldElsewhere(node, holder string, remaining time.Duration) error {
	st := status.Newf(codes.Unavailable, "node %s is held by aggregator replica %s (until its stream ends or its lease lapses, within %v); connect to another replica", node, holder, remaining)
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(remaining)}); err == nil {
		st = d
	}
	return st.Err()
}
