package remediation

import (
	"testing"
	"time"
)

func TestExplainExampleRules(t *testing.T) {
	rs, err := LoadRules("../../deploy/remediation/rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	fleet := NewStaticFleet()
	fleet.Put(FleetContainer{Node: "n1", Namespace: "default", ID: "web", Owner: OwnerVigil, RestartCount: 2})
	fleet.Put(FleetContainer{Node: "n1", Namespace: "k8s.io", ID: "f00", PodNamespace: "shop", Pod: "frontend", Name: "app", Owner: OwnerKubelet})
	fleet.Put(FleetContainer{Node: "n1", Namespace: "default", ID: "db", Owner: OwnerVigil, NetnsInode: 4026532001, Interfaces: []string{"eth0"}})
	now := time.Now()
	labels := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	ex := Explain(rs, fleet, []Alert{
		{Labels: labels("alertname", "VigilContainerUnhealthy", "vigil_action", "restart_container", "node", "n1", "namespace", "default", "container", "web")},
		{Labels: labels("alertname", "VigilContainerUnhealthy", "vigil_action", "restart_container", "node", "n1", "namespace", "k8s.io", "pod_namespace", "shop", "pod", "frontend", "container", "app")},
		{Labels: labels("alertname", "MyContainerMemoryNearLimit", "severity", "critical", "node", "n1", "namespace", "default", "container", "web")},
		{Labels: labels("alertname", "VigilContainerLinkDown", "vigil_action", "set_link_up", "node", "n1", "namespace", "default", "container", "db", "interface", "eth0")},
		{Labels: labels("alertname", "VigilContainerUnhealthy", "vigil_action", "restart_container", "node", "n1", "namespace", "kube-system", "container", "dns")},
		{Labels: labels("alertname", "VigilContainerUnhealthy", "vigil_action", "restart_container", "node", "n9", "namespace", "default", "container", "web")},
	}, now)
	want := []struct {
		rule   string
		act    bool
		reason Reason
		action Action
	}{
		{"restart-unhealthy", true, "", ActionRestart},
		{"restart-unhealthy", true, "", ActionKill},       // the kubelet's: a kill
		{"term-leaking", false, ReasonDryRun, ActionKill}, // the rule is a dry run
		{"link-up", true, "", ActionLinkUp},
		{"", false, "", 0}, // kube-system is not matched
		{"restart-unhealthy", false, ReasonTargetUnknown, 0},
	}
	for i, w := range want {
		e := ex[i]
		if e.Rule != w.rule || e.Decision.Act != w.act || e.Decision.Reason != w.reason || (w.action != 0 && e.Decision.Action != w.action) {
			t.Errorf("alert %d: %s %+v, want %+v", i, e.Rule, e.Decision, w)
		}
	}
	if ex[3].Decision.Target.NetnsInode != 4026532001 {
		t.Errorf("link target = %+v", ex[3].Decision.Target)
	}
}
