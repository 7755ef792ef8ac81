package bolt

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/store"
)

// Watch implements store.Store. The events are served from the in-memory
// history (Options.History); their values are shared among watchers, to be
// read, never written. A watcher that has WatchBuffer responses unread
// stops reading the history; if the changes it has not read leave the
// history meanwhile, its last response is store.ErrCompacted. Close ends
// every watch with store.ErrClosed (a watch whose buffer is full then loses
// its unread responses to make room for that error).
func (s *Store) Watch(ctx context.Context, prefix string, afterRev int64) <-chan store.WatchResponse {
	if s.closed.Load() {
		return failed(fmt.Errorf("store %s: %w", s.path, store.ErrClosed))
	}
	if afterRev < 0 {
		return failed(fmt.Errorf("watch %q: negative revision %d: %w", prefix, afterRev, errdefs.ErrInvalid))
	}
	if ctx.Err() != nil {
		ch := make(chan store.WatchResponse)
		close(ch)
		return ch
	}
	return s.hist.watch(ctx, prefix, afterRev, s.opts.WatchBuffer, s.done)
}

// Compact drops the changes at revisions up to rev from the watch history,
// as etcd's compaction does: a later Watch from before rev gets
// store.ErrCompacted. The keys are unaffected.
func (s *Store) Compact(rev int64) { s.hist.compact(rev) }

func failed(err error) <-chan store.WatchResponse {
	ch := make(chan store.WatchResponse, 1)
	ch <- store.WatchResponse{Err: err}
	close(ch)
	return ch
}

// batch is the events of one revision.
type batch struct {
	rev    int64
	events []store.Event
}

// history holds the most recent changes, in revision order, for watchers.
// publish appends under its lock and only signals watchers (never blocks on
// them); each watcher's goroutine copies what it has not seen yet.
type history struct {
	mu        sync.Mutex
	limit     int     // events kept
	batches   []batch // in revision order
	count     int     // events in batches
	compacted int64   // every change after it is in batches
	rev       int64   // the newest revision published
	watchers  map[*watcher]struct{}
	closed    bool
	wg        sync.WaitGroup // watcher goroutines
}

func newHistory(limit int, rev int64) *history {
	return &history{limit: limit, compacted: rev, rev: rev, watchers: make(map[*watcher]struct{})}
}

// publish records the events of revision rev, which is newer than any
// published before (the store's write lock orders the calls).
func (h *history) publish(rev int64, evs []store.Event) {
	if len(evs) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.batches = append(h.batches, batch{rev: rev, events: evs})
	h.count += len(evs)
	h.rev = rev
	for h.count > h.limit && len(h.batches) > 1 {
		h.dropOldest()
	}
	for w := range h.watchers {
		select {
		case w.notify <- struct{}{}:
		default:
		}
	}
}

func (h *history) dropOldest() {
	h.count -= len(h.batches[0].events)
	h.compacted = h.batches[0].rev
	h.batches[0] = batch{}
	h.batches = h.batches[1:]
}

func (h *history) compact(rev int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for len(h.batches) > 0 && h.batches[0].rev <= rev {
		h.dropOldest()
	}
	h.compacted = max(h.compacted, min(rev, h.rev))
}

// since returns, as responses, up to max revisions' events under prefix
// after cursor, and the revision up to which it looked.
func (h *history) since(cursor int64, prefix string, max int) ([]store.WatchResponse, int64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if cursor < h.compacted {
		return nil, cursor, fmt.Errorf("watch %q from revision %d: the history starts after %d: %w", prefix, cursor, h.compacted, store.ErrCompacted)
	}
	i := sort.Search(len(h.batches), func(i int) bool { return h.batches[i].rev > cursor })
	var out []store.WatchResponse
	for ; i < len(h.batches) && len(out) < max; i++ {
		b := h.batches[i]
		var evs []store.Event
		for _, ev := range b.events {
			if strings.HasPrefix(ev.KV.Key, prefix) {
				evs = append(evs, ev)
			}
		}
		if len(evs) > 0 {
			out = append(out, store.WatchResponse{Events: evs})
		}
		cursor = b.rev
	}
	return out, cursor, nil
}

func (h *history) watch(ctx context.Context, prefix string, afterRev int64, buffer int, done <-chan struct{}) <-chan store.WatchResponse {
	w := &watcher{
		h:      h,
		ctx:    ctx,
		done:   done,
		prefix: prefix,
		cursor: afterRev,
		out:    make(chan store.WatchResponse, buffer),
		notify: make(chan struct{}, 1),
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return failed(store.ErrClosed)
	}
	h.watchers[w] = struct{}{}
	h.wg.Add(1)
	go w.run()
	return w.out
}

// close waits for every watcher to end (they stop on the store's done).
func (h *history) close() {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	h.wg.Wait()
}

// watcher is one Watch: a goroutine that copies the history's changes after
// its cursor to its channel. Owned by the history; it ends on its context,
// on the store's Close, or when it fell behind the history.
type watcher struct {
	h      *history
	ctx    context.Context
	done   <-chan struct{}
	prefix string
	cursor int64
	out    chan store.WatchResponse
	notify chan struct{}
}

func (w *watcher) run() {
	defer w.h.wg.Done()
	defer close(w.out)
	defer func() {
		w.h.mu.Lock()
		delete(w.h.watchers, w)
		w.h.mu.Unlock()
	}()
	for {
		resps, cursor, err := w.h.since(w.cursor, w.prefix, 64)
		if err != nil {
			w.finish(err)
			return
		}
		for _, r := range resps {
			select {
			case w.out <- r:
			case <-w.ctx.Done():
				return
			case <-w.done:
				w.finish(store.ErrClosed)
				return
			}
		}
		if cursor != w.cursor {
			w.cursor = cursor
			continue
		}
		select {
		case <-w.notify:
		case <-w.ctx.Done():
			return
		case <-w.done:
			w.finish(store.ErrClosed)
			return
		}
	}
}

// finish sends the watch's last response. When the store is closing and the
// consumer does not read, unread responses are dropped to make room: the
// error says the watch is over.
func (w *watcher) finish(err error) {
	resp := store.WatchResponse{Err: err}
	select {
	case w.out <- resp:
		return
	case <-w.ctx.Done():
		return
	case <-w.done:
	}
	for {
		select {
		case w.out <- store.WatchResponse{Err: store.ErrClosed}:
			return
		default:
		}
		select {
		case <-w.out:
		default:
		}
	}
}
