package aggregator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/pki"
	"github.com/vigilhq/vigil/internal/remediation"
	"github.com/vigilhq/vigil/internal/store/bolt"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// remediationOff is the answer of the remediation calls when the aggregator
// runs without a store.
const remediationOff = "remediation is off: the aggregator runs without a journal (start it with --data-dir)"

// newRemediation builds the engine over the fleet's read model when cfg has
// a store; nil otherwise.
func newRemediation(cfg *Config, fleet *Fleet, peers *peerClients) (*remediation.Engine, error) {
	if cfg.Store == nil {
		return nil, nil
	}
	var view remediation.FleetView = &fleetView{f: fleet}
	if peers != nil {
		// A target on a node another replica holds is looked up there.
		view = &peerFleetView{local: view.(*fleetView), peers: peers}
	}
	// bbolt has no limit on a transaction's writes and pays an fsync per
	// transaction: a large webhook is one transaction (the engine's
	// default, 100, is etcd's).
	maxOps := 0
	if _, ok := cfg.Store.(*bolt.Store); ok {
		maxOps = 5000
	}
	eng, err := remediation.New(remediation.Config{
		MaxTxnOps: maxOps,
		Store:     cfg.Store,
		Fleet:     view,
		Rules:     cfg.Rules,
		Registry:  cfg.Registry,
		Logger:    cfg.Logger.With("component", "remediation"),
		Leader:    cfg.Leader,
		// The change feed: decisions and ends reach WatchEvents (vigilctl
		// events) and the event history.
		OnChange: func(r remediation.Remediation) {
			fleet.events.publishMsg(&vigilv1.WatchEventsResponse{Node: r.Target.Node, Remediation: remediation.RemediationToProto(r)})
		},
	})
	if err != nil {
		return nil, fmt.Errorf("remediation: %w", err)
	}
	return eng, nil
}

// deliverCommands sends the node's pending commands on its stream while ctx
// (the stream's) lives: the outbox is listed, then watched, so a command
// decided while the node was away is delivered when it connects. It returns
// when ctx ends.
func (g *Gateway) deliverCommands(ctx context.Context, s *agentStream) {
	if g.holdCommands {
		return // Config.HoldCommands: they wait in the outbox
	}
	send := func(c remediation.Command) error {
		select {
		case s.commands <- remediation.CommandToProto(c):
			g.metrics.commands.WithLabelValues("queued").Inc()
			return nil
		default:
			g.metrics.commands.WithLabelValues("unavailable").Inc()
			return fmt.Errorf("command queue of node %s is full (%d): %w", s.node, cap(s.commands), errdefs.ErrUnavailable)
		}
	}
	// Deliver retries store errors and refused sends itself, until ctx ends.
	_ = g.remediation.Deliver(ctx, s.node, send)
}

// recordResult journals an agent's command result before the message is
// acknowledged: when the journal cannot be written the stream ends, and the
// agent sends the result again on its next stream (it keeps unacknowledged
// messages). Results of commands the engine never decided (sent by hand
// with SendCommand) are only kept in the fleet, as before.
func (g *Gateway) recordResult(ctx context.Context, node string, r *vigilv1.CommandResult) error {
	id, outcome, msg, err := remediation.ResultFromProto(r)
	if err != nil {
		g.log.Warn("agent sent a command result the journal cannot read", "node", node, "command", r.GetCommandId(), "err", err)
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = g.remediation.RecordResult(rctx, id, outcome, msg)
	switch {
	case err == nil, errors.Is(err, errdefs.ErrNotFound):
		return nil
	case errors.Is(err, errdefs.ErrInvalid):
		g.log.Warn("command result not journaled", "node", node, "command", id, "err", err)
		return nil
	default:
		return fmt.Errorf("journal the result of command %s: %w", id, err)
	}
}

// ListRemediations returns journaled remediations, newest first.
func (a *API) ListRemediations(ctx context.Context, req *vigilv1.ListRemediationsRequest) (*vigilv1.ListRemediationsResponse, error) {
	if a.remediation == nil {
		return nil, status.Error(codes.Unimplemented, remediationOff)
	}
	list, err := a.remediation.List(ctx, remediation.ListFilterFromProto(req))
	if err != nil {
		return nil, errdefs.GRPC(err)
	}
	resp := &vigilv1.ListRemediationsResponse{Remediations: make([]*vigilv1.Remediation, 0, len(list))}
	for _, r := range list {
		resp.Remediations = append(resp.Remediations, remediation.RemediationToProto(r))
	}
	return resp, nil
}

// RequestRemediation is an operator's request: it goes through the same
// budgets, fences and journal as an alert's, after the rules.
func (a *API) RequestRemediation(ctx context.Context, req *vigilv1.RequestRemediationRequest) (*vigilv1.RequestRemediationResponse, error) {
	if a.remediation == nil {
		return nil, status.Error(codes.Unimplemented, remediationOff)
	}
	who := "insecure-client"
	if id, ok := Caller(ctx); ok {
		who = id.String()
	}
	in, err := remediation.RequestFromProto(req, who)
	if err != nil {
		return nil, errdefs.GRPC(err)
	}
	rec, err := a.remediation.Request(ctx, in)
	if err != nil {
		return nil, errdefs.GRPC(err)
	}
	return &vigilv1.RequestRemediationResponse{Remediation: remediation.RemediationToProto(rec)}, nil
}

// mountRemediation adds the remediation routes to the HTTP listener:
// Alertmanager's webhook (role alertmanager, or an operator) and the
// journal's listing (viewer).
func (a *Aggregator) mountRemediation() {
	if a.remediation == nil {
		off := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			writeJSONError(w, http.StatusNotImplemented, remediationOff)
		})
		a.HandleAPI("POST /api/v1/alerts", pki.RoleAlertmanager, off)
		a.HandleAPI("GET /api/v1/remediations", pki.RoleViewer, off)
		return
	}
	a.HandleAPI("POST /api/v1/alerts", pki.RoleAlertmanager, a.remediation.AlertsHandler())
	a.HandleAPI("GET /api/v1/remediations", pki.RoleViewer, a.remediation.RemediationsHandler())
}

// runRemediation runs the engine's housekeeping (expiry, storm guard,
// retention sweep) until ctx ends.
func runRemediation(ctx context.Context, eng *remediation.Engine, log *slog.Logger) {
	if err := eng.Run(ctx); err != nil {
		log.Error("remediation housekeeping stopped", "err", err)
	}
}
