package remediation

import (
	"context"
	"fmt"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// OperatorRequest is an operator's request for an action (gRPC
// RequestRemediation, vigilctl restart|stop|kill|link-up). It passes the
// same budgets, fences and journal as alerts, after the rules; the storm
// guard does not hold it (a human decided).
type OperatorRequest struct {
	Action Action
	Target TargetRef
	// Signal for kill_container; 0 means SIGKILL.
	Signal uint32
	// Reason is journaled; required.
	Reason string
	DryRun bool
	// Who asked: the caller's identity from its credential; required.
	Who string
}

func (r OperatorRequest) validate() error {
	switch {
	case r.Action < ActionRestart || r.Action > ActionStart:
		return fmt.Errorf("request: unknown action %d: %w", int(r.Action), errdefs.ErrInvalid)
	case r.Target.Node == "":
		return fmt.Errorf("request: the target names no node: %w", errdefs.ErrInvalid)
	case r.Action.onContainer() && r.Target.Container == "":
		return fmt.Errorf("request: %s needs a container: %w", r.Action, errdefs.ErrInvalid)
	case r.Action.onContainer() && r.Target.Interface != "":
		return fmt.Errorf("request: %s takes no interface: %w", r.Action, errdefs.ErrInvalid)
	case r.Action == ActionLinkUp && r.Target.Interface == "":
		return fmt.Errorf("request: set_link_up needs an interface: %w", errdefs.ErrInvalid)
	case r.Signal != 0 && r.Action != ActionKill:
		return fmt.Errorf("request: a signal is only for kill_container: %w", errdefs.ErrInvalid)
	case r.Signal > 64:
		return fmt.Errorf("request: signal %d is out of range 1-64: %w", r.Signal, errdefs.ErrInvalid)
	case r.Reason == "":
		return fmt.Errorf("request: a reason is required (it is journaled): %w", errdefs.ErrInvalid)
	case r.Who == "":
		return fmt.Errorf("request: the caller's identity is missing: %w", errdefs.ErrInvalid)
	}
	return nil
}

// Request decides an operator's request and journals it; a command goes
// to the node's outbox when it acts. A suppression is an answer (the
// Remediation's State and Result say why), not an error; errors are
// ErrInvalid for a malformed request and store errors.
func (e *Engine) Request(ctx context.Context, r OperatorRequest) (Remediation, error) {
	received := e.now()
	if err := r.validate(); err != nil {
		return Remediation{}, err
	}
	if r.Action == ActionKill && r.Signal == 0 {
		r.Signal = 9
	}
	st, lerr := e.fleet.Lookup(r.Target)
	rs := e.rules.Current()
	size := e.fleet.Size()
	// An operator naming a host link means it: the rules' allow_host_link is
	// for alerts.
	e.mu.Lock()
	defer e.mu.Unlock()
	var rec Remediation
	_, err := e.atomically(ctx, func(t *txn) error {
		now := e.now()
		e.addJournal(t, JournalEntry{Time: now, Kind: JournalRequest, Action: r.Action, Target: r.Target.String(), Message: r.Reason, Who: r.Who})
		key := ""
		if lerr == nil {
			key = st.Target.Key()
		}
		b, err := readBudget(ctx, t, rs, size, key)
		if err != nil {
			return err
		}
		in := Input{Now: now, Rules: rs, Action: r.Action, Signal: r.Signal, DryRun: r.DryRun, Ref: r.Target, State: st, LookupErr: lerr,
			Fleet: size, Budget: b}
		d := Decide(in)
		rec = Remediation{ID: newID(now), Source: SourceOperator, RequestedBy: r.Who, Reason: r.Reason, Requested: r.Action, Ref: r.Target, ReceivedAt: received}
		return e.apply(ctx, t, &rec, d, in, "", intentValue{})
	})
	if err != nil {
		return Remediation{}, err
	}
	if rec.State == StateSuppressed {
		e.m.suppressed.WithLabelValues(rec.Result).Inc()
	}
	e.log.Info("operator's remediation decided", "id", rec.ID, "who", rec.RequestedBy, "action", rec.Action.String(),
		"target", targetString(&rec), "state", string(rec.State), "result", rec.Result, "message", rec.Message)
	if e.cfg.OnChange != nil {
		e.cfg.OnChange(rec)
	}
	return rec, nil
}
