package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/errdefs"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// actionCommands maps vigilctl's action commands onto remediation actions.
var actionCommands = map[string]vigilv1.RemediationAction{
	"restart": vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART,
	"stop":    vigilv1.RemediationAction_REMEDIATION_ACTION_STOP,
	"start":   vigilv1.RemediationAction_REMEDIATION_ACTION_START,
	"kill":    vigilv1.RemediationAction_REMEDIATION_ACTION_KILL,
	"link-up": vigilv1.RemediationAction_REMEDIATION_ACTION_LINK_UP,
}

// parseTarget reads a target as vigilctl prints it:
//
//	NODE/NAMESPACE/CONTAINER_ID           a containerd container
//	NODE/POD_NAMESPACE/POD/CONTAINER      a pod's container (by name)
//	...%INTERFACE                         a link in the container's netns
//	NODE%INTERFACE                        a host link (link-up only)
func parseTarget(s string, action vigilv1.RemediationAction) (*vigilv1.Target, error) {
	bad := func(why string) error {
		return usagef("target %q: %s; want NODE/NAMESPACE/CONTAINER_ID or NODE/POD_NAMESPACE/POD/CONTAINER (with %%INTERFACE for link-up)", s, why)
	}
	rest, iface, hasIface := strings.Cut(s, "%")
	if hasIface && iface == "" {
		return nil, bad("empty interface after %")
	}
	if hasIface != (action == vigilv1.RemediationAction_REMEDIATION_ACTION_LINK_UP) {
		if hasIface {
			return nil, bad("an interface is for link-up only")
		}
		return nil, bad("link-up needs %INTERFACE")
	}
	parts := strings.Split(rest, "/")
	for _, p := range parts {
		if p == "" {
			return nil, bad("an empty part")
		}
	}
	t := &vigilv1.Target{Node: parts[0], Interface: iface}
	switch len(parts) {
	case 1:
		if !hasIface {
			return nil, bad("a node alone is no target")
		}
	case 3:
		t.Namespace, t.ContainerId = parts[1], parts[2]
	case 4:
		t.PodNamespace, t.Pod, t.Container = parts[1], parts[2], parts[3]
	default:
		return nil, bad(fmt.Sprintf("%d parts", len(parts)))
	}
	return t, nil
}

// parseSignal reads --signal: a name (TERM, SIGTERM) or a number.
func parseSignal(s string) (uint32, error) {
	if s == "" {
		return 0, nil
	}
	if n, err := strconv.ParseUint(s, 10, 8); err == nil && n > 0 && n < 65 {
		return uint32(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return uint32(sig), nil
	}
	return 0, usagef("--signal %q: not a signal name or number", s)
}

// requestRemediation sends an operator's request through the aggregator's
// journal, budgets and fences, prints the journaled decision (with --wait,
// the remediation as it ended), and returns a *notDoneError unless the
// action was done (actionResult).
func requestRemediation(ctx context.Context, c vigilv1.VigilClient, inv *invocation, out *printer) error {
	cctx, cancel := context.WithTimeout(ctx, inv.global.timeout)
	defer cancel()
	resp, err := c.RequestRemediation(cctx, &vigilv1.RequestRemediationRequest{
		Action: actionCommands[inv.command], Target: inv.targetProto, Reason: inv.reason, DryRun: inv.dryRun, Signal: inv.signal,
	})
	if err != nil {
		return inv.global.callError(inv.command, err)
	}
	r := resp.GetRemediation()
	var waitErr error
	if inv.wait && !ended(r.GetState()) {
		wctx, cancel := context.WithTimeout(ctx, inv.global.timeout)
		defer cancel()
		r, waitErr = awaitEnd(wctx, c, r)
	}
	if err := out.remediations([]*vigilv1.Remediation{r}); err != nil {
		return err
	}
	return actionResult(inv, r, waitErr)
}

// ended reports whether a remediation in state s has ended: it will not
// change again.
func ended(s vigilv1.RemediationState) bool {
	return s != vigilv1.RemediationState_REMEDIATION_STATE_PENDING && s != vigilv1.RemediationState_REMEDIATION_STATE_DISPATCHED
}

// awaitEnd reads the journal until remediation r has ended or ctx ends,
// and returns r as last read, with ctx's error or the journal's if it
// did not see the end. It reads the journal rather than watching events:
// the journal is where every replica records an agent's result, whichever
// holds the node's stream, while a watch can be dropped and its history
// needs a store. Reads start 100 ms apart and slow to 1 s; each asks for
// the newest remediations of r's node (not the whole fleet's), ten times
// more when r was not among them.
func awaitEnd(ctx context.Context, c vigilv1.VigilClient, r *vigilv1.Remediation) (*vigilv1.Remediation, error) {
	const maxLimit = 10000 // the aggregator's maximum
	limit := uint32(100)
	delay := 100 * time.Millisecond
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-timer.C:
		}
		timer.Reset(delay)
		delay = min(2*delay, time.Second)
		resp, err := c.ListRemediations(ctx, &vigilv1.ListRemediationsRequest{Node: r.GetTarget().GetNode(), Limit: limit})
		switch status.Code(err) {
		case codes.OK:
		case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
			continue // ctx's end, or the aggregator again at the next read
		default:
			return r, errdefs.FromGRPC(err)
		}
		found := false
		for _, x := range resp.GetRemediations() {
			if x.GetId() == r.GetId() {
				r, found = x, true
				break
			}
		}
		if found && ended(r.GetState()) {
			return r, nil
		}
		if !found {
			limit = min(limit*10, maxLimit)
		}
	}
}

// actionResult is nil when remediation r says the action was done: it
// succeeded, or (without --wait) the aggregator accepted it for the agent,
// or it is a dry run that would act. Otherwise it is a *notDoneError that
// says why, with the exit status exitNotDone (not carried out) or
// exitOutcomeUnknown (not known: waitErr is why the wait ended without an
// end, or the aggregator marked it unknown).
func actionResult(inv *invocation, r *vigilv1.Remediation, waitErr error) error {
	what := inv.command + " " + inv.target
	if inv.dryRun {
		what += " (dry run)"
	}
	state := enumWord(r.GetState().String(), "REMEDIATION_STATE_")
	why := state
	if res := clean(r.GetResult()); res != "" && res != state {
		why += " (" + res + ")"
	}
	if m := clean(r.GetMessage()); m != "" {
		why += ": " + m
	}
	switch r.GetState() {
	case vigilv1.RemediationState_REMEDIATION_STATE_SUCCEEDED:
		return nil
	case vigilv1.RemediationState_REMEDIATION_STATE_PENDING, vigilv1.RemediationState_REMEDIATION_STATE_DISPATCHED:
		if !inv.wait {
			return nil
		}
		msg := fmt.Sprintf("%s: outcome unknown: no result within %s (still %s); the agent may yet carry it out: vigilctl remediations shows how it ends", what, inv.global.timeout, state)
		if waitErr != nil && !errors.Is(waitErr, context.DeadlineExceeded) {
			msg = fmt.Sprintf("%s: outcome unknown (still %s): %v; the agent may yet carry it out: vigilctl remediations shows how it ends", what, state, waitErr)
		}
		return &notDoneError{code: exitOutcomeUnknown, msg: msg}
	case vigilv1.RemediationState_REMEDIATION_STATE_SUPPRESSED:
		if r.GetDryRun() {
			return nil // the dry run's own suppression: it would act
		}
		if inv.dryRun {
			return &notDoneError{code: exitNotDone, msg: what + ": would not be done: " + why}
		}
		return &notDoneError{code: exitNotDone, msg: what + ": not done: " + why}
	case vigilv1.RemediationState_REMEDIATION_STATE_FAILED, vigilv1.RemediationState_REMEDIATION_STATE_CANCELLED,
		vigilv1.RemediationState_REMEDIATION_STATE_EXPIRED:
		return &notDoneError{code: exitNotDone, msg: what + ": not done: " + why}
	}
	// UNKNOWN (sent, no result: it may have run), or a state this vigilctl
	// does not know.
	return &notDoneError{code: exitOutcomeUnknown, msg: what + ": outcome unknown: " + why}
}

// listRemediations prints the journal, newest first.
func listRemediations(ctx context.Context, c vigilv1.VigilClient, inv *invocation, out *printer) error {
	cctx, cancel := context.WithTimeout(ctx, inv.global.timeout)
	defer cancel()
	resp, err := c.ListRemediations(cctx, &vigilv1.ListRemediationsRequest{Node: inv.node, Limit: uint32(inv.limit)})
	if err != nil {
		return inv.global.callError("list remediations", err)
	}
	return out.remediations(resp.GetRemediations())
}

// remediations prints remediations as a table (ID, AGE, ACTION, TARGET,
// STATE, RESULT, BY, REASON; wide adds the fence and the message) or JSON.
func (p *printer) remediations(list []*vigilv1.Remediation) error {
	if p.format == "json" {
		return p.json(&vigilv1.ListRemediationsResponse{Remediations: list}, true)
	}
	if len(list) == 0 {
		p.noneFound("remediations")
		return nil
	}
	header := []string{"ID", "AGE", "ACTION", "TARGET", "STATE", "RESULT", "BY", "REASON"}
	if p.format == "wide" {
		header = append(header, "FENCE", "MESSAGE")
	}
	rows := make([][]string, 0, len(list))
	for _, r := range list {
		action := enumWord(r.GetAction().String(), "REMEDIATION_ACTION_")
		if r.GetDryRun() {
			action += " (dry run)"
		}
		by := r.GetRequestedBy()
		if by == "" && r.GetRule() != "" {
			by = "rule " + r.GetRule()
		}
		row := []string{cell(r.GetId()), p.age(r.GetCreatedAt()), action, cell(targetText(r.GetTarget())),
			enumWord(r.GetState().String(), "REMEDIATION_STATE_"), cell(r.GetResult()), cell(by), cell(r.GetReason())}
		if p.format == "wide" {
			f := r.GetFence()
			fence := ""
			if f.GetContainerId() != "" {
				fence = fmt.Sprintf("%s restarts=%d rev=%d", shortID(f.GetContainerId()), f.GetRestartCount(), f.GetIntentRevision())
			}
			row = append(row, fence, cell(r.GetMessage()))
		}
		rows = append(rows, row)
	}
	return p.table(header, rows)
}

// targetText prints a target the way parseTarget reads it.
func targetText(t *vigilv1.Target) string {
	var b strings.Builder
	b.WriteString(t.GetNode())
	switch {
	case t.GetPod() != "":
		fmt.Fprintf(&b, "/%s/%s/%s", t.GetPodNamespace(), t.GetPod(), t.GetContainer())
	case t.GetContainerId() != "":
		fmt.Fprintf(&b, "/%s/%s", t.GetNamespace(), t.GetContainerId())
	}
	if t.GetInterface() != "" {
		fmt.Fprintf(&b, "%%%s", t.GetInterface())
	}
	return b.String()
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
