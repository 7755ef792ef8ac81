package remediation

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
)

func TestDecide(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	rules := func(mut func(*Rules)) *Rules {
		rs := DefaultRules()
		rs.StormMinTargets = 3
		if mut != nil {
			mut(rs)
		}
		return rs
	}
	rule := func(mut func(*Rule)) *Rule {
		r := &Rule{Name: "r", Action: ActionRestart, Cooldown: 10 * time.Minute, MaxPerHour: 3, Signal: 9,
			Match: map[string]string{"alertname": "A"}}
		if mut != nil {
			mut(r)
		}
		return r
	}
	web := TargetState{Target: Target{Node: "n1", Namespace: "default", ContainerID: "web"}, Owner: OwnerVigil,
		RestartCount: 4, HasRestartCount: true, NodeUp: true}
	base := func() Input {
		return Input{Now: now, Rules: rules(nil), Rule: rule(nil), Action: ActionRestart, Signal: 9,
			Ref: TargetRef{Node: "n1", Namespace: "default", Container: "web"}, State: web,
			Fleet: FleetSize{Nodes: 10, Targets: 100}, FiringTargets: 1}
	}
	type want struct {
		act     bool
		reason  Reason
		action  Action
		signal  uint32
		claim   bool
		esc     bool
		message string
	}
	for _, tc := range []struct {
		name string
		mut  func(*Input)
		want want
	}{
		{"acts", nil, want{act: true, action: ActionRestart, claim: true}},
		{"unknown target", func(in *Input) { in.LookupErr = fmt.Errorf("no container web: %w", errdefs.ErrNotFound) },
			want{reason: ReasonTargetUnknown, message: "no container web"}},
		{"ambiguous target", func(in *Input) { in.LookupErr = fmt.Errorf("two pods: %w", errdefs.ErrInvalid) },
			want{reason: ReasonTargetUnknown}},
		{"node down", func(in *Input) { in.State.NodeUp = false }, want{reason: ReasonNodeDown, message: "node n1 is down"}},
		{"container replaced since the alert", func(in *Input) { in.AlertContainerID = "web-old" },
			want{reason: ReasonFenced, claim: true, message: "the alert saw container web-old"}},
		{"same container as the alert", func(in *Input) { in.AlertContainerID = "web" }, want{act: true, action: ActionRestart, claim: true}},
		{"kubelet's container: restart is a kill", func(in *Input) { in.State.Owner = OwnerKubelet },
			want{act: true, action: ActionKill, signal: 9, claim: true, message: "kubelet owns the container: kill it"}},
		{"dockerd's container: kill keeps its signal", func(in *Input) {
			in.State.Owner, in.Action, in.Signal = OwnerDocker, ActionKill, 15
		}, want{act: true, action: ActionKill, signal: 15, claim: true}},
		{"unknown owner: restart is a kill", func(in *Input) { in.State.Owner = OwnerUnknown },
			want{act: true, action: ActionKill, signal: 9, claim: true, message: "another manager owns"}},
		{"stop of the kubelet's container fights its owner", func(in *Input) { in.State.Owner, in.Action = OwnerKubelet, ActionStop },
			want{reason: ReasonOwner, claim: true}},
		{"stop of ours", func(in *Input) { in.Action = ActionStop }, want{act: true, action: ActionStop, claim: true}},
		{"start of ours", func(in *Input) { in.Action = ActionStart }, want{act: true, action: ActionStart, claim: true}},
		{"start of dockerd's container fights its owner", func(in *Input) { in.State.Owner, in.Action = OwnerDocker, ActionStart },
			want{reason: ReasonOwner, claim: true, message: "start_container would fight its owner"}},
		{"storm", func(in *Input) { in.FiringTargets = 21 }, want{reason: ReasonStorm, message: "21 of 100 targets"}},
		{"storm threshold not passed", func(in *Input) { in.FiringTargets = 20 }, want{act: true, action: ActionRestart, claim: true}},
		{"storm below min targets", func(in *Input) { in.FiringTargets, in.Fleet.Targets = 2, 4 }, want{act: true, action: ActionRestart, claim: true}},
		{"storm guard off", func(in *Input) { in.FiringTargets, in.Rules = 90, rules(func(r *Rules) { r.StormShare = 0 }) },
			want{act: true, action: ActionRestart, claim: true}},
		{"operators pass the storm guard", func(in *Input) { in.FiringTargets, in.Rule = 90, nil }, want{act: true, action: ActionRestart, claim: true}},
		{"cooldown", func(in *Input) { in.Budget.Target.Times = []time.Time{ago(5 * time.Minute)} },
			want{reason: ReasonCooldown, message: "cooldown 10m0s until 2026-12-02T12:05:00Z"}},
		{"cooldown over", func(in *Input) { in.Budget.Target.Times = []time.Time{ago(10 * time.Minute)} },
			want{act: true, action: ActionRestart, claim: true}},
		{"an operator passes the target's cooldown", func(in *Input) {
			in.Rule, in.Rules = nil, rules(func(r *Rules) { r.Cooldown = time.Hour })
			in.Budget.Target.Times = []time.Time{ago(30 * time.Minute)}
		}, want{act: true, action: ActionRestart, claim: true}},
		{"an operator passes the target's hourly maximum and its escalation", func(in *Input) {
			in.Rule = nil
			in.Budget.Target.Times = []time.Time{ago(50 * time.Minute), ago(40 * time.Minute), ago(30 * time.Minute)}
			in.Budget.Target.EscalatedAt = ago(10 * time.Minute)
		}, want{act: true, action: ActionRestart, claim: true}},
		{"an operator is held by the fleet's budget", func(in *Input) {
			in.Rule, in.Rules = nil, rules(func(r *Rules) { r.MaxActionsPerMinute = 2 })
			in.Budget.FleetTimes = []time.Time{ago(10 * time.Second), ago(20 * time.Second)}
		}, want{reason: ReasonBudget, message: "max_actions_per_minute 2"}},
		{"max per hour", func(in *Input) {
			in.Budget.Target.Times = []time.Time{ago(50 * time.Minute), ago(40 * time.Minute), ago(30 * time.Minute)}
		}, want{reason: ReasonBudget, message: "3 actions within the hour (max_per_hour 3)"}},
		{"older than an hour do not count", func(in *Input) {
			in.Budget.Target.Times = []time.Time{ago(3 * time.Hour), ago(2 * time.Hour), ago(61 * time.Minute)}
		}, want{act: true, action: ActionRestart, claim: true}},
		{"escalation", func(in *Input) {
			in.Rule = rule(func(r *Rule) { r.Escalate = &Escalation{After: 2, Action: ActionStop} })
			in.Budget.Target.Times = []time.Time{ago(50 * time.Minute), ago(30 * time.Minute)}
		}, want{act: true, action: ActionStop, claim: true, esc: true, message: "escalated from restart_container to stop_container"}},
		{"escalation at max per hour wins", func(in *Input) {
			in.Rule = rule(func(r *Rule) { r.Escalate = &Escalation{After: 3, Action: ActionKill, Signal: 15} })
			in.Budget.Target.Times = []time.Time{ago(50 * time.Minute), ago(40 * time.Minute), ago(30 * time.Minute)}
		}, want{act: true, action: ActionKill, signal: 15, claim: true, esc: true}},
		{"escalated target is left to a human", func(in *Input) {
			in.Rule = rule(func(r *Rule) { r.Escalate = &Escalation{After: 2, Action: ActionStop} })
			in.Budget.Target.EscalatedAt = ago(20 * time.Minute)
		}, want{reason: ReasonEscalated, message: "left to a human until 2026-12-02T12:40:00Z"}},
		{"escalation to stop of an owned container", func(in *Input) {
			in.State.Owner = OwnerKubelet
			in.Rule = rule(func(r *Rule) { r.Escalate = &Escalation{After: 1, Action: ActionStop} })
			in.Budget.Target.Times = []time.Time{ago(30 * time.Minute)}
		}, want{reason: ReasonOwner, claim: true, message: "escalation to stop_container"}},
		{"fleet budget", func(in *Input) {
			in.Rules = rules(func(r *Rules) { r.MaxActionsPerMinute = 2 })
			in.Budget.FleetTimes = []time.Time{ago(50 * time.Second), ago(10 * time.Second)}
		}, want{reason: ReasonBudget, message: "2 actions across the fleet within the minute (max_actions_per_minute 2)"}},
		{"fleet budget sliding", func(in *Input) {
			in.Rules = rules(func(r *Rules) { r.MaxActionsPerMinute = 2 })
			in.Budget.FleetTimes = []time.Time{ago(70 * time.Second), ago(10 * time.Second)}
		}, want{act: true, action: ActionRestart, claim: true}},
		{"fleet budget off", func(in *Input) {
			in.Rules = rules(func(r *Rules) { r.MaxActionsPerMinute = 0 })
			in.Budget.FleetTimes = make([]time.Time, 50)
			for i := range in.Budget.FleetTimes {
				in.Budget.FleetTimes[i] = ago(time.Second)
			}
		}, want{act: true, action: ActionRestart, claim: true}},
		{"nodes in flight", func(in *Input) {
			in.Budget.InFlight = map[string]map[string]time.Time{"n2": {"c1": now.Add(time.Minute)}}
		}, want{reason: ReasonBudget, message: "1 nodes have commands in flight (max_nodes_in_flight 1 of 10 nodes)"}},
		{"the same node again", func(in *Input) {
			in.Budget.InFlight = map[string]map[string]time.Time{"n1": {"c1": now.Add(time.Minute)}}
		}, want{act: true, action: ActionRestart, claim: true}},
		{"in flight entries past their time do not count", func(in *Input) {
			in.Budget.InFlight = map[string]map[string]time.Time{"n2": {"c1": ago(time.Second)}}
		}, want{act: true, action: ActionRestart, claim: true}},
		{"nodes as a count", func(in *Input) {
			in.Rules = rules(func(r *Rules) { r.MaxNodesPercent, r.MaxNodesInFlight = 0, 2 })
			in.Budget.InFlight = map[string]map[string]time.Time{"n2": {"c1": now.Add(time.Minute)}}
		}, want{act: true, action: ActionRestart, claim: true}},
		{"dry run in the file", func(in *Input) { in.Rules = rules(func(r *Rules) { r.DryRun = true }) },
			want{reason: ReasonDryRun, action: ActionRestart, claim: true, message: "dry run (dry_run in the rules file): would restart_container n1/default/web"}},
		{"dry run of the rule", func(in *Input) { in.Rule.DryRun = true }, want{reason: ReasonDryRun, action: ActionRestart, claim: true}},
		{"dry run asked for", func(in *Input) { in.Rule, in.DryRun = nil, true }, want{reason: ReasonDryRun, action: ActionRestart, claim: true}},
		{"dry run still sees budgets", func(in *Input) {
			in.Rule.DryRun = true
			in.Budget.Target.Times = []time.Time{ago(time.Minute)}
		}, want{reason: ReasonCooldown}},
		{"host link not allowed", func(in *Input) {
			in.Action = ActionLinkUp
			in.State = TargetState{Target: Target{Node: "n1", Interface: "eth0"}, NodeUp: true}
		}, want{reason: ReasonTargetUnknown, message: "does not allow host links"}},
		{"host link allowed", func(in *Input) {
			in.Action, in.Rule.AllowHostLink = ActionLinkUp, true
			in.State = TargetState{Target: Target{Node: "n1", Interface: "eth0"}, NodeUp: true}
		}, want{act: true, action: ActionLinkUp, claim: true}},
		// The agent blamed the container's failing probe on its node's
		// network (the gossip cross-check): an alert's action that ends its
		// task is held, not claimed (the next delivery after the blame goes
		// acts). TestRemediationRefusesHealthBlamedOnNode, end to end.
		{"health blamed on the node's network: an alert's restart is held", func(in *Input) { in.State.HealthBlamedOnNode = true },
			want{reason: ReasonNodeNetwork, message: "node n1's network is broken, not the container"}},
		{"health blamed on the node's network: a kill too", func(in *Input) {
			in.State.HealthBlamedOnNode, in.Action, in.Signal = true, ActionKill, 15
		}, want{reason: ReasonNodeNetwork, message: "kill_container would not help"}},
		{"health blamed on the node's network: a stop too", func(in *Input) { in.State.HealthBlamedOnNode, in.Action = true, ActionStop },
			want{reason: ReasonNodeNetwork}},
		{"health blamed on the node's network: the kubelet's container too (a restart is a kill)", func(in *Input) {
			in.State.HealthBlamedOnNode, in.State.Owner = true, OwnerKubelet
		}, want{reason: ReasonNodeNetwork}},
		{"health blamed on the node's network: before a dry run, which shows it", func(in *Input) {
			in.State.HealthBlamedOnNode, in.Rule.DryRun = true, true
		}, want{reason: ReasonNodeNetwork}},
		{"health blamed on the node's network: before the rule's escalation", func(in *Input) {
			in.State.HealthBlamedOnNode = true
			in.Rule = rule(func(r *Rule) { r.Escalate = &Escalation{After: 1, Action: ActionStop} })
			in.Budget.Target.Times = []time.Time{ago(30 * time.Minute)}
		}, want{reason: ReasonNodeNetwork}},
		{"health blamed on the node's network: a fenced alert is still fenced (claimed)", func(in *Input) {
			in.State.HealthBlamedOnNode, in.AlertContainerID = true, "web-old"
		}, want{reason: ReasonFenced, claim: true}},
		{"health blamed on the node's network: a start ends no task", func(in *Input) { in.State.HealthBlamedOnNode, in.Action = true, ActionStart },
			want{act: true, action: ActionStart, claim: true}},
		{"health blamed on the node's network: an operator's restart acts, noted", func(in *Input) { in.State.HealthBlamedOnNode, in.Rule = true, nil },
			want{act: true, action: ActionRestart, claim: true, message: "note: its agent blames the failing probe on node n1's network"}},
		{"container link", func(in *Input) {
			in.Action = ActionLinkUp
			in.State = TargetState{Target: Target{Node: "n1", Namespace: "default", ContainerID: "web", Interface: "eth0", NetnsInode: 4026532000}, NodeUp: true}
		}, want{act: true, action: ActionLinkUp, claim: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := base()
			if tc.mut != nil {
				tc.mut(&in)
			}
			d := Decide(in)
			if d.Act != tc.want.act || d.Reason != tc.want.reason || d.Claim != tc.want.claim || d.Escalated != tc.want.esc {
				t.Fatalf("decision = %+v, want %+v", d, tc.want)
			}
			if d.Act && d.Charge != true || !d.Act && d.Charge {
				t.Errorf("charge = %v for act = %v", d.Charge, d.Act)
			}
			if tc.want.action != 0 && (d.Action != tc.want.action || d.Signal != tc.want.signal) {
				t.Errorf("action = %v signal %d, want %v signal %d", d.Action, d.Signal, tc.want.action, tc.want.signal)
			}
			if !strings.Contains(d.Message, tc.want.message) {
				t.Errorf("message %q does not say %q", d.Message, tc.want.message)
			}
			if d.Act && d.Action.onContainer() && d.Fence != (Fence{ContainerID: "web", RestartCount: 4, HasRestartCount: true}) {
				t.Errorf("fence = %+v", d.Fence)
			}
		})
	}
}

func TestBudgetCharge(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	b := Budget{
		FleetTimes: []time.Time{now.Add(-2 * time.Minute), now.Add(-30 * time.Second)},
		InFlight:   map[string]map[string]time.Time{"old": {"x": now.Add(-time.Second)}, "n1": {"a": now.Add(time.Minute)}},
		Target:     TargetBudget{Times: []time.Time{now.Add(-2 * time.Hour), now.Add(-20 * time.Minute)}},
	}
	d := Decision{Act: true, Charge: true, Escalated: true, Target: Target{Node: "n1"}}
	got := b.Charge(d, now, "b", now.Add(3*time.Minute))
	if len(got.FleetTimes) != 2 || !got.FleetTimes[1].Equal(now) {
		t.Errorf("fleet times = %v (the old one dropped, now added)", got.FleetTimes)
	}
	if len(got.InFlight) != 1 || len(got.InFlight["n1"]) != 2 {
		t.Errorf("in flight = %v", got.InFlight)
	}
	if len(got.Target.Times) != 2 || !got.Target.EscalatedAt.Equal(now) {
		t.Errorf("target = %+v", got.Target)
	}
	if len(b.InFlight["old"]) != 1 {
		t.Error("Charge changed its receiver's map")
	}
	rel := release(got.InFlight, "n1", "a", now)
	rel = release(rel, "n1", "b", now)
	if len(rel) != 0 {
		t.Errorf("released = %v", rel)
	}
}
