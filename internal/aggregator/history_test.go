package aggregator_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/agent/uplink"
	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/store/bolt"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// runInsecure runs an aggregator with a bbolt store at db on loopback
// until the returned stop is called (which also closes the store).
func runInsecure(t *testing.T, db string) (*aggregator.Aggregator, func()) {
	t.Helper()
	st, err := bolt.Open(db, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	agg, err := aggregator.New(aggregator.Config{GRPCListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Insecure: true,
		ShutdownTimeout: 2 * time.Second, Logger: slog.New(slog.DiscardHandler), Store: st})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agg.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("aggregator Run: %v", err)
		}
		st.Close()
	}
	t.Cleanup(stop)
	return agg, stop
}

// collect reads events from a WatchEvents stream until n arrived or the
// deadline passed.
func collect(t *testing.T, s vigilv1.Vigil_WatchEventsClient, n int, within time.Duration) []*vigilv1.WatchEventsResponse {
	t.Helper()
	var out []*vigilv1.WatchEventsResponse
	got := make(chan *vigilv1.WatchEventsResponse)
	errc := make(chan error, 1)
	go func() {
		for {
			ev, err := s.Recv()
			if err != nil {
				errc <- err
				return
			}
			got <- ev
		}
	}()
	deadline := time.After(within)
	for len(out) < n {
		select {
		case ev := <-got:
			out = append(out, ev)
		case err := <-errc:
			if err != io.EOF {
				t.Fatalf("event stream: %v (after %d events)", err, len(out))
			}
			return out
		case <-deadline:
			t.Fatalf("%d events within %s, want %d", len(out), within, n)
		}
	}
	return out
}

// TestEventHistory: the events an agent sent are replayed to a watcher
// asking since an hour ago, oldest first, before live ones and without
// doubles; they survive an aggregator restart; without a store, since is
// refused.
func TestEventHistory(t *testing.T) {
	db := filepath.Join(t.TempDir(), "vigil.db")
	agg, stop := runInsecure(t, db)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	u, err := uplink.New(uplink.Config{Address: agg.GRPCAddr().String(), NodeName: "n1", Logger: slog.New(slog.DiscardHandler)},
		func() *vigilv1.Snapshot { return &vigilv1.Snapshot{} })
	if err != nil {
		t.Fatal(err)
	}
	udone := make(chan struct{})
	go func() { defer close(udone); _ = u.Run(ctx) }()
	// Events queued before the first stream are superseded by its
	// snapshot: send them once connected.
	waitFor(t, 10*time.Second, "uplink connected", u.Connected)
	base := time.Now().Add(-30 * time.Minute)
	for i := range 5 {
		c := &vigilv1.Container{Id: fmt.Sprintf("c%d", i), Namespace: "default", State: vigilv1.ContainerState_CONTAINER_STATE_STOPPED}
		if err := u.SendContainerEvent(&vigilv1.ContainerEvent{Type: vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED,
			Time: timestamppb.New(base.Add(time.Duration(i) * time.Minute)), Container: c}); err != nil {
			t.Fatal(err)
		}
	}
	// An event older than asked for is not replayed.
	if err := u.SendContainerEvent(&vigilv1.ContainerEvent{Type: vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED,
		Time: timestamppb.New(time.Now().Add(-2 * time.Hour)), Container: &vigilv1.Container{Id: "old", Namespace: "default"}}); err != nil {
		t.Fatal(err)
	}
	api := vigilv1.NewVigilClient(dialInsecure(t, agg.GRPCAddr().String()))
	// Every event applied, so that the watches below get them from the
	// history, not live (live events are sent whatever their time).
	waitFor(t, 10*time.Second, "six containers", func() bool {
		resp, err := api.ListContainers(ctx, &vigilv1.ListContainersRequest{Node: "n1"})
		return err == nil && len(resp.GetContainers()) == 6
	})
	since := timestamppb.New(time.Now().Add(-time.Hour))
	var past []*vigilv1.WatchEventsResponse
	waitFor(t, 20*time.Second, "five events in the history", func() bool {
		wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
		defer wcancel()
		s, err := api.WatchEvents(wctx, &vigilv1.WatchEventsRequest{Since: since})
		if err != nil {
			t.Fatal(err)
		}
		past = nil
		for {
			ev, err := s.Recv()
			if err != nil {
				break
			}
			if ev.GetEvent() != nil { // node conditions are in the history too
				past = append(past, ev)
			}
		}
		return len(past) >= 5
	})
	if len(past) != 5 {
		for _, ev := range past {
			t.Logf("%s %s %s", ev.GetNode(), ev.GetEvent().GetContainer().GetId(), ev.GetEvent().GetTime().AsTime())
		}
		t.Fatalf("replayed %d events, want 5", len(past))
	}
	for i, ev := range past {
		if want := fmt.Sprintf("c%d", i); ev.GetEvent().GetContainer().GetId() != want || ev.GetNode() != "n1" {
			t.Errorf("event %d: %s on %s, want %s on n1 (oldest first)", i, ev.GetEvent().GetContainer().GetId(), ev.GetNode(), want)
		}
	}
	cancel()
	<-udone
	stop()

	// After a restart, on the same file.
	agg2, _ := runInsecure(t, db)
	api2 := vigilv1.NewVigilClient(dialInsecure(t, agg2.GRPCAddr().String()))
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	s, err := api2.WatchEvents(wctx, &vigilv1.WatchEventsRequest{Node: "n1", Since: since})
	if err != nil {
		t.Fatal(err)
	}
	if got := collect(t, s, 5, 20*time.Second); got[0].GetEvent().GetContainer().GetId() != "c0" {
		t.Errorf("after a restart, first event %v", got[0])
	}

	// Without a store.
	plain, err := aggregator.New(aggregator.Config{GRPCListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Insecure: true,
		ShutdownTimeout: 2 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithCancel(context.Background())
	pdone := make(chan struct{})
	go func() { defer close(pdone); _ = plain.Run(pctx) }()
	defer func() { pcancel(); <-pdone }()
	ps, err := vigilv1.NewVigilClient(dialInsecure(t, plain.GRPCAddr().String())).WatchEvents(context.Background(), &vigilv1.WatchEventsRequest{Since: since})
	if err == nil {
		_, err = ps.Recv()
	}
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("since without a store: %v, want FailedPrecondition", err)
	}
}

// TestCloseReleasesListeners: an aggregator made and never run gives its
// ports back on Close (twice is fine), and refuses Run afterwards.
func TestCloseReleasesListeners(t *testing.T) {
	agg, err := aggregator.New(aggregator.Config{GRPCListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Insecure: true,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr, httpAddr := agg.GRPCAddr().String(), agg.HTTPAddr().String()
	if err := agg.Close(); err != nil {
		t.Fatal(err)
	}
	if err := agg.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	for _, addr := range []string{grpcAddr, httpAddr} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("%s still taken after Close: %v", addr, err)
			continue
		}
		l.Close()
	}
	if err := agg.Run(context.Background()); err == nil {
		t.Error("Run after Close succeeded")
	}
}
