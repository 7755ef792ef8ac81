package aggregator

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/errdefs"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// API is the Vigil operator API over the Fleet. Every method is safe for
// concurrent use and never blocks ingest.
type API struct {
	vigilv1.UnimplementedVigilServer

	fleet       *Fleet
	watchBuffer int
	stopping    <-chan struct{}
}

var _ vigilv1.VigilServer = (*API)(nil)

// NewAPI returns the operator API over fleet; watchBuffer bounds the events
// buffered for one WatchEvents subscriber. WatchEvents streams end with
// Unavailable when stopping closes (nil: never).
func NewAPI(fleet *Fleet, watchBuffer int, stopping <-chan struct{}) *API {
	return &API{fleet: fleet, watchBuffer: max(1, watchBuffer), stopping: stopping}
}

// ListNodes returns every node sorted by name, down nodes included until
// they are forgotten.
func (a *API) ListNodes(context.Context, *vigilv1.ListNodesRequest) (*vigilv1.ListNodesResponse, error) {
	return &vigilv1.ListNodesResponse{Nodes: a.fleet.Nodes()}, nil
}

// ListContainers returns the containers matching the request's filters.
func (a *API) ListContainers(_ context.Context, req *vigilv1.ListContainersRequest) (*vigilv1.ListContainersResponse, error) {
	if err := validateListContainers(req); err != nil {
		return nil, errdefs.GRPC(err)
	}
	return &vigilv1.ListContainersResponse{Containers: a.fleet.Containers(req)}, nil
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
func (a *API) GetContainer(_ context.Context, req *vigilv1.GetContainerRequest) (*vigilv1.GetContainerResponse, error) {
	if req.GetNode() == "" || req.GetNamespace() == "" || req.GetId() == "" {
		return nil, errdefs.GRPC(fmt.Errorf("node, namespace and id are all required (got node=%q namespace=%q id=%q): %w", req.GetNode(), req.GetNamespace(), req.GetId(), errdefs.ErrInvalid))
	}
	c, err := a.fleet.Container(req.GetNode(), req.GetNamespace(), req.GetId())
	if err != nil {
		return nil, errdefs.GRPC(err)
	}
	return &vigilv1.GetContainerResponse{Container: c}, nil
}

// WatchEvents streams container events as they are applied. A subscriber
// that falls more than the watch buffer behind is dropped with
// ResourceExhausted; ingest never waits for it.
func (a *API) WatchEvents(req *vigilv1.WatchEventsRequest, stream vigilv1.Vigil_WatchEventsServer) error {
	sub := a.fleet.events.subscribe(req.GetNode(), req.GetNamespace(), a.watchBuffer)
	defer a.fleet.events.unsubscribe(sub)
	// The header tells the client that the subscription is in place.
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	ctx := stream.Context()
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-a.stopping:
			return errdefs.GRPC(fmt.Errorf("aggregator shutting down: %w", errdefs.ErrUnavailable))
		case <-sub.dropped:
			return status.Errorf(codes.ResourceExhausted, "event subscriber too slow: more than %d events waiting, dropped", a.watchBuffer)
		case ev := <-sub.ch:
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
	}
}

const remediationNotBuilt = "remediation is not built yet"

// ListRemediations is not built yet.
func (a *API) ListRemediations(context.Context, *vigilv1.ListRemediationsRequest) (*vigilv1.ListRemediationsResponse, error) {
	return nil, status.Error(codes.Unimplemented, remediationNotBuilt)
}

// RequestRemediation is not built yet.
func (a *API) RequestRemediation(context.Context, *vigilv1.RequestRemediationRequest) (*vigilv1.RequestRemediationResponse, error) {
	return nil, status.Error(codes.Unimplemented, remediationNotBuilt)
}
