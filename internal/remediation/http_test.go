package remediation

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func post(t *testing.T, h http.Handler, method, body string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(method, "/api/v1/alerts", strings.NewReader(body))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	b, _ := io.ReadAll(rec.Body)
	return rec.Code, string(b)
}

func TestAlertsHandler(t *testing.T) {
	h := newHarness(t, "")
	h.container("node-a", "web-1", OwnerVigil, 0)
	h.fleet.Put(FleetContainer{Node: "node-a", Namespace: "k8s.io", ID: "f00", PodNamespace: "shop", Pod: "frontend-7d9f", Name: "frontend", Owner: OwnerKubelet})
	handler := h.e.AlertsHandler()
	// A real Alertmanager 0.25 payload; its alertname is the test rule's
	// once renamed.
	raw, err := os.ReadFile("testdata/alertmanager-0.25-0.json")
	if err != nil {
		t.Fatal(err)
	}
	body := strings.ReplaceAll(string(raw), "VigilContainerUnhealthy", "Unhealthy")
	code, resp := post(t, handler, http.MethodPost, body)
	if code != http.StatusOK {
		t.Fatalf("%d %s", code, resp)
	}
	var sum Summary
	if err := json.Unmarshal([]byte(resp), &sum); err != nil || sum.Alerts != 2 || sum.Acted != 2 {
		t.Fatalf("summary %s (%v)", resp, err)
	}
	if code, _ := post(t, handler, http.MethodPost, body); code != http.StatusOK {
		t.Fatalf("a repeat: %d", code)
	}
	if len(h.outbox()) != 2 {
		t.Fatalf("outbox = %+v", h.outbox())
	}
	for _, tc := range []struct {
		method, body string
		code         int
		want         string
	}{
		{http.MethodPost, `{"version":"3","groupKey":"g","status":"firing","alerts":[]}`, 400, `version \"3\" is not supported`},
		{http.MethodPost, `not json`, 400, "malformed JSON at byte 2"},
		{http.MethodPost, `[{"version":"4"}]`, 400, "the payload is a JSON array, want an object (Alertmanager webhook v4)"},
		{http.MethodPost, `{"version":"4","groupKey":"g","status":"firing","receiver":"` + strings.Repeat("x", MaxWebhookBytes) + `","alerts":[]}`, 413, "1 MiB"},
		{http.MethodGet, ``, 405, "POST"},
	} {
		code, resp := post(t, handler, tc.method, tc.body)
		if code != tc.code || !strings.Contains(resp, tc.want) {
			t.Errorf("%s %.40q: %d %s, want %d %q", tc.method, tc.body, code, resp, tc.code, tc.want)
		}
	}
	// Nothing of the refused bodies was journaled: 2 webhooks × 2 alerts,
	// each an alert line and a decision or duplicate line.
	if n := len(h.journal("")); n != 8 {
		t.Errorf("%d journal entries, want 8", n)
	}
	// The journal cannot be written: 503, for Alertmanager to retry.
	h.st.Close()
	code, resp = post(t, handler, http.MethodPost, strings.ReplaceAll(body, "8ed93102b093bc39", "other"))
	if code != http.StatusServiceUnavailable || !strings.Contains(resp, "cannot be written") {
		t.Errorf("closed store: %d %s", code, resp)
	}
	want := `
# HELP vigil_remediation_webhook_requests_total Alertmanager webhook requests to /api/v1/alerts, by HTTP status code answered.
# TYPE vigil_remediation_webhook_requests_total counter
vigil_remediation_webhook_requests_total{code="200"} 2
vigil_remediation_webhook_requests_total{code="400"} 3
vigil_remediation_webhook_requests_total{code="405"} 1
vigil_remediation_webhook_requests_total{code="413"} 1
vigil_remediation_webhook_requests_total{code="503"} 1
`
	if err := testutil.CollectAndCompare(h.e.m.webhook, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

// TestRemediationsHandlerEmpty: an empty journal, or a node with nothing in
// it, is {"remediations":[]}, never null.
func TestRemediationsHandlerEmpty(t *testing.T) {
	h := newHarness(t, "")
	h.container("n1", "web", OwnerVigil, 0)
	h.receive(alert("Unhealthy", "n1", "web", h.clock.Now()))
	empty := newHarness(t, "")
	for _, tc := range []struct {
		e *Engine
		q string
	}{{empty.e, ""}, {h.e, "?node=n2"}} {
		rec := httptest.NewRecorder()
		tc.e.RemediationsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v1/remediations"+tc.q, nil))
		if got := strings.TrimSpace(rec.Body.String()); rec.Code != 200 || got != `{"remediations":[]}` {
			t.Errorf("GET /api/v1/remediations%s: %d %s, want {\"remediations\":[]}", tc.q, rec.Code, got)
		}
	}
}

func TestRemediationsHandler(t *testing.T) {
	h := newHarness(t, "")
	for _, n := range []string{"n1", "n2"} {
		h.container(n, "web", OwnerVigil, 0)
	}
	h.receive(alert("Unhealthy", "n1", "web", h.clock.Now()))
	h.clock.Advance(time.Second)
	h.receive(alert("Unhealthy", "n2", "web", h.clock.Now()))
	get := func(q string) (int, []Remediation, string) {
		rec := httptest.NewRecorder()
		h.e.RemediationsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v1/remediations"+q, nil))
		var body struct{ Remediations []Remediation }
		_ = json.Unmarshal(rec.Body.Bytes(), &body)
		return rec.Code, body.Remediations, rec.Body.String()
	}
	code, list, _ := get("")
	if code != 200 || len(list) != 2 || list[0].Target.Node != "n2" || list[0].Fence.IntentRevision <= list[1].Fence.IntentRevision {
		t.Fatalf("%d %+v: want newest first", code, list)
	}
	if _, list, _ := get("?node=n1"); len(list) != 1 || list[0].Target.Node != "n1" {
		t.Errorf("node filter: %+v", list)
	}
	if _, list, _ := get("?limit=1"); len(list) != 1 || list[0].Target.Node != "n2" {
		t.Errorf("limit: %+v", list)
	}
	for _, q := range []string{"?limit=0", "?limit=x", "?nod=n1"} {
		if code, _, body := get(q); code != 400 || !strings.Contains(body, "error") {
			t.Errorf("%s: %d %s", q, code, body)
		}
	}
	_ = context.Background()
}

// Golden exposition of the engine's metrics after a known history.
func TestMetricsGolden(t *testing.T) {
	h := newHarness(t, "")
	h.container("n1", "a", OwnerVigil, 0)
	h.container("n1", "b", OwnerVigil, 0)
	h.container("n1", "leaky", OwnerVigil, 0)
	ctx := context.Background()
	a := alert("Unhealthy", "n1", "a", h.clock.Now())
	s := h.receive(a, alert("Unhealthy", "n1", "b", h.clock.Now()), alert("Leaking", "n1", "leaky", h.clock.Now()), alert("Unhealthy", "n1", "gone", h.clock.Now()))
	h.receive(a)
	cmd, err := h.e.Dispatch(ctx, "n1", s.IDs[0])
	if err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(62500 * time.Microsecond) // exact in binary: a golden sum
	if err := h.e.RecordResult(ctx, cmd.ID, OutcomeSucceeded, ""); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(DefaultCommandDeadline)
	if _, err := h.e.Expire(ctx); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP vigil_remediation_duration_seconds From the webhook (or request) received to the command's result recorded.
# TYPE vigil_remediation_duration_seconds histogram
vigil_remediation_duration_seconds_bucket{le="0.005"} 0
vigil_remediation_duration_seconds_bucket{le="0.01"} 0
vigil_remediation_duration_seconds_bucket{le="0.025"} 0
vigil_remediation_duration_seconds_bucket{le="0.05"} 0
vigil_remediation_duration_seconds_bucket{le="0.1"} 1
vigil_remediation_duration_seconds_bucket{le="0.25"} 1
vigil_remediation_duration_seconds_bucket{le="0.5"} 1
vigil_remediation_duration_seconds_bucket{le="1"} 1
vigil_remediation_duration_seconds_bucket{le="2.5"} 1
vigil_remediation_duration_seconds_bucket{le="5"} 1
vigil_remediation_duration_seconds_bucket{le="10"} 1
vigil_remediation_duration_seconds_bucket{le="30"} 1
vigil_remediation_duration_seconds_bucket{le="60"} 1
vigil_remediation_duration_seconds_bucket{le="120"} 1
vigil_remediation_duration_seconds_bucket{le="+Inf"} 2
vigil_remediation_duration_seconds_sum 120.125
vigil_remediation_duration_seconds_count 2
# HELP vigil_remediation_storm_active 1 while the storm guard holds every alert-driven action (as this replica last evaluated it), else 0.
# TYPE vigil_remediation_storm_active gauge
vigil_remediation_storm_active 0
# HELP vigil_remediations_suppressed_total Alerts and requests that made no command, by reason (duplicate, cooldown, budget, storm, fenced, dry_run, target_unknown, node_down, resolved, owner, escalated, store_unavailable, refused, node_network).
# TYPE vigil_remediations_suppressed_total counter
vigil_remediations_suppressed_total{reason="budget"} 0
vigil_remediations_suppressed_total{reason="cooldown"} 0
vigil_remediations_suppressed_total{reason="dry_run"} 1
vigil_remediations_suppressed_total{reason="duplicate"} 1
vigil_remediations_suppressed_total{reason="escalated"} 0
vigil_remediations_suppressed_total{reason="fenced"} 0
vigil_remediations_suppressed_total{reason="node_down"} 0
vigil_remediations_suppressed_total{reason="node_network"} 0
vigil_remediations_suppressed_total{reason="owner"} 0
vigil_remediations_suppressed_total{reason="refused"} 0
vigil_remediations_suppressed_total{reason="resolved"} 0
vigil_remediations_suppressed_total{reason="store_unavailable"} 0
vigil_remediations_suppressed_total{reason="storm"} 0
vigil_remediations_suppressed_total{reason="target_unknown"} 1
`
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader(want), "vigil_remediation_duration_seconds",
		"vigil_remediation_storm_active", "vigil_remediations_suppressed_total"); err != nil {
		t.Error(err)
	}
	wantTotals := map[[2]string]float64{{"restart_container", "succeeded"}: 1, {"restart_container", "expired"}: 1}
	for _, a := range Actions {
		for _, r := range results {
			if got := testutil.ToFloat64(h.e.m.remediations.WithLabelValues(a.String(), r)); got != wantTotals[[2]string{a.String(), r}] {
				t.Errorf("vigil_remediations_total{action=%q,result=%q} = %v", a, r, got)
			}
		}
	}
	if n := testutil.CollectAndCount(h.e.m.remediations); n != len(Actions)*len(results) {
		t.Errorf("%d vigil_remediations_total series, want %d (every action × result from the start)", n, len(Actions)*len(results))
	}
	// Registering twice on one registry is an error, not a panic.
	if _, err := New(Config{Store: h.st, Fleet: h.fleet, Registry: h.reg}); err == nil {
		t.Error("a second engine on the same registry registered its metrics")
	}
}
