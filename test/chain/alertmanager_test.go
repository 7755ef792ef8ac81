package chain

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestDemoAlertmanagerRoute: the demo's Alertmanager routes as the shipped
// configuration does (the demo shows what users deploy); only the
// webhook's address and credentials differ.
func TestDemoAlertmanagerRoute(t *testing.T) {
	read := func(path string) map[string]any {
		b, err := os.ReadFile(filepath.Join("..", "..", path))
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := yaml.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		return m
	}
	shipped, demo := read("deploy/alertmanager/alertmanager.yml"), read("deploy/demo/alertmanager.yml")
	if !reflect.DeepEqual(shipped["route"], demo["route"]) {
		t.Errorf("the demo's route differs from the shipped one:\nshipped %v\ndemo    %v", shipped["route"], demo["route"])
	}
	webhook := func(m map[string]any) map[string]any {
		for _, r := range m["receivers"].([]any) {
			r := r.(map[string]any)
			if r["name"] == "vigil-remediation" {
				w := r["webhook_configs"].([]any)[0].(map[string]any)
				delete(w, "url")
				delete(w, "http_config")
				return w
			}
		}
		t.Fatal("no vigil-remediation receiver")
		return nil
	}
	if s, d := webhook(shipped), webhook(demo); !reflect.DeepEqual(s, d) {
		t.Errorf("the demo's webhook settings differ from the shipped ones:\nshipped %v\ndemo    %v", s, d)
	}

	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "demo", "alertmanager.yml"))
	if err != nil {
		t.Fatal(err)
	}
	conf, err := RenderAlertmanagerConfig(string(b), "127.0.0.1:9")
	if err != nil || !strings.Contains(conf, "http://127.0.0.1:9/api/v1/alerts") {
		t.Errorf("RenderAlertmanagerConfig: %v\n%s", err, conf)
	}
}

func TestRenderAlerting(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "demo", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	on, err := renderAlerting(string(b), "127.0.0.1:9")
	if err != nil || !strings.Contains(on, "'127.0.0.1:9'") || strings.Contains(on, demoAlertmanager) {
		t.Errorf("with an Alertmanager: %v\n%s", err, on)
	}
	off, err := renderAlerting(string(b), "")
	if err != nil || strings.Contains(off, "alertmanagers") {
		t.Errorf("without one: %v\n%s", err, off)
	}
}
