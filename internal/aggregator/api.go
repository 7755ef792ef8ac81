package aggregator

import (
	"cmp"
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/remediation"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// API is the Vigil operator API over the Fleet. Every method is safe for
// concurrent use and never blocks ingest.
type API struct {
	vigilv1.UnimplementedVigilServer

	fleet       *Fleet
	watchBuffer int
	// peers, with replicas, makes the reads fleet-wide (peers.go).
	peers    *peerClients
	stopping <-chan struct{}

	// maxWatchers bounds WatchEvents subscribers (0: no bound); watching
	// counts them, watchers (optional) shows the count, and watchDropped
	// (optional) counts the streams ended for falling behind, by feed.
	maxWatchers  int
	watching     atomic.Int64
	watchers     prometheus.Gauge
	watchDropped *prometheus.CounterVec

	// remediation serves ListRemediations and RequestRemediation; nil
	// when remediation is off.
	remediation *remediation.Engine
	// history serves WatchEvents' since; nil without a store.
	history *history
}

// Page sizes of ListContainers and /api/v1/containers.
const (
	DefaultPageSize = 500
	MaxPageSize     = 5000
)

var _ vigilv1.VigilServer = (*API)(nil)

// NewAPI returns the operator API over fleet; watchBuffer bounds the events
// buffered for one WatchEvents subscriber. WatchEvents streams end with
// Unavailable when stopping closes (nil: never).
func NewAPI(fleet *Fleet, watchBuffer int, stopping <-chan struct{}) *API {
	return &API{fleet: fleet, watchBuffer: max(1, watchBuffer), stopping: stopping}
}

// ListNodes returns every node sorted by name, down nodes included until
// they are forgotten.
func (a *API) ListNodes(ctx context.Context, _ *vigilv1.ListNodesRequest) (*vigilv1.ListNodesResponse, error) {
	nodes, partial := a.fleetNodes(ctx)
	setPartial(ctx, partial)
	return &vigilv1.ListNodesResponse{Nodes: nodes}, nil
}

// ListContainers returns one page of the containers matching the
// request's filters, without probe output unless asked.
func (a *API) ListContainers(ctx context.Context, req *vigilv1.ListContainersRequest) (*vigilv1.ListContainersResponse, error) {
	resp, partial, err := a.listContainers(ctx, req)
	setPartial(ctx, partial)
	return resp, errdefs.GRPC(err)
}

// listContainers pages through the fleet's containers (sorted by node,
// namespace, id): a page starts after the container its token names, so a
// container added or removed between pages moves no other one.
func (a *API) listContainers(ctx context.Context, req *vigilv1.ListContainersRequest) (_ *vigilv1.ListContainersResponse, partial string, _ error) {
	if err := validateListContainers(req); err != nil {
		return nil, "", err
	}
	size := int(req.GetPageSize())
	switch {
	case size == 0:
		size = DefaultPageSize
	case size > MaxPageSize:
		size = MaxPageSize
	}
	var after []string
	if t := req.GetPageToken(); t != "" {
		raw, err := base64.RawURLEncoding.DecodeString(t)
		if err != nil {
			return nil, "", fmt.Errorf("page_token is not a token this server gave: %w", errdefs.ErrInvalid)
		}
		after = strings.Split(string(raw), "\x00")
		if len(after) != 3 {
			return nil, "", fmt.Errorf("page_token is not a token this server gave: %w", errdefs.ErrInvalid)
		}
	}
	all, partial := a.fleetContainers(ctx, req)
	start := 0
	if after != nil {
		start, _ = slices.BinarySearchFunc(all, after, func(nc *vigilv1.NodeContainer, key []string) int {
			return cmp.Or(cmp.Compare(nc.GetNode(), key[0]), cmp.Compare(nc.GetContainer().GetNamespace(), key[1]), cmp.Compare(nc.GetContainer().GetId(), key[2]))
		})
		if start < len(all) && all[start].GetNode() == after[0] && all[start].GetContainer().GetNamespace() == after[1] && all[start].GetContainer().GetId() == after[2] {
			start++
		}
	}
	page := all[start:min(len(all), start+size)]
	out := &vigilv1.ListContainersResponse{Containers: make([]*vigilv1.NodeContainer, 0, len(page))}
	for _, nc := range page {
		if !req.GetIncludeProbeOutput() {
			nc = withoutProbeOutput(nc)
		}
		out.Containers = append(out.Containers, nc)
	}
	if start+size < len(all) {
		last := page[len(page)-1]
		out.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(last.GetNode() + "\x00" + last.GetContainer().GetNamespace() + "\x00" + last.GetContainer().GetId()))
	}
	return out, partial, nil
}

// withoutProbeOutput returns nc without health probe output; the fleet's
// message is shared and never modified, so a container with output is
// copied.
func withoutProbeOutput(nc *vigilv1.NodeContainer) *vigilv1.NodeContainer {
	has := slices.ContainsFunc(nc.GetContainer().GetHealth().GetLastResults(), func(r *vigilv1.ProbeResult) bool { return r.GetOutput() != "" })
	if !has {
		return nc
	}
	c := proto.Clone(nc.GetContainer()).(*vigilv1.Container)
	for _, r := range c.GetHealth().GetLastResults() {
		r.Output = ""
	}
	return &vigilv1.NodeContainer{Node: nc.GetNode(), Container: c}
}

func validateListContainers(req *vigilv1.ListContainersRequest) error {
	if _, ok := vigilv1.ContainerState_name[int32(req.GetState())]; !ok {
		return fmt.Errorf("state %d is not a ContainerState: %w", req.GetState(), errdefs.ErrInvalid)
	}
	if _, ok := vigilv1.HealthStatus_name[int32(req.GetHealth())]; !ok {
		return fmt.Errorf("health %d is not a HealthStatus: %w", req.GetHealth(), errdefs.ErrInvalid)
	}
	return nil
}

// GetContainer returns one container; NotFound when the node or the
// container is unknown.
func (a *API) GetContainer(ctx context.Context, req *vigilv1.GetContainerRequest) (*vigilv1.GetContainerResponse, error) {
	if req.GetNode() == "" || req.GetNamespace() == "" || req.GetId() == "" {
		return nil, errdefs.GRPC(fmt.Errorf("node, namespace and id are all required (got node=%q namespace=%q id=%q): %w", req.GetNode(), req.GetNamespace(), req.GetId(), errdefs.ErrInvalid))
	}
	c, err := a.fleetContainer(ctx, req.GetNode(), req.GetNamespace(), req.GetId())
	if err != nil {
		return nil, errdefs.GRPC(err)
	}
	return &vigilv1.GetContainerResponse{Container: c}, nil
}

// WatchEvents streams container events as they are applied. Each feed of
// the stream (this replica's changes; with replicas, the other replicas'
// through the shared history) queues at most the watch buffer for it and
// never waits: a watcher that falls further behind is dropped, its stream
// ending with ResourceExhausted that names the time to watch again from
// (watchlag.go). Ingest and other watchers never wait for it. While the
// stream's own Send is blocked (a client that does not read, gRPC's flow
// control window full) the stream ends when that Send returns; what waits
// meanwhile is bounded by the buffers and gRPC's window.
func (a *API) WatchEvents(req *vigilv1.WatchEventsRequest, stream vigilv1.Vigil_WatchEventsServer) error {
	if n := a.watching.Add(1); a.maxWatchers > 0 && n > int64(a.maxWatchers) {
		a.watching.Add(-1)
		return status.Errorf(codes.ResourceExhausted, "the aggregator serves %d event watchers, its cap (--max-watchers)", a.maxWatchers)
	}
	if a.watchers != nil {
		a.watchers.Inc()
	}
	defer func() {
		a.watching.Add(-1)
		if a.watchers != nil {
			a.watchers.Dec()
		}
	}()
	if req.GetSince() != nil && a.history == nil {
		return status.Error(codes.FailedPrecondition, "no event history: the aggregator runs without a store (start it with --data-dir); watch without since")
	}
	lag := newWatchLag(a.watchDropped, time.Now())
	sub := a.fleet.events.subscribe(req.GetNode(), req.GetNamespace(), a.watchBuffer,
		func(lost *vigilv1.WatchEventsResponse) { lag.mark(feedLocal, lost) })
	defer a.fleet.events.unsubscribe(sub)
	// With replicas, the other replicas' changes come through the shared
	// history, watched from the revision read here: before the header, so
	// that a change written after the client was told it is subscribed
	// (or while the history below is replayed) is not missed.
	shared := a.peers != nil && a.history != nil && !localOnly(stream.Context())
	var sharedRev int64
	if shared {
		rev, err := a.sharedRev(stream.Context(), req.GetNode())
		if err != nil {
			return errdefs.GRPC(fmt.Errorf("the other replicas' events: %w", err))
		}
		sharedRev = rev
	}
	// The header tells the client that the subscription is in place.
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	ctx := stream.Context()
	// The history first, then live events; an event in both (recorded
	// after the subscription began) is sent once.
	var replayed map[string]bool
	if since := req.GetSince(); since != nil {
		// This replica's changes published before the subscription are
		// not sent live: the replay must have them, written.
		a.history.caughtUp(ctx)
		past, err := a.history.since(ctx, since.AsTime(), req.GetNode(), req.GetNamespace())
		if err != nil {
			return errdefs.GRPC(err)
		}
		replayed = make(map[string]bool, len(past))
		for _, ev := range past {
			replayed[eventKey(ev)] = true
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
	}
	// A change seen both live and through the shared history is sent once.
	var remote <-chan *vigilv1.WatchEventsResponse
	var sent sentKeys
	if shared {
		rctx, cancel := context.WithCancel(ctx)
		defer cancel()
		remote = a.remoteEvents(rctx, req.GetNode(), req.GetNamespace(), sharedRev, lag)
	}
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-a.stopping:
			return errdefs.GRPC(fmt.Errorf("aggregator shutting down: %w", errdefs.ErrUnavailable))
		case <-lag.done:
			return lag.err(a.watchBuffer, lag.resumeFrom(sub.ch, remote), a.history != nil)
		case ev, ok := <-remote:
			if !ok {
				select {
				case <-lag.done: // the feed fell behind, then closed
					return lag.err(a.watchBuffer, lag.resumeFrom(sub.ch, remote), a.history != nil)
				default:
				}
				return status.Error(codes.Unavailable, "the shared store's watch of the other replicas' events ended: watch again (with since, to miss nothing)")
			}
			if (replayed != nil && replayed[eventKey(ev)]) || sent.seen(eventKey(ev)) {
				continue
			}
			if err := stream.Send(ev); err != nil {
				return err
			}
		case ev := <-sub.ch:
			if (replayed != nil && replayed[eventKey(ev)]) || (remote != nil && sent.seen(eventKey(ev))) {
				continue
			}
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
	}
}
