package aggregator

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/store"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// Defaults of the event history.
const (
	DefaultHistoryPerNode = 1000
	DefaultHistoryMaxAge  = 24 * time.Hour
	historyPrefix         = "events/"
	historyQueue          = 4096
	historyBatch          = 100 // ops in one Txn: etcd takes at most 128
	historyFlushEvery     = 100 * time.Millisecond
)

// history keeps each node's recent container events (exits, restarts,
// health changes, the agent's decisions) in the store, so that
// `vigilctl events --since 1h` shows the timeline that led to an action,
// also after an aggregator restart. It is bounded per node by count and
// age. Events are written in batches off the ingest path: record never
// blocks, and an event that finds the queue full is dropped and counted
// (vigil_aggregator_event_history_dropped_total), never waited for.
//
// Keys: /events/NODE/UNIXNANO(20 digits)-ID(16 hex digits), so that a
// listing of one node is in time order. ID is a hash of the change's
// identity (eventKey: node, container, type and time; a remediation's id,
// state and time; a node condition and its time), so a change has one key
// whoever writes it. Values: a marshalled WatchEventsResponse.
//
// Several replicas write under one node's prefix: the holder its
// container and condition events, any replica the remediations it decides
// on the node, and, while a node moves, the old holder the events still in
// its queue as the new holder starts. Keys of their own (a per-process
// sequence, as before) made an event the agent sent again to the new
// holder (applied by the old one, not yet acknowledged) appear twice, and
// let two different events of the same nanosecond overwrite each other.
// With the identity in the key the second write of a change replaces the
// first with the same change, and different changes never share a key.
// Writes are not conditioned on the holder key: a replica's late writes and
// its remediations are true history. Each replica bounds a node by the keys
// it knows (read again when it claims the node, and once more
// historySettle later), deleting oldest first: what another replica wrote
// since is not counted until then, so the bound may be passed for a while
// by a few keys, and a deletion of a key already gone is a no-op; no
// deletion goes below the bound.
type history struct {
	st         store.Store
	log        *slog.Logger
	perNode    int
	maxAge     time.Duration
	in         chan *vigilv1.WatchEventsResponse
	dropped    prometheus.Counter
	now        func() time.Time
	keys       map[string][]historyKey // node → its keys, oldest first; loaded on first use
	loadFailed map[string]bool
	// stale names the nodes just claimed from another replica, which wrote
	// some of their events: their keys are read again at the next write,
	// and once more at the first write historySettle after the claim (the
	// old holder's last queued events may land after the first reading).
	stale sync.Map // node → *claimedNode

	// accepted counts the events record queued; written those run has
	// written (or failed to), in the same order; progress is closed and
	// replaced at each batch (mu). See caughtUp.
	accepted atomic.Uint64
	mu       sync.Mutex
	written  uint64
	progress chan struct{}
}

// historySettle is how long after a claim the old holder's queued writes
// of the node may still land (its flush interval, and a store slow to
// answer).
const historySettle = 10 * time.Second

type claimedNode struct {
	at   time.Time
	read bool // read once since the claim; only the writer touches it
}

// reload makes the next write of node's events read its keys again, and
// the first one historySettle later (the node was just claimed from
// another replica, which wrote some). Safe to call from any goroutine.
func (h *history) reload(node string) { h.stale.Store(node, &claimedNode{at: h.now()}) }

type historyKey struct {
	key string
	at  time.Time
}

func newHistory(st store.Store, log *slog.Logger, perNode int, maxAge time.Duration, dropped prometheus.Counter) *history {
	if perNode <= 0 {
		perNode = DefaultHistoryPerNode
	}
	if maxAge <= 0 {
		maxAge = DefaultHistoryMaxAge
	}
	return &history{st: st, log: log, perNode: perNode, maxAge: maxAge, in: make(chan *vigilv1.WatchEventsResponse, historyQueue),
		dropped: dropped, now: time.Now, keys: map[string][]historyKey{}, loadFailed: map[string]bool{}, progress: make(chan struct{})}
}

// record queues an event for the history without blocking.
func (h *history) record(msg *vigilv1.WatchEventsResponse) {
	select {
	case h.in <- msg:
		h.accepted.Add(1)
	default:
		h.dropped.Inc()
	}
}

// historyCatchUpMax bounds how long a replay waits for the events queued
// before it to be written (caughtUp): a store that slow fails the
// replay's own read soon after.
const historyCatchUpMax = 5 * time.Second

// caughtUp waits until every event queued before the call is written to
// the store (or its write failed), so that a replay read after it has
// them: an event published before a watcher subscribed, and still in the
// queue (up to historyFlushEvery), was otherwise neither replayed nor
// sent live. It gives up after historyCatchUpMax or when ctx ends.
func (h *history) caughtUp(ctx context.Context) {
	target := h.accepted.Load()
	limit := time.NewTimer(historyCatchUpMax)
	defer limit.Stop()
	for {
		h.mu.Lock()
		done, progress := h.written >= target, h.progress
		h.mu.Unlock()
		if done {
			return
		}
		select {
		case <-progress:
		case <-ctx.Done():
			return
		case <-limit.C:
			h.log.Warn("event history: a replay did not wait longer for the queued events to be written", "waited", historyCatchUpMax)
			return
		}
	}
}

// wrote records that n more queued events were written (or failed to).
func (h *history) wrote(n int) {
	h.mu.Lock()
	h.written += uint64(n)
	close(h.progress)
	h.progress = make(chan struct{})
	h.mu.Unlock()
}

// run writes queued events in batches until ctx ends, then writes what is
// queued (bounded by a short deadline).
func (h *history) run(ctx context.Context) {
	for {
		var first *vigilv1.WatchEventsResponse
		select {
		case <-ctx.Done():
			h.drain()
			return
		case first = <-h.in:
		}
		batch := []*vigilv1.WatchEventsResponse{first}
		timer := time.NewTimer(historyFlushEvery)
	collect:
		for len(batch) < historyBatch/2 {
			select {
			case m := <-h.in:
				batch = append(batch, m)
			case <-timer.C:
				break collect
			case <-ctx.Done():
				break collect
			}
		}
		timer.Stop()
		h.write(ctx, batch)
		h.wrote(len(batch))
	}
}

func (h *history) drain() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for {
		var batch []*vigilv1.WatchEventsResponse
	fill:
		for len(batch) < historyBatch/2 {
			select {
			case m := <-h.in:
				batch = append(batch, m)
			default:
				break fill
			}
		}
		if len(batch) == 0 || ctx.Err() != nil {
			return
		}
		h.write(ctx, batch)
		h.wrote(len(batch))
	}
}

// write puts a batch, and deletes what it pushes out of each node's bound,
// in one transaction.
func (h *history) write(ctx context.Context, batch []*vigilv1.WatchEventsResponse) {
	var ops []store.Op
	now := h.now()
	touched := map[string]bool{}
	for _, m := range batch {
		node := m.GetNode()
		if node == "" || strings.Contains(node, "/") {
			continue
		}
		h.load(ctx, node)
		at := eventTime(m)
		if at.IsZero() || at.Unix() <= 0 {
			at = now
		}
		key := eventHistoryKey(node, at, m)
		b, err := proto.Marshal(m)
		if err != nil {
			continue
		}
		ops = append(ops, store.Put(key, b))
		h.keys[node] = append(h.keys[node], historyKey{key, at})
		touched[node] = true
	}
	for node := range touched {
		ks := h.keys[node]
		slices.SortFunc(ks, func(a, b historyKey) int { return strings.Compare(a.key, b.key) })
		// A change written again (by this replica, or loaded from
		// another's write) is one key: counted once.
		ks = slices.CompactFunc(ks, func(a, b historyKey) bool { return a.key == b.key })
		cut := 0
		for cut < len(ks) && (len(ks)-cut > h.perNode || now.Sub(ks[cut].at) > h.maxAge) {
			ops = append(ops, store.Delete(ks[cut].key))
			cut++
		}
		h.keys[node] = ks[cut:]
	}
	// A key put and deleted in one batch (over the bound at once) may be
	// named once only: keep the delete.
	ops = dedupeOps(ops)
	for len(ops) > 0 {
		n := min(len(ops), historyBatch)
		if _, err := h.st.Txn(ctx, nil, ops[:n]); err != nil {
			h.dropped.Add(float64(countPuts(ops[:n])))
			h.log.Warn("event history not written", "events", countPuts(ops[:n]), "err", err)
		}
		ops = ops[n:]
	}
}

// eventHistoryKey is the key of change m of node at time at in the
// history: the same for a change whoever writes it (see history).
func eventHistoryKey(node string, at time.Time, m *vigilv1.WatchEventsResponse) string {
	h := fnv.New64a()
	h.Write([]byte(eventKey(m)))
	return fmt.Sprintf("%s%s/%020d-%016x", historyPrefix, node, at.UnixNano(), h.Sum64())
}

func dedupeOps(ops []store.Op) []store.Op {
	last := map[string]int{}
	for i, op := range ops {
		last[op.Key] = i
	}
	out := ops[:0:0]
	for i, op := range ops {
		if last[op.Key] == i {
			out = append(out, op)
		}
	}
	return out
}

func countPuts(ops []store.Op) int {
	n := 0
	for _, op := range ops {
		if op.Kind == store.OpPut {
			n++
		}
	}
	return n
}

// load reads a node's keys from the store the first time the node is
// written after a start, so that the bounds hold across restarts.
func (h *history) load(ctx context.Context, node string) {
	if v, ok := h.stale.Load(node); ok {
		c := v.(*claimedNode)
		switch {
		case !c.read:
			c.read = true
			delete(h.keys, node)
			delete(h.loadFailed, node)
		case h.now().Sub(c.at) >= historySettle:
			h.stale.CompareAndDelete(node, c)
			delete(h.keys, node)
			delete(h.loadFailed, node)
		}
	}
	if _, ok := h.keys[node]; ok || h.loadFailed[node] {
		return
	}
	kvs, _, err := h.st.List(ctx, historyPrefix+node+"/", 0)
	if err != nil {
		h.loadFailed[node] = true
		h.log.Warn("event history of a node not read; its old events are pruned only by later writes", "node", node, "err", err)
		return
	}
	ks := make([]historyKey, 0, len(kvs))
	for _, kv := range kvs {
		var ns int64
		rest := strings.TrimPrefix(kv.Key, historyPrefix+node+"/")
		if _, err := fmt.Sscanf(rest, "%020d-", &ns); err != nil {
			continue
		}
		ks = append(ks, historyKey{kv.Key, time.Unix(0, ns)})
	}
	h.keys[node] = ks
}

// since returns the recorded events at or after t, of node (all nodes for
// "") and namespace (all for ""), oldest first.
func (h *history) since(ctx context.Context, t time.Time, node, namespace string) ([]*vigilv1.WatchEventsResponse, error) {
	if strings.Contains(node, "/") {
		return nil, fmt.Errorf("node %q: %w", node, errdefs.ErrInvalid)
	}
	prefix := historyPrefix
	if node != "" {
		prefix += node + "/"
	}
	kvs, _, err := h.st.List(ctx, prefix, 0)
	if err != nil {
		return nil, fmt.Errorf("event history: %w", err)
	}
	var out []*vigilv1.WatchEventsResponse
	for _, kv := range kvs {
		m := &vigilv1.WatchEventsResponse{}
		if err := proto.Unmarshal(kv.Value, m); err != nil {
			continue
		}
		if eventTime(m).Before(t) {
			continue
		}
		if namespace != "" && eventNamespace(m) != namespace {
			continue
		}
		out = append(out, m)
	}
	slices.SortStableFunc(out, func(a, b *vigilv1.WatchEventsResponse) int {
		return eventTime(a).Compare(eventTime(b))
	})
	return out, nil
}

// eventTime is when a change happened: a container event's time, a node
// event's, a remediation's last update.
func eventTime(m *vigilv1.WatchEventsResponse) time.Time {
	switch {
	case m.GetEvent() != nil:
		return m.GetEvent().GetTime().AsTime()
	case m.GetNodeEvent() != nil:
		return m.GetNodeEvent().GetTime().AsTime()
	case m.GetRemediation() != nil:
		return m.GetRemediation().GetUpdatedAt().AsTime()
	}
	return time.Time{}
}

// eventKey identifies a change for the replay's deduplication against the
// live stream.
func eventKey(m *vigilv1.WatchEventsResponse) string {
	switch {
	case m.GetNodeEvent() != nil:
		return fmt.Sprintf("node|%s|%s|%d", m.GetNode(), m.GetNodeEvent().GetCondition(), eventTime(m).UnixNano())
	case m.GetRemediation() != nil:
		r := m.GetRemediation()
		return fmt.Sprintf("remediation|%s|%d|%d", r.GetId(), r.GetState(), eventTime(m).UnixNano())
	}
	e := m.GetEvent()
	return fmt.Sprintf("%s|%s|%s|%d|%d", m.GetNode(), e.GetContainer().GetNamespace(), e.GetContainer().GetId(), e.GetType(), e.GetTime().AsTime().UnixNano())
}
