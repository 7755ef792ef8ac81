package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

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
		return fmt.Errorf("target %q: %s; want NODE/NAMESPACE/CONTAINER_ID or NODE/POD_NAMESPACE/POD/CONTAINER (with %%INTERFACE for link-up): %w", s, why, errdefs.ErrInvalid)
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
	return 0, fmt.Errorf("--signal %q: not a signal name or number: %w", s, errdefs.ErrInvalid)
}

// requestRemediation sends an operator's request through the aggregator's
// journal, budgets and fences, and prints the journaled decision.
func requestRemediation(ctx context.Context, c vigilv1.VigilClient, inv *invocation, out *printer) error {
	action := actionCommands[inv.command]
	target, err := parseTarget(inv.target, action)
	if err != nil {
		return err
	}
	sig, err := parseSignal(inv.signal)
	if err != nil {
		return err
	}
	if sig != 0 && action != vigilv1.RemediationAction_REMEDIATION_ACTION_KILL {
		return fmt.Errorf("--signal is for kill only: %w", errdefs.ErrInvalid)
	}
	cctx, cancel := context.WithTimeout(ctx, inv.global.timeout)
	defer cancel()
	resp, err := c.RequestRemediation(cctx, &vigilv1.RequestRemediationRequest{
		Action: action, Target: target, Reason: inv.reason, DryRun: inv.dryRun, Signal: sig,
	})
	if err != nil {
		return callError(inv.global.server, inv.command, inv.global.timeout, err)
	}
	return out.remediations([]*vigilv1.Remediation{resp.GetRemediation()})
}

// listRemediations prints the journal, newest first.
func listRemediations(ctx context.Context, c vigilv1.VigilClient, inv *invocation, out *printer) error {
	cctx, cancel := context.WithTimeout(ctx, inv.global.timeout)
	defer cancel()
	resp, err := c.ListRemediations(cctx, &vigilv1.ListRemediationsRequest{Node: inv.node, Limit: uint32(inv.limit)})
	if err != nil {
		return callError(inv.global.server, "list remediations", inv.global.timeout, err)
	}
	return out.remediations(resp.GetRemediations())
}

// remediations prints remediations as a table (ID, AGE, ACTION, TARGET,
// STATE, RESULT, BY, REASON; wide adds the fence and the message) or JSON.
func (p *printer) remediations(list []*vigilv1.Remediation) error {
	if p.format == "json" {
		return p.json(&vigilv1.ListRemediationsResponse{Remediations: list}, true)
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
