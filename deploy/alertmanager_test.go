package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigilhq/vigil/internal/testenv"
	"sigs.k8s.io/yaml"
)

// TestAlertmanagerConfig checks deploy/alertmanager/alertmanager.yml with
// Alertmanager's own tools: amtool check-config, and amtool's routing of a
// remediation alert (to the aggregator and to the people) and of any other
// alert (to the people only). It also checks the settings the remediation
// path depends on.
func TestAlertmanagerConfig(t *testing.T) {
	amtool := testenv.LookPath(t, "amtool")
	root := repoRoot(t)
	const file = "deploy/alertmanager/alertmanager.yml"
	out := runTool(t, root, amtool, "check-config", file)
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("amtool check-config did not say SUCCESS:\n%s", out)
	}
	for labels, want := range map[string]string{
		"alertname=VigilContainerUnhealthy vigil_action=restart_container node=n1": "vigil-remediation,team",
		"alertname=VigilContainerCrashLooping node=n1":                             "team",
	} {
		args := append([]string{"config", "routes", "test", "--config.file", file}, strings.Fields(labels)...)
		if got := strings.TrimSpace(runTool(t, root, amtool, args...)); got != want {
			t.Errorf("alert {%s} routed to %q, want %q", labels, got, want)
		}
	}

	b, err := os.ReadFile(filepath.Join(root, file))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Route struct {
			Routes []struct {
				Receiver  string   `json:"receiver"`
				Matchers  []string `json:"matchers"`
				GroupBy   []string `json:"group_by"`
				GroupWait string   `json:"group_wait"`
			} `json:"routes"`
		} `json:"route"`
		Receivers []struct {
			Name           string `json:"name"`
			WebhookConfigs []struct {
				URL          string `json:"url"`
				SendResolved bool   `json:"send_resolved"`
				HTTPConfig   struct {
					Authorization struct {
						CredentialsFile string `json:"credentials_file"`
					} `json:"authorization"`
				} `json:"http_config"`
			} `json:"webhook_configs"`
		} `json:"receivers"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, r := range cfg.Route.Routes {
		if r.Receiver != "vigil-remediation" {
			continue
		}
		found = true
		if r.GroupWait == "" || r.GroupWait == "30s" {
			t.Errorf("remediation route group_wait %q: want a short one (the default 30s delays every action)", r.GroupWait)
		}
		if strings.Join(r.GroupBy, ",") != "..." {
			t.Errorf("remediation route group_by %v: want [...] (one alert per notification, one target per action)", r.GroupBy)
		}
	}
	if !found {
		t.Error("no route to the vigil-remediation receiver")
	}
	for _, rc := range cfg.Receivers {
		if rc.Name != "vigil-remediation" {
			continue
		}
		if len(rc.WebhookConfigs) != 1 {
			t.Fatalf("vigil-remediation has %d webhook configs, want 1", len(rc.WebhookConfigs))
		}
		w := rc.WebhookConfigs[0]
		if !strings.HasSuffix(w.URL, "/api/v1/alerts") || !strings.HasPrefix(w.URL, "https://") {
			t.Errorf("webhook url %q: want https://.../api/v1/alerts", w.URL)
		}
		if !w.SendResolved {
			t.Error("send_resolved is false: a resolved alert would not cancel its pending action")
		}
		if w.HTTPConfig.Authorization.CredentialsFile == "" {
			t.Error("no authorization.credentials_file: the aggregator's API needs a bearer token")
		}
	}
}
