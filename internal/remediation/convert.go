package remediation

import (
	"fmt"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/errdefs"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// Conversions between the engine's domain types and the protocol, in one
// place: the aggregator's gRPC API and its agents' streams call these.

var actionToProto = map[Action]vigilv1.RemediationAction{
	ActionRestart: vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART,
	ActionStop:    vigilv1.RemediationAction_REMEDIATION_ACTION_STOP,
	ActionKill:    vigilv1.RemediationAction_REMEDIATION_ACTION_KILL,
	ActionLinkUp:  vigilv1.RemediationAction_REMEDIATION_ACTION_LINK_UP,
	ActionStart:   vigilv1.RemediationAction_REMEDIATION_ACTION_START,
}

// ActionToProto converts an action (UNSPECIFIED for an unknown one).
func ActionToProto(a Action) vigilv1.RemediationAction { return actionToProto[a] }

// ActionFromProto converts an action; ErrInvalid for UNSPECIFIED or a value
// this engine does not carry out.
func ActionFromProto(p vigilv1.RemediationAction) (Action, error) {
	for a, v := range actionToProto {
		if v == p {
			return a, nil
		}
	}
	return 0, fmt.Errorf("remediation action %v is not one the engine carries out: %w", p, errdefs.ErrInvalid)
}

var stateToProto = map[State]vigilv1.RemediationState{
	StatePending:    vigilv1.RemediationState_REMEDIATION_STATE_PENDING,
	StateDispatched: vigilv1.RemediationState_REMEDIATION_STATE_DISPATCHED,
	StateSucceeded:  vigilv1.RemediationState_REMEDIATION_STATE_SUCCEEDED,
	StateFailed:     vigilv1.RemediationState_REMEDIATION_STATE_FAILED,
	StateSuppressed: vigilv1.RemediationState_REMEDIATION_STATE_SUPPRESSED,
	StateCancelled:  vigilv1.RemediationState_REMEDIATION_STATE_CANCELLED,
	StateExpired:    vigilv1.RemediationState_REMEDIATION_STATE_EXPIRED,
	StateUnknown:    vigilv1.RemediationState_REMEDIATION_STATE_UNKNOWN,
}

// StateToProto converts a state.
func StateToProto(s State) vigilv1.RemediationState { return stateToProto[s] }

// StateFromProto converts a state; ErrInvalid for UNSPECIFIED.
func StateFromProto(p vigilv1.RemediationState) (State, error) {
	for s, v := range stateToProto {
		if v == p {
			return s, nil
		}
	}
	return "", fmt.Errorf("remediation state %v: %w", p, errdefs.ErrInvalid)
}

var outcomeToProto = map[Outcome]vigilv1.CommandOutcome{
	OutcomeSucceeded: vigilv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED,
	OutcomeFailed:    vigilv1.CommandOutcome_COMMAND_OUTCOME_FAILED,
	OutcomeFenced:    vigilv1.CommandOutcome_COMMAND_OUTCOME_FENCED,
	OutcomeExpired:   vigilv1.CommandOutcome_COMMAND_OUTCOME_EXPIRED,
	OutcomeDuplicate: vigilv1.CommandOutcome_COMMAND_OUTCOME_DUPLICATE,
	OutcomeNotFound:  vigilv1.CommandOutcome_COMMAND_OUTCOME_NOT_FOUND,
	OutcomeRefused:   vigilv1.CommandOutcome_COMMAND_OUTCOME_REFUSED,
}

// OutcomeToProto converts an outcome.
func OutcomeToProto(o Outcome) vigilv1.CommandOutcome { return outcomeToProto[o] }

// OutcomeFromProto converts an agent's outcome; ErrInvalid for UNSPECIFIED.
func OutcomeFromProto(p vigilv1.CommandOutcome) (Outcome, error) {
	for o, v := range outcomeToProto {
		if v == p {
			return o, nil
		}
	}
	return "", fmt.Errorf("command outcome %v: %w", p, errdefs.ErrInvalid)
}

// ResultFromProto takes an agent's CommandResult apart for RecordResult.
// An outcome this version does not know (from a newer agent) is recorded
// as failed, its name kept in the message, rather than dropped: a dropped
// result would leave the command waiting until it is marked unknown.
// UNSPECIFIED and a missing id are ErrInvalid.
func ResultFromProto(r *vigilv1.CommandResult) (id string, o Outcome, message string, err error) {
	if r.GetCommandId() == "" {
		return "", "", "", fmt.Errorf("command result without a command id: %w", errdefs.ErrInvalid)
	}
	if r.GetOutcome() == vigilv1.CommandOutcome_COMMAND_OUTCOME_UNSPECIFIED {
		return "", "", "", fmt.Errorf("command %s: result without an outcome: %w", clip(r.GetCommandId()), errdefs.ErrInvalid)
	}
	o, err = OutcomeFromProto(r.GetOutcome())
	if err != nil {
		return r.GetCommandId(), OutcomeFailed, join(r.GetOutcome().String(), r.GetMessage()), nil
	}
	return r.GetCommandId(), o, r.GetMessage(), nil
}

// TargetToProto converts a resolved target.
func TargetToProto(t Target) *vigilv1.Target {
	return &vigilv1.Target{Node: t.Node, Namespace: t.Namespace, ContainerId: t.ContainerID, Interface: t.Interface,
		NetnsInode: t.NetnsInode, PodNamespace: t.PodNamespace, Pod: t.Pod, Container: t.Container}
}

// TargetRefFromProto converts what an operator named: a pod's container
// by pod_namespace, pod and container, or a container by namespace and
// container_id; interface for links.
func TargetRefFromProto(t *vigilv1.Target) TargetRef {
	ref := TargetRef{Node: t.GetNode(), Namespace: t.GetNamespace(), Container: t.GetContainerId(), Interface: t.GetInterface()}
	if t.GetPod() != "" {
		ref.PodNamespace, ref.Pod, ref.Container = t.GetPodNamespace(), t.GetPod(), t.GetContainer()
	}
	return ref
}

// FenceToProto converts a fence.
func FenceToProto(f Fence) *vigilv1.Fence {
	return &vigilv1.Fence{ContainerId: f.ContainerID, RestartCount: f.RestartCount, HasRestartCount: f.HasRestartCount, IntentRevision: f.IntentRevision}
}

// CommandToProto converts a command for the node's stream.
func CommandToProto(c Command) *vigilv1.Command {
	return &vigilv1.Command{Id: c.ID, Action: ActionToProto(c.Action), Target: TargetToProto(c.Target), Fence: FenceToProto(c.Fence),
		Deadline: timestamppb.New(c.Deadline), Reason: c.Reason, Signal: c.Signal}
}

// RemediationToProto converts a record for ListRemediations and
// RequestRemediation.
func RemediationToProto(r Remediation) *vigilv1.Remediation {
	p := &vigilv1.Remediation{
		Id: r.ID, Action: ActionToProto(r.Action), Target: TargetToProto(r.Target), Reason: r.Reason,
		AlertFingerprint: r.Fingerprint, State: StateToProto(r.State), Result: r.Result, DryRun: r.DryRun,
		CreatedAt: timestamppb.New(r.CreatedAt), UpdatedAt: timestamppb.New(r.UpdatedAt), Rule: r.Rule,
		RequestedBy: r.RequestedBy, RequestedAction: ActionToProto(r.Requested), Fence: FenceToProto(r.Fence),
		Signal: r.Signal, Escalated: r.Escalated, Message: r.Message,
	}
	if r.Target.Node == "" {
		// Not resolved: show what was asked for.
		p.Target = &vigilv1.Target{Node: r.Ref.Node, Namespace: r.Ref.Namespace, Interface: r.Ref.Interface,
			PodNamespace: r.Ref.PodNamespace, Pod: r.Ref.Pod}
		if r.Ref.Pod != "" {
			p.Target.Container = r.Ref.Container
		} else {
			p.Target.ContainerId = r.Ref.Container
		}
	}
	if !r.AlertStartsAt.IsZero() {
		p.AlertStartsAt = timestamppb.New(r.AlertStartsAt)
	}
	if !r.Deadline.IsZero() {
		p.Deadline = timestamppb.New(r.Deadline)
	}
	return p
}

// RequestFromProto converts RequestRemediation's request; who is the
// caller's identity from its credential.
func RequestFromProto(r *vigilv1.RequestRemediationRequest, who string) (OperatorRequest, error) {
	a, err := ActionFromProto(r.GetAction())
	if err != nil {
		return OperatorRequest{}, err
	}
	req := OperatorRequest{Action: a, Target: TargetRefFromProto(r.GetTarget()), Signal: r.GetSignal(), Reason: r.GetReason(),
		DryRun: r.GetDryRun(), Who: who}
	return req, req.validate()
}

// ListFilterFromProto converts ListRemediations' request.
func ListFilterFromProto(r *vigilv1.ListRemediationsRequest) ListFilter {
	return ListFilter{Node: r.GetNode(), Limit: int(min(r.GetLimit(), MaxListLimit))}
}

var ownerToProto = map[Owner]vigilv1.Manager{
	OwnerUnknown:    vigilv1.Manager_MANAGER_UNSPECIFIED,
	OwnerVigil:      vigilv1.Manager_MANAGER_VIGIL,
	OwnerKubelet:    vigilv1.Manager_MANAGER_KUBELET,
	OwnerDocker:     vigilv1.Manager_MANAGER_DOCKER,
	OwnerContainerd: vigilv1.Manager_MANAGER_CONTAINERD,
}

// OwnerToProto converts an owner.
func OwnerToProto(o Owner) vigilv1.Manager { return ownerToProto[o] }

// OwnerFromProto converts a container's manager; a value this version does
// not know is OwnerUnknown, which the engine treats as another manager's
// (never more than a kill).
func OwnerFromProto(m vigilv1.Manager) Owner {
	for o, v := range ownerToProto {
		if v == m {
			return o
		}
	}
	return OwnerUnknown
}

// ContainerMatches reports whether container c on node is the container
// ref names: by pod namespace, pod and container name when ref names a
// pod, else by containerd id; ref.Namespace, when set, must match too. A
// pod's sandbox never matches. For the aggregator's FleetView.
func ContainerMatches(ref TargetRef, node string, c *vigilv1.Container) bool {
	if node != ref.Node || (ref.Namespace != "" && ref.Namespace != c.GetNamespace()) {
		return false
	}
	if p := c.GetPod(); p.GetSandbox() {
		return false
	}
	if ref.Pod != "" {
		p := c.GetPod()
		return p.GetNamespace() == ref.PodNamespace && p.GetName() == ref.Pod && p.GetContainerName() == ref.Container
	}
	return c.GetId() == ref.Container
}

// ContainerTargetState is what a FleetView answers for container c on node
// (nodeUp: whether the node is up), its health as the agent last reported
// it included. With ref.Interface set, the target is that link in the
// container's network namespace (the host's when the container shares it).
func ContainerTargetState(ref TargetRef, node string, c *vigilv1.Container, nodeUp bool) TargetState {
	st := TargetState{
		Target: Target{Node: node, Namespace: c.GetNamespace(), ContainerID: c.GetId(), PodNamespace: c.GetPod().GetNamespace(),
			Pod: c.GetPod().GetName(), Container: c.GetPod().GetContainerName()},
		Owner: OwnerFromProto(c.GetManager()), RestartCount: c.GetRestartCount(), HasRestartCount: true, NodeUp: nodeUp,
		HealthBlamedOnNode: c.GetHealth().GetStatus() == vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY &&
			c.GetHealth().GetBlame() == vigilv1.HealthBlame_HEALTH_BLAME_NODE_NETWORK,
	}
	if ref.Interface != "" {
		st.Target.Interface = ref.Interface
		if !c.GetHostNetwork() {
			st.Target.NetnsInode = c.GetNetnsInode()
		}
		st.Owner, st.RestartCount, st.HasRestartCount, st.HealthBlamedOnNode = OwnerUnknown, 0, false, false
	}
	return st
}
