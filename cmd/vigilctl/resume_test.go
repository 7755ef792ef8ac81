package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/errdefs"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// tooSlow is the status the aggregator ends a slow watcher's stream with
// (internal/aggregator's watchLag.err): ResourceExhausted, ErrorInfo
// WATCHER_TOO_SLOW, metadata since. The fault is the aggregator's to make
// on a loaded stream; here it comes on demand.
func tooSlow(t *testing.T, since time.Time) error {
	t.Helper()
	st, err := status.New(codes.ResourceExhausted, "event watcher too slow: more than 256 changes waited for it (node feed), so its stream ends").
		WithDetails(&errdetails.ErrorInfo{Reason: "WATCHER_TOO_SLOW", Domain: "vigil.io",
			Metadata: map[string]string{"since": since.UTC().Format(time.RFC3339Nano), "feed": "node"}})
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

func nodeEvent(node, condition string, at time.Time) *vigilv1.WatchEventsResponse {
	return &vigilv1.WatchEventsResponse{Node: node, NodeEvent: &vigilv1.NodeEvent{Condition: condition, Reason: "test", Time: timestamppb.New(at)}}
}

func TestEventsResumeAfterFallingBehind(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	ev1, ev2, ev3 := nodeEvent("node-a", "Healthy", t0), nodeEvent("node-b", "NodeDown", t0.Add(time.Second)), nodeEvent("node-c", "Unknown", t0.Add(2*time.Second))
	var second *vigilv1.WatchEventsRequest
	f := &fakeVigil{watch: func(n int, req *vigilv1.WatchEventsRequest, stream vigilv1.Vigil_WatchEventsServer) error {
		switch n {
		case 1:
			for _, ev := range []*vigilv1.WatchEventsResponse{ev1, ev2} {
				if err := stream.Send(ev); err != nil {
					return err
				}
			}
			return tooSlow(t, t0.Add(time.Second))
		case 2:
			second = req
			// The history replays from since: ev2 again, then what was missed.
			for _, ev := range []*vigilv1.WatchEventsResponse{ev2, ev3} {
				if err := stream.Send(ev); err != nil {
					return err
				}
			}
		}
		<-stream.Context().Done()
		return nil
	}}
	addr := serve(t, f)
	out, errw, done, cancel := runEvents(t, "--server", addr, "--insecure", "events", "--node", "node-a")
	defer cancel()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "node-c") {
		select {
		case err := <-done:
			t.Fatalf("events ended: %v\nout:\n%s\nstderr: %s", err, out.String(), errw.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no third event after 30 s; out:\n%s\nstderr: %s", out.String(), errw.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("events after interrupt: %v, want nil", err)
	}
	for _, node := range []string{"node-a", "node-b", "node-c"} {
		if n := strings.Count(out.String(), node); n != 1 {
			t.Errorf("%s printed %d times, want once:\n%s", node, n, out.String())
		}
	}
	if second.GetSince().AsTime() != t0.Add(time.Second) || second.GetNode() != "node-a" {
		t.Errorf("second watch %v, want since %s and node node-a", second, t0.Add(time.Second))
	}
	if !strings.Contains(errw.String(), "fell behind") || !strings.Contains(errw.String(), "2026-12-03T09:00:01Z") {
		t.Errorf("stderr %q, want a warning naming the time watched again from", errw.String())
	}
}

func TestEventsDroppedAgainAndAgainGivesUp(t *testing.T) {
	f := &fakeVigil{watch: func(int, *vigilv1.WatchEventsRequest, vigilv1.Vigil_WatchEventsServer) error {
		return tooSlow(t, time.Now())
	}}
	addr := serve(t, f)
	_, errOut, err := runTest(context.Background(), "--server", addr, "--insecure", "events")
	if err == nil || !strings.Contains(err.Error(), "dropped this watch 4 times in a row") || !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("events = %v, want it to give up after %d resumes without progress", err, maxResumesWithoutProgress)
	}
	if n := strings.Count(errOut, "fell behind"); n != maxResumesWithoutProgress {
		t.Errorf("%d warnings on stderr, want %d: %q", n, maxResumesWithoutProgress, errOut)
	}
}

func TestEventsFallingBehindWithoutHistory(t *testing.T) {
	f := &fakeVigil{watch: func(n int, req *vigilv1.WatchEventsRequest, stream vigilv1.Vigil_WatchEventsServer) error {
		if n == 1 {
			return tooSlow(t, time.Now())
		}
		return status.Error(codes.FailedPrecondition, "no event history: the aggregator runs without a store")
	}}
	addr := serve(t, f)
	_, _, err := runTest(context.Background(), "--server", addr, "--insecure", "events")
	if err == nil || !strings.Contains(err.Error(), "cannot watch again from its history") || !strings.Contains(err.Error(), "without a store") {
		t.Fatalf("events = %v, want it to say the history is missing", err)
	}
}

func TestTooSlowSince(t *testing.T) {
	at := time.Date(2026, 12, 3, 9, 0, 0, 123, time.UTC)
	if got, ok := tooSlowSince(tooSlow(t, at)); !ok || !got.Equal(at) {
		t.Errorf("tooSlowSince(the aggregator's error) = %v, %v; want %v, true", got, ok, at)
	}
	for _, err := range []error{
		status.Error(codes.ResourceExhausted, "subscriber fell 256 events behind"), // no detail: no time to resume from
		status.Error(codes.Unavailable, "gone"),
		errors.New("plain"),
	} {
		if _, ok := tooSlowSince(err); ok {
			t.Errorf("tooSlowSince(%v) = true, want false", err)
		}
	}
	st, _ := status.New(codes.ResourceExhausted, "x").WithDetails(&errdetails.ErrorInfo{Reason: "WATCHER_TOO_SLOW", Metadata: map[string]string{"since": "yesterday"}})
	if _, ok := tooSlowSince(st.Err()); ok {
		t.Error("an unreadable since was taken as a time to resume from")
	}
}
