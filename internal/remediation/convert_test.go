package remediation

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/vigilhq/vigil/internal/errdefs"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// Every value of the protocol's enums maps to a domain value and back, and
// every domain value to a protocol value: a value added on either side
// fails here until it is mapped.
func TestConvertEnumsBothWays(t *testing.T) {
	for n, name := range vigilv1.RemediationAction_name {
		p := vigilv1.RemediationAction(n)
		a, err := ActionFromProto(p)
		if p == vigilv1.RemediationAction_REMEDIATION_ACTION_UNSPECIFIED {
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("UNSPECIFIED action: %v", err)
			}
			continue
		}
		if err != nil || ActionToProto(a) != p {
			t.Errorf("action %s: %v, %v", name, a, err)
		}
	}
	for _, a := range Actions {
		if p := ActionToProto(a); p == 0 {
			t.Errorf("action %s has no protocol value", a)
		}
	}
	for n, name := range vigilv1.RemediationState_name {
		p := vigilv1.RemediationState(n)
		s, err := StateFromProto(p)
		if p == vigilv1.RemediationState_REMEDIATION_STATE_UNSPECIFIED {
			if err == nil {
				t.Error("UNSPECIFIED state converted")
			}
			continue
		}
		if err != nil || StateToProto(s) != p {
			t.Errorf("state %s: %v, %v", name, s, err)
		}
	}
	for _, s := range States {
		if StateToProto(s) == 0 {
			t.Errorf("state %s has no protocol value", s)
		}
	}
	for n, name := range vigilv1.CommandOutcome_name {
		p := vigilv1.CommandOutcome(n)
		o, err := OutcomeFromProto(p)
		if p == vigilv1.CommandOutcome_COMMAND_OUTCOME_UNSPECIFIED {
			if err == nil {
				t.Error("UNSPECIFIED outcome converted")
			}
			continue
		}
		if err != nil || OutcomeToProto(o) != p {
			t.Errorf("outcome %s: %v, %v", name, o, err)
		}
	}
	for _, o := range Outcomes {
		if OutcomeToProto(o) == 0 {
			t.Errorf("outcome %s has no protocol value", o)
		}
	}
}

func TestConvertOwners(t *testing.T) {
	for n, name := range vigilv1.Manager_name {
		m := vigilv1.Manager(n)
		if o := OwnerFromProto(m); OwnerToProto(o) != m {
			t.Errorf("manager %s → %q → %v", name, o, OwnerToProto(o))
		}
	}
	for _, o := range Owners {
		if OwnerFromProto(OwnerToProto(o)) != o {
			t.Errorf("owner %q does not come back", o)
		}
	}
	if OwnerFromProto(vigilv1.Manager(99)) != OwnerUnknown {
		t.Error("an unknown manager is not OwnerUnknown")
	}
}

func TestContainerMatches(t *testing.T) {
	pod := &vigilv1.Container{Id: "abc", Namespace: "k8s.io", Manager: vigilv1.Manager_MANAGER_KUBELET, RestartCount: 4, NetnsInode: 77,
		Pod: &vigilv1.PodIdentity{Namespace: "shop", Name: "frontend", ContainerName: "app"}}
	sandbox := &vigilv1.Container{Id: "pause", Namespace: "k8s.io", Pod: &vigilv1.PodIdentity{Namespace: "shop", Name: "frontend", Sandbox: true}}
	plain := &vigilv1.Container{Id: "web", Namespace: "default", Manager: vigilv1.Manager_MANAGER_VIGIL}
	for _, tc := range []struct {
		ref  TargetRef
		c    *vigilv1.Container
		want bool
	}{
		{TargetRef{Node: "n", PodNamespace: "shop", Pod: "frontend", Container: "app"}, pod, true},
		{TargetRef{Node: "n", Namespace: "k8s.io", PodNamespace: "shop", Pod: "frontend", Container: "app"}, pod, true},
		{TargetRef{Node: "n", Namespace: "moby", PodNamespace: "shop", Pod: "frontend", Container: "app"}, pod, false},
		{TargetRef{Node: "m", PodNamespace: "shop", Pod: "frontend", Container: "app"}, pod, false},
		{TargetRef{Node: "n", PodNamespace: "shop", Pod: "frontend", Container: "other"}, pod, false},
		{TargetRef{Node: "n", Namespace: "k8s.io", Container: "abc"}, pod, true},
		{TargetRef{Node: "n", Namespace: "k8s.io", Container: "pause"}, sandbox, false},
		{TargetRef{Node: "n", Namespace: "default", Container: "web"}, plain, true},
		{TargetRef{Node: "n", Container: "web"}, plain, true},
	} {
		if got := ContainerMatches(tc.ref, "n", tc.c); got != tc.want {
			t.Errorf("%s matches %s: %v", tc.ref, tc.c.GetId(), got)
		}
	}
	st := ContainerTargetState(TargetRef{Node: "n", PodNamespace: "shop", Pod: "frontend", Container: "app"}, "n", pod, true)
	if st.Owner != OwnerKubelet || st.RestartCount != 4 || !st.HasRestartCount || st.Target.ContainerID != "abc" || st.Target.Pod != "frontend" || !st.NodeUp {
		t.Errorf("state = %+v", st)
	}
	link := ContainerTargetState(TargetRef{Node: "n", PodNamespace: "shop", Pod: "frontend", Container: "app", Interface: "eth0"}, "n", pod, false)
	if link.Target.Interface != "eth0" || link.Target.NetnsInode != 77 || link.HasRestartCount || link.NodeUp {
		t.Errorf("link state = %+v", link)
	}
	// The agent's blame on its node's network counts with an unhealthy
	// status only, and never for a link.
	ref := TargetRef{Node: "n", PodNamespace: "shop", Pod: "frontend", Container: "app"}
	for _, tc := range []struct {
		status vigilv1.HealthStatus
		blame  vigilv1.HealthBlame
		iface  string
		want   bool
	}{
		{vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY, vigilv1.HealthBlame_HEALTH_BLAME_NODE_NETWORK, "", true},
		{vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY, vigilv1.HealthBlame_HEALTH_BLAME_UNSPECIFIED, "", false},
		{vigilv1.HealthStatus_HEALTH_STATUS_HEALTHY, vigilv1.HealthBlame_HEALTH_BLAME_NODE_NETWORK, "", false},
		{vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY, vigilv1.HealthBlame_HEALTH_BLAME_NODE_NETWORK, "eth0", false},
	} {
		c := proto.Clone(pod).(*vigilv1.Container)
		c.Health = &vigilv1.Health{Status: tc.status, Blame: tc.blame}
		r := ref
		r.Interface = tc.iface
		if got := ContainerTargetState(r, "n", c, true).HealthBlamedOnNode; got != tc.want {
			t.Errorf("%v %v interface %q: blamed on the node %v, want %v", tc.status, tc.blame, tc.iface, got, tc.want)
		}
	}
}

func TestConvertMessages(t *testing.T) {
	dl := time.Date(2026, 12, 2, 12, 2, 0, 0, time.UTC)
	c := Command{ID: "id", Action: ActionKill, Signal: 15, Deadline: dl, Reason: "r",
		Target: Target{Node: "n", Namespace: "k8s.io", ContainerID: "abc", PodNamespace: "shop", Pod: "p", Container: "app"},
		Fence:  Fence{ContainerID: "abc", RestartCount: 3, HasRestartCount: true, IntentRevision: 42}}
	want := &vigilv1.Command{Id: "id", Action: vigilv1.RemediationAction_REMEDIATION_ACTION_KILL, Signal: 15, Reason: "r",
		Target:   &vigilv1.Target{Node: "n", Namespace: "k8s.io", ContainerId: "abc", PodNamespace: "shop", Pod: "p", Container: "app"},
		Fence:    &vigilv1.Fence{ContainerId: "abc", RestartCount: 3, HasRestartCount: true, IntentRevision: 42},
		Deadline: CommandToProto(c).Deadline}
	if got := CommandToProto(c); !proto.Equal(got, want) || !got.GetDeadline().AsTime().Equal(dl) {
		t.Errorf("command = %v", got)
	}
	req, err := RequestFromProto(&vigilv1.RequestRemediationRequest{Action: vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART,
		Target: &vigilv1.Target{Node: "n", PodNamespace: "shop", Pod: "p", Container: "app", ContainerId: "ignored"}, Reason: "why"}, "operator/alice")
	if err != nil || req.Target != (TargetRef{Node: "n", PodNamespace: "shop", Pod: "p", Container: "app"}) || req.Who != "operator/alice" {
		t.Errorf("request = %+v, %v", req, err)
	}
	if _, err := RequestFromProto(&vigilv1.RequestRemediationRequest{Action: vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART,
		Target: &vigilv1.Target{Node: "n", ContainerId: "c"}}, "o"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("a request without a reason: %v", err)
	}
	r := RemediationToProto(Remediation{ID: "x", Action: ActionStop, Requested: ActionRestart, State: StateSuppressed, Result: "target_unknown",
		Ref: TargetRef{Node: "n", Namespace: "default", Container: "gone"}})
	if r.GetTarget().GetContainerId() != "gone" || r.GetRequestedAction() != vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART ||
		r.GetState() != vigilv1.RemediationState_REMEDIATION_STATE_SUPPRESSED || r.GetDeadline() != nil {
		t.Errorf("remediation = %v", r)
	}
	id, o, msg, err := ResultFromProto(&vigilv1.CommandResult{CommandId: "c1", Outcome: vigilv1.CommandOutcome_COMMAND_OUTCOME_FENCED, Message: "m"})
	if id != "c1" || o != OutcomeFenced || msg != "m" || err != nil {
		t.Errorf("result = %s %s %s %v", id, o, msg, err)
	}
	id, o, msg, err = ResultFromProto(&vigilv1.CommandResult{CommandId: "c2", Outcome: vigilv1.CommandOutcome(99), Message: "from a newer agent"})
	if id != "c2" || o != OutcomeFailed || msg != "99; from a newer agent" || err != nil {
		t.Errorf("unknown outcome = %s %s %q %v", id, o, msg, err)
	}
	if _, _, _, err := ResultFromProto(&vigilv1.CommandResult{CommandId: "c3"}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("no outcome: %v", err)
	}
	if f := ListFilterFromProto(&vigilv1.ListRemediationsRequest{Node: "n", Limit: 1 << 30}); f.Limit != MaxListLimit || f.Node != "n" {
		t.Errorf("filter = %+v", f)
	}
}
