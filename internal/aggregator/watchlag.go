package aggregator

import (
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// The feeds of a WatchEvents stream (label feed of
// vigil_aggregator_watchers_dropped_total).
const (
	// feedLocal: this replica's changes, from its broadcaster.
	feedLocal = "local"
	// feedShared: the other replicas' changes, from a watch of the shared
	// store's event history.
	feedShared = "shared"
)

var watchFeeds = []string{feedLocal, feedShared}

// watchLag is how a WatchEvents stream learns that it fell behind. Each
// feed queues changes for the stream in a buffer of Config.WatchBuffer and
// never waits for it: the first feed that finds its buffer full marks the
// lag (counted once per stream) and stops queueing, and the stream ends
// with ResourceExhausted telling the watcher the time to watch again from.
// Safe for concurrent use; mark never blocks.
type watchLag struct {
	once    sync.Once
	done    chan struct{}          // closed by the first mark
	dropped *prometheus.CounterVec // by feed; nil: not counted
	started time.Time

	// Written before done closes, read after.
	feed string
	lost time.Time
}

func newWatchLag(dropped *prometheus.CounterVec, started time.Time) *watchLag {
	return &watchLag{done: make(chan struct{}), dropped: dropped, started: started}
}

// mark records that feed could not queue lost for the stream. Only the
// first call counts.
func (l *watchLag) mark(feed string, lost *vigilv1.WatchEventsResponse) {
	l.once.Do(func() {
		l.feed, l.lost = feed, eventTime(lost)
		if l.dropped != nil {
			l.dropped.WithLabelValues(feed).Inc()
		}
		close(l.done)
	})
}

// resumeFrom is the time from which a watcher that fell behind watches
// again (WatchEventsRequest.since) to miss nothing: the oldest time of the
// change that did not fit and of those still queued for it (drained here:
// the stream is ending), or the stream's start when none has a time. A
// nil or closed queue is skipped. Call it after done has closed.
func (l *watchLag) resumeFrom(queues ...<-chan *vigilv1.WatchEventsResponse) time.Time {
	var from time.Time
	older := func(t time.Time) {
		if t.Unix() > 0 && (from.IsZero() || t.Before(from)) {
			from = t
		}
	}
	older(l.lost)
	for _, q := range queues {
		if q == nil {
			continue
		}
	drain:
		for {
			select {
			case m, ok := <-q:
				if !ok {
					break drain
				}
				older(eventTime(m))
			default:
				break drain
			}
		}
	}
	if from.IsZero() {
		return l.started
	}
	return from
}

// err is the status that ends the stream: ResourceExhausted naming the
// bound, the feed and the time to watch again from, also as an ErrorInfo
// detail (reason WATCHER_TOO_SLOW, metadata since in RFC 3339 and feed).
// An aggregator without a history (history false) cannot replay from
// then: it says the changes in between are lost, and names no since.
func (l *watchLag) err(buffer int, from time.Time, history bool) error {
	since := from.UTC().Format(time.RFC3339Nano)
	msg := fmt.Sprintf("event watcher too slow: more than %d changes waited for it (%s feed), so its stream ends; ", buffer, l.feed)
	meta := map[string]string{"feed": l.feed}
	if history {
		msg += "watch again with since " + since + " to miss nothing (changes from then on may come again)"
		meta["since"] = since
	} else {
		msg += "the changes from " + since + " on are lost to it, as this aggregator keeps no event history (start it with --data-dir or --etcd-endpoints to resume from one): watch again"
	}
	st := status.New(codes.ResourceExhausted, msg)
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: "WATCHER_TOO_SLOW", Domain: "vigil.io", Metadata: meta}); err == nil {
		st = d
	}
	return st.Err()
}
