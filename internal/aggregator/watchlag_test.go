package aggregator

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
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
		return &vigilv1.WatchEventsResponse{Node: "n1", Event: &vigilv1.ContainerEvent{
			Type:      vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED,
			Time:      timestamppb.New(base.Add(time.Duration(i) * time.Second)),
			Container: &vigilv1.Container{Id: "c", Namespace: "default"},
			Message:   fmt.Sprint(i),
		}}
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
					if _, err := store.PutKey(ctx, st, fmt.Sprintf("%sn1/%020d-%08d", historyPrefix, base.UnixNano(), written), b); err != nil {
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

			close(w.release) // the client reads again: the stream ends
			var err2 error
			select {
			case err2 = <-errc:
			case <-time.After(30 * time.Second):
				t.Fatal("WatchEvents still running 30s after the watcher was dropped")
			}
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
