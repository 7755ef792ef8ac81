package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/errdefs"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// The aggregator ends the stream of a watcher that fell too far behind
// (ResourceExhausted with an ErrorInfo of reason WATCHER_TOO_SLOW whose
// metadata "since" is the time to watch again from, RFC 3339). events
// then watches again from that time out of the aggregator's history, as
// the error says to, and leaves out the events it printed already.
const (
	tooSlowReason = "WATCHER_TOO_SLOW"
	// maxResumesWithoutProgress ends the command when the aggregator drops
	// the watcher again and again before any new event is printed: the
	// terminal or pipe cannot keep up even with the replay.
	maxResumesWithoutProgress = 3
	// printedMemory is how many printed events are remembered to leave
	// out of a replay; a replay longer than that may print some again.
	printedMemory = 4096
)

// tooSlowSince reports whether err is the aggregator dropping a slow
// watcher, and the time it says to watch again from.
func tooSlowSince(err error) (time.Time, bool) {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.ResourceExhausted {
		return time.Time{}, false
	}
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok || info.GetReason() != tooSlowReason {
			continue
		}
		since, err := time.Parse(time.RFC3339Nano, info.GetMetadata()["since"])
		if err != nil {
			return time.Time{}, false
		}
		return since, true
	}
	return time.Time{}, false
}

// printedSet remembers the last printedMemory events printed, by their
// encoding, so that a replay after a resume prints each once.
type printedSet struct {
	seen  map[string]bool
	order []string
}

func newPrintedSet() *printedSet { return &printedSet{seen: map[string]bool{}} }

// add records ev and reports whether it was new.
func (s *printedSet) add(ev *vigilv1.WatchEventsResponse) bool {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
	if err != nil {
		return true // cannot tell: print it
	}
	k := string(b)
	if s.seen[k] {
		return false
	}
	s.seen[k] = true
	s.order = append(s.order, k)
	if len(s.order) > printedMemory {
		delete(s.seen, s.order[0])
		s.order = s.order[1:]
	}
	return true
}

// watchEvents prints events until ctx ends (nil) or the stream fails. When
// the aggregator drops it for being slow, it watches again from the time
// the aggregator names (a warning on stderr says so) and leaves out what it
// printed already.
func watchEvents(ctx context.Context, c vigilv1.VigilClient, inv *invocation, out *printer) error {
	req := &vigilv1.WatchEventsRequest{Node: inv.node, Namespace: inv.namespace}
	if inv.since > 0 {
		req.Since = timestamppb.New(time.Now().Add(-inv.since))
	}
	printed := newPrintedSet()
	resumes := 0
	for {
		progressed, err := watchOnce(ctx, c, req, inv, out, printed)
		if err == nil {
			return nil
		}
		since, slow := tooSlowSince(err)
		if !slow {
			if resumes > 0 && errors.Is(err, errdefs.ErrConflict) {
				return fmt.Errorf("fell behind the aggregator's events and cannot watch again from its history: %w", err)
			}
			return err
		}
		if progressed {
			resumes = 0
		}
		resumes++
		if resumes > maxResumesWithoutProgress {
			return fmt.Errorf("the aggregator at %s dropped this watch %d times in a row for being slow, before any new event was printed (is the output read?): %w",
				inv.global.server, resumes, errdefs.ErrUnavailable)
		}
		fmt.Fprintf(out.errw, "vigilctl: warning: fell behind the aggregator's events and was dropped; watching again from %s out of its history (events printed already are left out)\n",
			since.UTC().Format(time.RFC3339Nano))
		req = proto.Clone(req).(*vigilv1.WatchEventsRequest)
		req.Since = timestamppb.New(since)
	}
}

// watchOnce runs one WatchEvents call: nil when ctx ended, else the error
// that ended the stream (wrapped but for a slow watcher's, which
// watchEvents reads), and whether it printed a new event.
func watchOnce(ctx context.Context, c vigilv1.VigilClient, req *vigilv1.WatchEventsRequest, inv *invocation, out *printer, printed *printedSet) (bool, error) {
	stream, err := c.WatchEvents(ctx, req)
	if err != nil {
		if ctx.Err() != nil {
			return false, nil
		}
		return false, inv.global.callError("watch events", err)
	}
	// The header says the subscription is in place (an error here comes
	// again from Recv).
	if _, err := stream.Header(); err == nil {
		out.watching(inv.since)
	}
	progressed := false
	for {
		ev, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return progressed, nil
			}
			if errors.Is(err, io.EOF) {
				return progressed, fmt.Errorf("event stream ended by the aggregator at %s: %w", inv.global.server, errdefs.ErrUnavailable)
			}
			if _, slow := tooSlowSince(err); slow {
				return progressed, err
			}
			return progressed, inv.global.callError("watch events", err)
		}
		if !printed.add(ev) {
			continue
		}
		progressed = true
		if err := out.event(ev); err != nil {
			return progressed, err
		}
	}
}
