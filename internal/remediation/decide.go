package remediation

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// Reason is why a decision made no command. The values are the label
// values of vigil_remediations_suppressed_total{reason}: a bounded set.
type Reason string

const (
	// ReasonNone: the decision acts.
	ReasonNone Reason = ""
	// ReasonDuplicate: this alert's intent (fingerprint, startsAt, action)
	// was claimed before (a retry, a repeat, another Alertmanager replica).
	ReasonDuplicate Reason = "duplicate"
	// ReasonCooldown: the target was acted on within its cooldown.
	ReasonCooldown Reason = "cooldown"
	// ReasonBudget: a limit was reached (the target's per hour, the fleet's
	// per minute, nodes in flight).
	ReasonBudget Reason = "budget"
	// ReasonStorm: the storm guard holds every alert-driven action.
	ReasonStorm Reason = "storm"
	// ReasonFenced: the target changed since the alert saw it (decided
	// here from the alert's container_id label, or by the agent).
	ReasonFenced Reason = "fenced"
	// ReasonDryRun: decided and journaled, never sent.
	ReasonDryRun Reason = "dry_run"
	// ReasonTargetUnknown: the alert's labels name no target the fleet
	// knows (or a host link that the rule does not allow).
	ReasonTargetUnknown Reason = "target_unknown"
	// ReasonNodeDown: the target's node is down.
	ReasonNodeDown Reason = "node_down"
	// ReasonResolved: the alert resolved before its command was sent.
	ReasonResolved Reason = "resolved"
	// ReasonOwner: the action would fight the container's owner (a stop
	// of a container the kubelet or dockerd restarts).
	ReasonOwner Reason = "owner"
	// ReasonEscalated: the target was escalated within the hour and is
	// left to a human.
	ReasonEscalated Reason = "escalated"
	// ReasonStoreUnavailable: the store could not be written; nothing was
	// decided (the webhook answered 5xx for Alertmanager to retry).
	ReasonStoreUnavailable Reason = "store_unavailable"
	// ReasonRefused: the agent refused the command (its allowlist, a host
	// link, more than a kill for another manager's container).
	ReasonRefused Reason = "refused"
	// ReasonNodeNetwork: an alert asked to restart, kill or stop a
	// container that is unhealthy only because its node's network is
	// broken: its agent blamed the failing probe on the node (gossip peers
	// on other nodes reach the pod). The agent spared it on purpose; an
	// alert-driven action would restart what the node's network breaks
	// again. Held, not claimed: once the blame goes, the next delivery of
	// a still-firing alert is decided again.
	ReasonNodeNetwork Reason = "node_network"
)

// Reasons lists every suppression reason (metric label values).
var Reasons = []Reason{ReasonDuplicate, ReasonCooldown, ReasonBudget, ReasonStorm, ReasonFenced, ReasonDryRun,
	ReasonTargetUnknown, ReasonNodeDown, ReasonResolved, ReasonOwner, ReasonEscalated, ReasonStoreUnavailable, ReasonRefused,
	ReasonNodeNetwork}

// Budget is the shared state that limits actions, as read from the store
// at the revision a decision is conditioned on.
type Budget struct {
	// FleetTimes: when actions were decided across the fleet, within the
	// last minute.
	FleetTimes []time.Time `json:"times,omitempty"`
	// InFlight: per node, the commands not yet answered and until when
	// they count (their deadline plus the result grace).
	InFlight map[string]map[string]time.Time `json:"in_flight,omitempty"`
	// Target is the decided target's history.
	Target TargetBudget `json:"-"`
}

// TargetBudget is one target's history within the last hour.
type TargetBudget struct {
	Times       []time.Time `json:"times,omitempty"`
	EscalatedAt time.Time   `json:"escalated_at,omitzero"`
}

// Input is everything a decision depends on. Decide reads nothing else.
type Input struct {
	Now   time.Time
	Rules *Rules
	// Rule that matched the alert; nil for an operator's request.
	Rule *Rule
	// Action and Signal asked for (the rule's, or the operator's).
	Action Action
	Signal uint32
	// DryRun asked for by the operator's request.
	DryRun bool
	// Ref is the target as the alert's labels (or the operator) named it;
	// State and LookupErr what FleetView.Lookup answered.
	Ref       TargetRef
	State     TargetState
	LookupErr error
	// AlertContainerID is the alert's container_id label, when it has one:
	// the container the alert saw.
	AlertContainerID string
	Fleet            FleetSize
	Budget           Budget
	// FiringTargets: distinct targets with a firing alert a rule matched,
	// within the storm window (this alert's included).
	FiringTargets int
}

// Decision is what to do about one alert or request.
type Decision struct {
	// Act: a command is to be sent (unless DryRun). Otherwise Reason says
	// why not.
	Act    bool
	Reason Reason
	// Message explains the decision to a human (journal, API).
	Message string
	// Action and Signal as they will be sent: after escalation, and a kill
	// for a restart of a container another manager owns.
	Action    Action
	Signal    uint32
	Escalated bool
	Target    Target
	Fence     Fence
	// Claim: the intent is claimed for good, so that a later delivery of
	// the same alert is a duplicate (acting, dry run, owner, fenced: the
	// answer for this firing will not change). Held decisions (budget,
	// cooldown, storm, node down, unknown target, escalated) are not
	// claimed: Alertmanager's next delivery of a still-firing alert is
	// decided again, so limits delay an action rather than drop it.
	Claim bool
	// Charge: the action counts against the budgets (acting, not dry run).
	Charge bool
}

func suppress(r Reason, format string, args ...any) Decision {
	return Decision{Reason: r, Message: fmt.Sprintf(format, args...)}
}

// Decide is the engine's decision rule: pure, no I/O. The order of checks
// is the order of the reasons' precedence: the target first (unknown,
// node down, fenced, owner, its health blamed on its node's network), then
// the storm guard, then the target's own
// limits (escalated, cooldown, escalation, per hour), then the fleet's
// (per minute, nodes in flight), and dry run last, so that a dry run shows
// what would have happened.
func Decide(in Input) Decision {
	rs := in.Rules
	if in.LookupErr != nil {
		if errors.Is(in.LookupErr, errdefs.ErrNotFound) || errors.Is(in.LookupErr, errdefs.ErrInvalid) {
			return suppress(ReasonTargetUnknown, "target %s: %v", in.Ref, in.LookupErr)
		}
		return suppress(ReasonTargetUnknown, "target %s could not be resolved: %v", in.Ref, in.LookupErr)
	}
	st := in.State
	if in.Action == ActionLinkUp && st.Target.NetnsInode == 0 && in.Rule != nil && !in.Rule.AllowHostLink {
		return suppress(ReasonTargetUnknown, "target %s is a host link and rule %q does not allow host links", in.Ref, in.Rule.Name)
	}
	if !st.NodeUp {
		return suppress(ReasonNodeDown, "node %s is down", st.Target.Node)
	}
	d := Decision{Action: in.Action, Signal: in.Signal, Target: st.Target}
	if in.Action.onContainer() {
		if in.AlertContainerID != "" && in.AlertContainerID != st.Target.ContainerID {
			// Claimed: this firing was about a container that is gone.
			d := suppress(ReasonFenced, "the alert saw container %s, the fleet now has %s in its place", clip(in.AlertContainerID), st.Target.ContainerID)
			d.Claim = true
			return d
		}
		d.Fence = Fence{ContainerID: st.Target.ContainerID, RestartCount: st.RestartCount, HasRestartCount: st.HasRestartCount}
	}
	owned := in.Action.onContainer() && st.Owner != OwnerVigil
	if owned && (in.Action == ActionStop || in.Action == ActionStart) {
		d := suppress(ReasonOwner, "%s owns container %s: %s would fight its owner", ownerName(st.Owner), st.Target.ContainerID, in.Action)
		d.Claim = true
		return d
	}
	if in.Action.endsTask() && st.HealthBlamedOnNode {
		if in.Rule != nil {
			return suppress(ReasonNodeNetwork, "container %s is unhealthy because node %s's network is broken, not the container: its agent's gossip peers reach the pod that its probe cannot; %s would not help (held while the agent blames the node)",
				st.Target.ContainerID, st.Target.Node, in.Action)
		}
		// An operator's request is a person's decision: it acts, and the
		// journal says what they were told.
		d.Message = join(d.Message, fmt.Sprintf("note: its agent blames the failing probe on node %s's network, not on the container", st.Target.Node))
	}
	if in.Rule != nil && rs.StormShare > 0 && in.FiringTargets >= rs.StormMinTargets &&
		float64(in.FiringTargets) > rs.StormShare*float64(in.Fleet.Targets) {
		return suppress(ReasonStorm, "storm guard: %d of %d targets have firing alerts (over %.0f%%): every alert-driven action is held",
			in.FiringTargets, in.Fleet.Targets, rs.StormShare*100)
	}
	// The target's own limits (escalated, cooldown, per hour) hold back
	// automation that loops on a flapping target. An operator's request is
	// a person's decision, made looking at the target: it passes them (a
	// `vigilctl stop` then `start` must round-trip), and is still journaled,
	// fenced, refused against an owner, and counted in the fleet's budget.
	// What it does is charged to the target, so the alerts that follow wait
	// for the cooldown.
	cooldown, perHour := rs.Cooldown, rs.MaxPerHour
	if in.Rule != nil {
		cooldown, perHour = in.Rule.Cooldown, in.Rule.MaxPerHour
	} else {
		cooldown, perHour = 0, 0
	}
	tb := in.Budget.Target
	if in.Rule != nil && !tb.EscalatedAt.IsZero() && in.Now.Sub(tb.EscalatedAt) < time.Hour {
		return suppress(ReasonEscalated, "target %s was escalated at %s and is left to a human until %s",
			st.Target.Key(), tb.EscalatedAt.Format(time.RFC3339), tb.EscalatedAt.Add(time.Hour).Format(time.RFC3339))
	}
	hour := within(tb.Times, in.Now, time.Hour)
	if n := len(hour); n > 0 && cooldown > 0 {
		if last := hour[n-1]; in.Now.Sub(last) < cooldown {
			return suppress(ReasonCooldown, "target %s was acted on at %s; cooldown %v until %s",
				st.Target.Key(), last.Format(time.RFC3339), cooldown, last.Add(cooldown).Format(time.RFC3339))
		}
	}
	if e := escalation(in.Rule); e != nil && len(hour) >= e.After {
		d.Action, d.Signal, d.Escalated = e.Action, e.Signal, true
		d.Message = fmt.Sprintf("%d actions on %s within the hour: escalated from %s to %s", len(hour), st.Target.Key(), in.Action, e.Action)
		if (e.Action == ActionStop || e.Action == ActionStart) && owned {
			d := suppress(ReasonOwner, "escalation to %s: %s owns container %s; left to a human", e.Action, ownerName(st.Owner), st.Target.ContainerID)
			d.Claim = true
			return d
		}
	} else if perHour > 0 && len(hour) >= perHour {
		return suppress(ReasonBudget, "target %s had %d actions within the hour (max_per_hour %d)", st.Target.Key(), len(hour), perHour)
	}
	if m := rs.MaxActionsPerMinute; m > 0 {
		if n := len(within(in.Budget.FleetTimes, in.Now, time.Minute)); n >= m {
			return suppress(ReasonBudget, "%d actions across the fleet within the minute (max_actions_per_minute %d)", n, m)
		}
	}
	if m := rs.MaxNodes(in.Fleet.Nodes); m > 0 {
		busy := inFlightNodes(in.Budget.InFlight, in.Now)
		if _, already := busy[st.Target.Node]; !already && len(busy) >= m {
			return suppress(ReasonBudget, "%d nodes have commands in flight (max_nodes_in_flight %d of %d nodes)", len(busy), m, in.Fleet.Nodes)
		}
	}
	if owned && (d.Action == ActionRestart || d.Action == ActionKill) {
		if d.Action == ActionRestart {
			d.Signal = uint32(syscall.SIGKILL)
			d.Message = join(d.Message, fmt.Sprintf("%s owns the container: kill it and let its owner restart it", ownerName(st.Owner)))
		}
		d.Action = ActionKill
	}
	if d.Action != ActionKill {
		d.Signal = 0
	}
	d.Claim = true
	if why := dryRun(in); why != "" {
		d.Reason = ReasonDryRun
		d.Message = join(d.Message, "dry run ("+why+"): would "+d.Action.String()+" "+st.Target.Key())
		return d
	}
	d.Act, d.Charge = true, true
	return d
}

func dryRun(in Input) string {
	switch {
	case in.DryRun:
		return "asked for"
	case in.Rules.DryRun:
		return "dry_run in the rules file"
	case in.Rule != nil && in.Rule.DryRun:
		return "rule " + in.Rule.Name
	}
	return ""
}

func escalation(r *Rule) *Escalation {
	if r == nil {
		return nil
	}
	return r.Escalate
}

func ownerName(o Owner) string {
	if o == OwnerUnknown {
		return "another manager"
	}
	return string(o)
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// within returns the times of ts within window before now, in order.
func within(ts []time.Time, now time.Time, window time.Duration) []time.Time {
	out := make([]time.Time, 0, len(ts))
	for _, t := range ts {
		if now.Sub(t) < window && !t.After(now.Add(time.Minute)) {
			out = append(out, t)
		}
	}
	return out
}

// inFlightNodes is the nodes with a command still counted as in flight.
func inFlightNodes(m map[string]map[string]time.Time, now time.Time) map[string]struct{} {
	out := map[string]struct{}{}
	for node, cmds := range m {
		for _, until := range cmds {
			if now.Before(until) {
				out[node] = struct{}{}
				break
			}
		}
	}
	return out
}

// Charge returns b with an action of d charged: the fleet's minute, the
// node's commands in flight (until until), the target's hour and, for an
// escalation, the target's escalation. Entries out of their windows are
// dropped, so the stored budget stays bounded.
func (b Budget) Charge(d Decision, now time.Time, cmdID string, until time.Time) Budget {
	out := Budget{
		FleetTimes: append(within(b.FleetTimes, now, time.Minute), now),
		InFlight:   pruneInFlight(b.InFlight, now),
		Target:     TargetBudget{Times: append(within(b.Target.Times, now, time.Hour), now), EscalatedAt: b.Target.EscalatedAt},
	}
	if out.InFlight[d.Target.Node] == nil {
		out.InFlight[d.Target.Node] = map[string]time.Time{}
	}
	out.InFlight[d.Target.Node][cmdID] = until
	if d.Escalated {
		out.Target.EscalatedAt = now
	}
	return out
}

// pruneInFlight copies m without the entries whose time has passed.
func pruneInFlight(m map[string]map[string]time.Time, now time.Time) map[string]map[string]time.Time {
	out := make(map[string]map[string]time.Time, len(m))
	for node, cmds := range m {
		for id, until := range cmds {
			if now.Before(until) {
				if out[node] == nil {
					out[node] = map[string]time.Time{}
				}
				out[node][id] = until
			}
		}
	}
	return out
}

// release returns m without command id on node.
func release(m map[string]map[string]time.Time, node, id string, now time.Time) map[string]map[string]time.Time {
	out := pruneInFlight(m, now)
	if cmds := out[node]; cmds != nil {
		delete(cmds, id)
		if len(cmds) == 0 {
			delete(out, node)
		}
	}
	return out
}
