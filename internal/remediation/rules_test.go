package remediation

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
)

func TestExampleRules(t *testing.T) {
	rs, err := LoadRules("../../deploy/remediation/rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	def := DefaultRules()
	// The example shows every default as it is: keep them in step.
	if rs.DryRun != def.DryRun || rs.MaxActionsPerMinute != def.MaxActionsPerMinute || rs.MaxNodesPercent != def.MaxNodesPercent ||
		rs.StormShare != def.StormShare || rs.StormMinTargets != def.StormMinTargets || rs.StormWindow != def.StormWindow ||
		rs.CommandDeadline != def.CommandDeadline || rs.ResultGrace != def.ResultGrace || rs.Retention != def.Retention ||
		rs.Cooldown != def.Cooldown || rs.MaxPerHour != def.MaxPerHour {
		t.Errorf("the example's settings differ from the defaults:\n%+v\n%+v", rs, def)
	}
	if len(rs.Rules) != 3 {
		t.Fatalf("%d rules", len(rs.Rules))
	}
	r := rs.Match(map[string]string{"alertname": "VigilContainerUnhealthy", "vigil_action": "restart_container", "namespace": "prod-eu", "node": "n1", "container": "web"})
	if r == nil || r.Name != "restart-unhealthy" || r.Action != ActionRestart || r.Escalate == nil || r.Escalate.Action != ActionStop || r.Escalate.After != 3 {
		t.Fatalf("match = %+v", r)
	}
	if rs.Match(map[string]string{"alertname": "VigilContainerUnhealthy", "vigil_action": "restart_container", "namespace": "kube-system"}) != nil {
		t.Error("match_re is not anchored or not applied")
	}
	term := rs.Rules[1]
	if term.Signal != uint32(syscall.SIGTERM) || !term.DryRun || term.Cooldown != DefaultCooldown {
		t.Errorf("term-leaking = %+v", term)
	}
	if ref := rs.Rules[2].Ref(map[string]string{"node": "n", "namespace": "default", "container": "db", "interface": "eth0"}); ref != (TargetRef{Node: "n", Namespace: "default", Container: "db", Interface: "eth0"}) {
		t.Errorf("ref = %+v", ref)
	}
	if got := rs.MaxNodes(25); got != 3 {
		t.Errorf("10%% of 25 nodes = %d, want 3 (rounded up)", got)
	}
	if got := rs.MaxNodes(0); got != 1 {
		t.Errorf("10%% of no nodes = %d, want at least 1", got)
	}
}

const okRule = `
rules:
  - name: r
    match: {alertname: A}
    action: restart_container
    target: {node: node, namespace: namespace, container: container}
`

func TestParseRulesSettings(t *testing.T) {
	rs, err := ParseRules([]byte(`
max_actions_per_minute: 0
max_nodes_in_flight: 2
storm_guard: {share: 0}
defaults: {cooldown: 0s, max_per_hour: 5}
`+okRule), "x.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if rs.MaxActionsPerMinute != 0 || rs.MaxNodes(100) != 2 || rs.StormShare != 0 || rs.Cooldown != 0 || rs.Rules[0].Cooldown != 0 || rs.Rules[0].MaxPerHour != 5 {
		t.Errorf("explicit zeros turn limits off, got %+v", rs)
	}
	if rs.Rules[0].Signal != 9 {
		t.Errorf("signal default = %d", rs.Rules[0].Signal)
	}
	rs, err = ParseRules([]byte("storm_guard: {share: 0.5}\nrules: []\n"), "x.yaml")
	if err != nil || rs.StormShare != 0.5 || rs.StormWindow != DefaultStormWindow || rs.CommandDeadline != 2*time.Minute {
		t.Errorf("%v %+v", err, rs)
	}
}

func TestParseRulesErrors(t *testing.T) {
	for _, tc := range []struct{ name, file, want string }{
		{"empty", ``, "empty file"},
		{"not yaml", "rules: [", "x.yaml: line 1"},
		{"no rules", "dry_run: true\n", `x.yaml:1:1: no "rules"`},
		{"unknown top key", "dryrun: true\nrules: []\n", `x.yaml:1:1: the file: unknown key "dryrun"`},
		{"dry_run not bool", "dry_run: yes please\nrules: []\n", `x.yaml:1:10: dry_run must be true or false`},
		{"negative budget", "max_actions_per_minute: -1\nrules: []\n", `x.yaml:1:25: max_actions_per_minute must be between 0`},
		{"bad percentage", "max_nodes_in_flight: 150%\nrules: []\n", `x.yaml:1:22: max_nodes_in_flight must be`},
		{"bad share", "storm_guard: {share: 2}\nrules: []\n", `storm_guard.share must be a share`},
		{"bad duration", "retention: forever\nrules: []\n", `x.yaml:1:12: retention must be a Go duration`},
		{"rules not list", "rules: {}\n", `x.yaml:1:8: rules must be a list`},
		{"rule unknown key", "rules:\n  - name: r\n    acton: restart_container\n", `x.yaml:3:5: rule "r": unknown key "acton"`},
		{"rule no name", "rules:\n  - action: restart_container\n", `x.yaml:2:5: rules[0] has no name`},
		{"rule bad name", "rules:\n  - name: 'a b'\n", `rules[0].name "a b" must be`},
		{"no match", "rules:\n  - name: r\n    action: restart_container\n", `x.yaml:2:5: rule "r" has no match or match_re`},
		{"bad regex", "rules:\n  - name: r\n    match_re: {namespace: 'prod-(.*'}\n", `x.yaml:3:27: rule "r": match_re.namespace: bad regular expression "prod-(.*": missing closing )`},
		{"unknown action", "rules:\n  - name: r\n    match: {a: b}\n    action: reboot_node\n", `x.yaml:4:13: rule "r": action: unknown action "reboot_node"`},
		{"no target", "rules:\n  - name: r\n    match: {a: b}\n    action: stop_container\n", `rule "r" has no target`},
		{"target no container", "rules:\n  - name: r\n    match: {a: b}\n    action: stop_container\n    target: {node: node, namespace: namespace}\n", `x.yaml:5:13: rule "r": target has no container`},
		{"target no node", "rules:\n  - name: r\n    match: {a: b}\n    action: stop_container\n    target: {namespace: ns, container: c}\n", `target has no node`},
		{"link no interface", "rules:\n  - name: r\n    match: {a: b}\n    action: set_link_up\n    target: {node: node}\n", `target has no interface (the alert label naming the interface) for set_link_up`},
		{"target unknown key", "rules:\n  - name: r\n    match: {a: b}\n    action: set_link_up\n    target: {node: node, iface: x}\n", `x.yaml:5:26: rule "r": target: unknown key "iface"`},
		{"pod without pod_namespace", "rules:\n  - name: r\n    match: {a: b}\n    action: stop_container\n    target: {node: n, pod: p, container: c}\n", `pod and pod_namespace together`},
		{"signal on restart", "rules:\n  - name: r\n    match: {a: b}\n    action: restart_container\n    signal: SIGTERM\n", `x.yaml:5:13: rule "r": signal is only for kill_container`},
		{"unknown signal", "rules:\n  - name: r\n    match: {a: b}\n    action: kill_container\n    signal: SIGFOO\n", `unknown signal "SIGFOO"`},
		{"escalate never", okRule + "    max_per_hour: 2\n    escalate: {after: 3, action: stop_container}\n", `x.yaml:8:23: rule "r": escalate.after 3 is over max_per_hour 2`},
		{"escalate to link", okRule + "    escalate: {after: 1, action: set_link_up}\n", `escalate.action set_link_up does not act on the same kind of target`},
		{"duplicate name", okRule + "  - name: r\n    match: {a: b}\n    action: stop_container\n    target: {node: n, namespace: ns, container: c}\n", `x.yaml:7:5: rule "r": name already used by the rule at line 3`},
		{"duplicate key", "rules: []\nrules: []\n", `"rules" given twice`},
		{"alias", "a: &x {node: n}\nrules: []\n", `unknown key "a"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRules([]byte(tc.file), "x.yaml")
			if err == nil {
				t.Fatalf("no error")
			}
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("%v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q\ndoes not say %q", err, tc.want)
			}
		})
	}
}

func TestRuleSetReloadKeepsOldRules(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, []byte(okRule), 0o644); err != nil {
		t.Fatal(err)
	}
	set, err := NewRuleSet(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("rules:\n  - name: r\n    match: {a: b}\n    action: reboot\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err = set.Reload()
	if err == nil || !strings.Contains(err.Error(), "rules.yaml:4:13") || !strings.Contains(err.Error(), "keeping the 1 rules loaded from") {
		t.Fatalf("reload of a bad file: %v", err)
	}
	if got := set.Current(); len(got.Rules) != 1 || got.Rules[0].Action != ActionRestart {
		t.Fatalf("the old rules are gone: %+v", got)
	}
	if err := os.WriteFile(path, []byte(strings.Replace(okRule, "restart_container", "stop_container", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := set.Reload(); err != nil {
		t.Fatal(err)
	}
	if set.Current().Rules[0].Action != ActionStop {
		t.Fatal("the new rules are not in force")
	}
}

func FuzzParseRules(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := ParseRules(data, "fuzz.yaml")
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("%v does not wrap ErrInvalid", err)
			}
			return
		}
		for _, r := range rs.Rules {
			if r.Name == "" || r.Target.Node == "" || len(r.Match)+len(r.MatchRE) == 0 {
				t.Fatalf("accepted rule %+v", r)
			}
			if _, err := ParseAction(r.Action.String()); err != nil {
				t.Fatalf("accepted action %v", r.Action)
			}
			_ = r.Matches(map[string]string{"alertname": "x"})
		}
	})
}
