package aggregator

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/store"
	"github.com/vigilhq/vigil/internal/store/bolt"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// stuckWatcher is a WatchEvents stream whose client does not read: Send
// blocks (as gRPC's does once the flow-control window is full) until
// release is closed.
type stuckWatcher struct {
	grpc.ServerStream
	ctx     context.Context
	header  chan struct{}
	release chan struct{}

	mu   sync.Mutex
	sent []*vigilv1.WatchEventsResponse
}

func newStuckWatcher(ctx context.Context) *stuckWatcher {
	return &stuckWatcher{ctx: ctx, header: make(chan struct{}), release: make(chan struct{})}
}

func (w *stuckWatcher) Context() context.Context { return w.ctx }

func (w *stuckWatcher) SendHeader(metadata.MD) error { close(w.header); return nil }

func (w *stuckWatcher) Send(m *vigilv1.WatchEventsResponse) error {
	w.mu.Lock()
	w.sent = append(w.sent, m)
	w.mu.Unlock()
	select {
	case <-w.release:
		return nil
	case <-w.ctx.Done():
		return w.ctx.Err()
	}
}

// releaseAndWait lets the client read again and returns how the stream
// (its WatchEvents' result on errc) ended.
func (w *stuckWatcher) releaseAndWait(t *testing.T, errc <-chan error) error {
	t.Helper()
	close(w.release)
	select {
	case err := <-errc:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("WatchEvents still running 30s after the watcher was dropped")
		return nil
	}
}

func (w *stuckWatcher) sentMessages() map[string]bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]bool{}
	for _, m := range w.sent {
		out[m.GetEvent().GetMessage()] = true
	}
	return out
}

// TestSlowWatcherDropped: a WatchEvents stream whose client stops reading
// is dropped once more changes wait for it than its buffer holds, from
// either feed: this replica's (the broadcaster) and the other replicas'
// (the watch of the shared history, which queued without bound behind a
// slow watcher, in the etcd client). The drop is counted
// (vigil_aggregator_watchers_dropped_total{feed}) and the stream ends with
// ResourceExhausted naming the time to watch again from: no later than the
// oldest change the watcher did not get.
func TestSlowWatcherDropped(t *testing.T) {
	base := time.Unix(1_800_000_000, 0)
	event := func(i int) *vigilv1.WatchEventsResponse {
		return exitOfC(fmt.Sprint(i), base.Add(time.Duration(i)*time.Second))
	}
	for _, feed := range []string{feedLocal, feedShared} {
		t.Run(feed, func(t *testing.T) {
			st, err := bolt.Open(filepath.Join(t.TempDir(), "s.db"), bolt.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			fleet := NewFleet()
			m, err := newSelfMetrics(prometheus.NewRegistry(), fleet)
			if err != nil {
				t.Fatal(err)
			}
			const buffer = 4
			api := NewAPI(fleet, buffer, nil)
			api.watchDropped = m.watchDropped
			api.history = newHistory(st, slog.New(slog.DiscardHandler), 0, 0, m.historyDrop)
			if feed == feedShared {
				api.peers = &peerClients{} // fleet-wide: the shared history is watched
			}

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			w := newStuckWatcher(ctx)
			errc := make(chan error, 1)
			go func() { errc <- api.WatchEvents(&vigilv1.WatchEventsRequest{}, w) }()
			<-w.header

			// Changes arrive until the watcher is dropped: published here,
			// or written to the history by another replica. Without a
			// bound they would queue for as long as the test ran.
			written := 0
			deadline := time.Now().Add(30 * time.Second)
			for testutil.ToFloat64(m.watchDropped.WithLabelValues(feed)) == 0 {
				if time.Now().After(deadline) {
					t.Fatalf("%d changes sent to a watcher that does not read (buffer %d): not dropped", written, buffer)
				}
				ev := event(written)
				if feed == feedLocal {
					fleet.events.publishMsg(ev)
				} else {
					b, _ := proto.Marshal(ev)
					if _, err := store.PutKey(ctx, st, eventHistoryKey("n1", ev.GetEvent().GetTime().AsTime(), ev), b); err != nil {
						t.Fatal(err)
					}
				}
				written++
			}
			if other := watchFeeds[0]; other == feed {
				other = watchFeeds[1]
				if n := testutil.ToFloat64(m.watchDropped.WithLabelValues(other)); n != 0 {
					t.Fatalf("feed %s counted %v drops", other, n)
				}
			}

			err2 := w.releaseAndWait(t, errc)
			st2 := status.Convert(err2)
			if st2.Code() != codes.ResourceExhausted {
				t.Fatalf("stream ended with %v, want ResourceExhausted", err2)
			}
			var since string
			for _, d := range st2.Details() {
				if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() == "WATCHER_TOO_SLOW" {
					since = info.GetMetadata()["since"]
				}
			}
			from, err := time.Parse(time.RFC3339Nano, since)
			if err != nil {
				t.Fatalf("no resume time in %v: %v", st2.Details(), err)
			}
			sent := w.sentMessages()
			firstUnsent := -1
			for i := range written {
				if !sent[fmt.Sprint(i)] {
					firstUnsent = i
					break
				}
			}
			if firstUnsent < 0 {
				t.Fatalf("every one of %d changes was sent, yet the watcher was dropped", written)
			}
			if want := base.Add(time.Duration(firstUnsent) * time.Second); from.After(want) || from.Before(base) {
				t.Fatalf("resume since %v; the first change not sent is of %v (sent %d of %d)", from, want, len(sent), written)
			}
			t.Logf("%s: dropped after %d changes, %d sent; %s", feed, written, len(sent), st2.Message())
			if testutil.ToFloat64(m.watchDropped.WithLabelValues(feed)) != 1 {
				t.Fatalf("drops counted %v, want 1", testutil.ToFloat64(m.watchDropped.WithLabelValues(feed)))
			}
		})
	}
}

// hookedWatcher is a WatchEvents stream that reads everything and runs
// onHeader when the stream says it is subscribed and onSend before each
// change it is sent.
type hookedWatcher struct {
	grpc.ServerStream
	ctx      context.Context
	onHeader func()
	onSend   func(n int)

	mu   sync.Mutex
	sent []string
	got  chan struct{} // a value per change sent
}

func (w *hookedWatcher) Context() context.Context { return w.ctx }

func (w *hookedWatcher) SendHeader(metadata.MD) error { w.onHeader(); return nil }

func (w *hookedWatcher) Send(m *vigilv1.WatchEventsResponse) error {
	w.mu.Lock()
	n := len(w.sent)
	w.sent = append(w.sent, m.GetEvent().GetMessage())
	w.mu.Unlock()
	w.onSend(n)
	w.got <- struct{}{}
	return nil
}

// TestSharedWatchMissesNothingAroundItsStart: a fleet-wide WatchEvents
// watches the other replicas' changes from the shared store's revision
// read before it tells the client it is subscribed, and before it replays
// the history: a change another replica writes just after the header, or
// while the history is being sent, reaches the watcher. (The revision was
// read after both: such a change was in neither the replay nor the watch;
// TestSlowWatcherDropped/shared saw two of its changes go missing that
// way.)
func TestSharedWatchMissesNothingAroundItsStart(t *testing.T) {
	base := time.Unix(1_800_000_000, 0)
	st := openBolt(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seq := 0
	put := func(msg string) { // as another replica writes its node's change
		t.Helper()
		seq++
		at := base.Add(time.Duration(seq) * time.Second)
		m := exitOfC(msg, at)
		b, _ := proto.Marshal(m)
		if _, err := store.PutKey(ctx, st, eventHistoryKey("n1", at, m), b); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name  string
		since bool
		want  []string
	}{
		{"live", false, []string{"after the header"}},
		{"since", true, []string{"old", "after the header", "during the replay"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := NewAPI(NewFleet(), 16, nil)
			api.history = newHistory(st, slog.New(slog.DiscardHandler), 0, 0, nil)
			api.peers = &peerClients{}
			wctx, wcancel := context.WithCancel(ctx)
			defer wcancel()
			if tc.since {
				put("old")
			}
			w := &hookedWatcher{ctx: wctx, got: make(chan struct{}, 16),
				onHeader: func() { put("after the header") },
				onSend: func(n int) {
					if tc.since && n == 0 {
						put("during the replay")
					}
				}}
			req := &vigilv1.WatchEventsRequest{}
			if tc.since {
				req.Since = timestamppb.New(base.Add(time.Duration(seq) * time.Second))
			}
			errc := make(chan error, 1)
			go func() { errc <- api.WatchEvents(req, w) }()
			for range tc.want {
				select {
				case <-w.got:
				case err := <-errc:
					t.Fatalf("WatchEvents ended: %v", err)
				case <-time.After(30 * time.Second):
					w.mu.Lock()
					t.Fatalf("after 30s the watcher got %q, want %q", w.sent, tc.want)
				}
			}
			wcancel()
			<-errc
			w.mu.Lock()
			defer w.mu.Unlock()
			if !slices.Equal(w.sent, tc.want) {
				t.Fatalf("the watcher got %q, want %q", w.sent, tc.want)
			}
		})
	}
}

// TestReplayHasEventsStillQueued: an event this replica published just
// before a watcher subscribed with since, still queued for the history
// (written within historyFlushEvery), is replayed: the replay waits for
// the queue ahead of it to be written. (It read the store at once: the
// event was neither replayed nor, published before the subscription, sent
// live.)
func TestReplayHasEventsStillQueued(t *testing.T) {
	base := time.Unix(1_800_000_000, 0)
	st := openBolt(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fleet := NewFleet()
	api := NewAPI(fleet, 16, nil)
	api.history = newHistory(st, slog.New(slog.DiscardHandler), 0, 0, prometheus.NewCounter(prometheus.CounterOpts{Name: "dropped"}))
	fleet.events.record = api.history.record
	fleet.events.publishMsg(exitOfC("queued", base))
	// The history's writer starts only once the watcher is subscribed:
	// the event is still queued when the watch begins.
	w := &hookedWatcher{ctx: ctx, got: make(chan struct{}, 16),
		onHeader: func() { go api.history.run(ctx) },
		onSend:   func(int) {}}
	errc := make(chan error, 1)
	go func() {
		errc <- api.WatchEvents(&vigilv1.WatchEventsRequest{Since: timestamppb.New(base.Add(-time.Minute))}, w)
	}()
	select {
	case <-w.got:
	case err := <-errc:
		t.Fatalf("WatchEvents ended: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the event queued for the history before the watch was never sent")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !slices.Equal(w.sent, []string{"queued"}) {
		t.Fatalf("sent %q, want [queued]", w.sent)
	}
}

// openBolt is a bolt store in the test's directory, closed at its end.
func openBolt(t *testing.T) *bolt.Store {
	t.Helper()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "s.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestSlowWatcherDroppedWithoutHistory: an aggregator without a store
// drops a slow watcher too, and says the changes in between are lost
// instead of naming a since it could not replay from.
func TestSlowWatcherDroppedWithoutHistory(t *testing.T) {
	fleet := NewFleet()
	api := NewAPI(fleet, 4, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := newStuckWatcher(ctx)
	errc := make(chan error, 1)
	go func() { errc <- api.WatchEvents(&vigilv1.WatchEventsRequest{}, w) }()
	<-w.header
	// One change held in the stuck Send, four in the buffer, the next
	// dropped: ten are more than enough.
	for i := range 10 {
		fleet.events.publishMsg(exitOfC(fmt.Sprint(i), time.Now()))
	}
	err := w.releaseAndWait(t, errc)
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "keeps no event history") || strings.Contains(st.Message(), "with since") {
		t.Fatalf("stream ended with %v, want ResourceExhausted saying there is no history", err)
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			if info.GetReason() != "WATCHER_TOO_SLOW" {
				t.Errorf("reason %q", info.GetReason())
			}
			if s, ok := info.GetMetadata()["since"]; ok {
				t.Errorf("since %q named without a history to replay from", s)
			}
			return
		}
	}
	t.Errorf("no ErrorInfo in %v", st.Details())
}

// exitOfC is an exit of container default/c on node n1 at at, its message
// msg (which tells the changes apart).
func exitOfC(msg string, at time.Time) *vigilv1.WatchEventsResponse {
	return &vigilv1.WatchEventsResponse{Node: "n1", Event: &vigilv1.ContainerEvent{
		Type:      vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED,
		Time:      timestamppb.New(at),
		Container: &vigilv1.Container{Id: "c", Namespace: "default"},
		Message:   msg,
	}}
}
