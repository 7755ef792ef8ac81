package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/vigilhq/vigil/internal/testenv"
	"sigs.k8s.io/yaml"
)

// ruleFile is the shape of a Prometheus rule file, decoded strictly so that
// a misspelt field fails here rather than being ignored.
type ruleFile struct {
	Groups []ruleGroup `json:"groups"`
}

type ruleGroup struct {
	Name     string `json:"name"`
	Interval string `json:"interval,omitempty"`
	Rules    []rule `json:"rules"`
}

type rule struct {
	Record      string            `json:"record,omitempty"`
	Alert       string            `json:"alert,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// ruleTests is the part of a promtool unit-test file this test reads.
type ruleTests struct {
	Tests []struct {
		Name          string `json:"name"`
		AlertRuleTest []struct {
			AlertName string `json:"alertname"`
			ExpAlerts []any  `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	} `json:"tests"`
}

// remediationActions are the actions the aggregator carries out; a
// vigil_action label names one of them.
var remediationActions = map[string]bool{
	"restart_container": true, "stop_container": true, "kill_container": true, "set_link_up": true,
}

func loadRules(t *testing.T) ruleFile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/prometheus/vigil-rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.UnmarshalStrict(b, &rf); err != nil {
		t.Fatalf("vigil-rules.yml: %v", err)
	}
	return rf
}

// TestPromtoolRules checks the rules with Prometheus's own parser and runs
// their unit tests (vigil-rules.test.yml).
func TestPromtoolRules(t *testing.T) {
	promtool := testenv.LookPath(t, "promtool")
	dir := filepath.Join(repoRoot(t), "deploy/prometheus")
	runTool(t, dir, promtool, "check", "rules", "vigil-rules.yml")
	out := runTool(t, dir, promtool, "test", "rules", "vigil-rules.test.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules did not say SUCCESS:\n%s", out)
	}
}

// TestPrometheusConfigs checks the shipped scrape configurations (which load
// the rules) with promtool.
func TestPrometheusConfigs(t *testing.T) {
	promtool := testenv.LookPath(t, "promtool")
	root := repoRoot(t)
	for _, f := range []string{"deploy/prometheus/prometheus.yml", "deploy/prometheus/prometheus-sharded.yml", "deploy/demo/prometheus.yml"} {
		runTool(t, root, promtool, "check", "config", f)
	}
}

var runbookURL = regexp.MustCompile(`^https://github\.com/vigilhq/vigil/blob/main/docs/troubleshooting\.md#([a-z0-9-]+)$`)

// TestAlertsComplete checks what promtool does not: every alert has a
// severity, a summary, a description and a runbook whose anchor exists in
// docs/troubleshooting.md; a vigil_action names an action the aggregator
// knows; every alert has a unit test in which it fires; every series a
// rule reads is one Vigil exposes (or an agreed name being built).
func TestAlertsComplete(t *testing.T) {
	rf := loadRules(t)
	root := repoRoot(t)
	anchors := markdownAnchors(t, filepath.Join(root, "docs/troubleshooting.md"))

	b, err := os.ReadFile(filepath.Join(root, "deploy/prometheus/vigil-rules.test.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var tests ruleTests
	if err := yaml.Unmarshal(b, &tests); err != nil {
		t.Fatalf("vigil-rules.test.yml: %v", err)
	}
	fires := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, at := range tc.AlertRuleTest {
			if len(at.ExpAlerts) > 0 {
				fires[at.AlertName] = true
			}
		}
	}

	known := knownMetrics(t)
	recorded := map[string]bool{}
	alerts := 0
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				recorded[r.Record] = true
			}
		}
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			name := r.Alert + r.Record
			for _, m := range metricNames(r.Expr) {
				if !known[m] && !recorded[m] {
					t.Errorf("%s reads %s, which Vigil does not expose", name, m)
				}
			}
			if r.Alert == "" {
				continue
			}
			alerts++
			switch r.Labels["severity"] {
			case "warning", "critical":
			default:
				t.Errorf("%s: severity %q, want warning or critical", r.Alert, r.Labels["severity"])
			}
			if a, ok := r.Labels["vigil_action"]; ok && !remediationActions[a] {
				t.Errorf("%s: vigil_action %q is not an action the aggregator carries out", r.Alert, a)
			}
			for _, k := range []string{"summary", "description", "runbook_url"} {
				if strings.TrimSpace(r.Annotations[k]) == "" {
					t.Errorf("%s has no %s annotation", r.Alert, k)
				}
			}
			m := runbookURL.FindStringSubmatch(r.Annotations["runbook_url"])
			switch {
			case m == nil:
				t.Errorf("%s: runbook_url %q does not point into docs/troubleshooting.md", r.Alert, r.Annotations["runbook_url"])
			case !anchors[m[1]]:
				t.Errorf("%s: runbook anchor #%s is not a heading of docs/troubleshooting.md", r.Alert, m[1])
			}
			if !fires[r.Alert] {
				t.Errorf("%s has no unit test in vigil-rules.test.yml in which it fires", r.Alert)
			}
		}
	}
	if alerts < 15 {
		t.Errorf("found %d alerts in vigil-rules.yml; the file lost some", alerts)
	}
}

// markdownAnchors returns the anchors GitHub makes of a Markdown file's
// headings: lower case, punctuation dropped, spaces to hyphens.
func markdownAnchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.ToLower(strings.TrimSpace(strings.TrimLeft(line, "#")))
		var s strings.Builder
		for _, r := range h {
			switch {
			case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
				s.WriteRune(r)
			case r == ' ':
				s.WriteRune('-')
			}
		}
		anchors[s.String()] = true
	}
	return anchors
}
