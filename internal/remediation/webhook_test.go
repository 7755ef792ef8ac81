package remediation

import (
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
)

func TestParseWebhookAlertmanager(t *testing.T) {
	// Captured from Debian's prometheus-alertmanager 0.25 (webhook_config,
	// send_resolved: true): a firing group, the same group with one alert
	// resolved, and a link alert.
	body, err := os.ReadFile("testdata/alertmanager-0.25-1.json")
	if err != nil {
		t.Fatal(err)
	}
	w, err := ParseWebhook(body)
	if err != nil {
		t.Fatal(err)
	}
	if w.Version != "4" || w.Receiver != "vigil" || w.Status != StatusFiring || !strings.Contains(w.GroupKey, "VigilContainerUnhealthy") {
		t.Errorf("envelope = %+v", w)
	}
	if len(w.Alerts) != 2 {
		t.Fatalf("%d alerts, want 2", len(w.Alerts))
	}
	r, f := w.Alerts[0], w.Alerts[1]
	if r.Status != StatusResolved || r.Fingerprint != "8ed93102b093bc39" || r.Labels["container"] != "web-1" || r.Name() != "VigilContainerUnhealthy" {
		t.Errorf("resolved alert = %+v", r)
	}
	wantStart := time.Date(2026, 12, 2, 14, 26, 50, 250783058, time.UTC)
	if !r.StartsAt.Equal(wantStart) || !r.EndsAt.Equal(time.Date(2026, 12, 2, 14, 26, 53, 0, time.UTC)) {
		t.Errorf("resolved alert times = %v .. %v", r.StartsAt, r.EndsAt)
	}
	if f.Status != StatusFiring || !f.EndsAt.IsZero() || f.Labels["pod"] != "frontend-7d9f" || f.Annotations["summary"] != "frontend unhealthy" {
		t.Errorf("firing alert = %+v", f)
	}
}

// goType matches what encoding/json's own messages say of a Go type.
var goType = regexp.MustCompile(`remediation\.|wire[A-Z]|Go (struct|value)|map\[|\[\]|\bu?int(64)?\b|float64`)

// TestParseWebhookErrors: each refusal says what was wrong in the sender's
// terms; a value of the wrong JSON type is named by its jq path and the JSON
// type expected, never by a Go type.
func TestParseWebhookErrors(t *testing.T) {
	alert := func(fields string) string {
		return `{"version":"4","groupKey":"g","status":"firing","alerts":[{` + fields + `}]}`
	}
	for _, tc := range []struct {
		name, body, want string
	}{
		{"empty", ``, "empty body"},
		{"not json", `hello`, "malformed JSON at byte 1"},
		{"truncated", `{"version":"4"`, "truncated JSON"},
		{"trailing data", `{"version":"4","groupKey":"g","status":"firing","alerts":[]}{}`, "data after the JSON object"},
		{"no version", `{"groupKey":"g","status":"firing","alerts":[]}`, `no "version"`},
		{"version 3", `{"version":"3","groupKey":"g","status":"firing","alerts":[]}`, `version "3" is not supported`},
		{"version as number", `{"version":4,"groupKey":"g","status":"firing","alerts":[]}`, `.version is a JSON number, want a string`},
		{"payload an array", `[{"version":"4"}]`, `not a version 4 payload: the payload is a JSON array, want an object (Alertmanager webhook v4)`},
		{"payload a string", ` "4" `, `the payload is a JSON string, want an object (Alertmanager webhook v4)`},
		{"payload a number", `4`, `the payload is a JSON number, want an object (Alertmanager webhook v4)`},
		{"payload a boolean", `true`, `the payload is a JSON boolean, want an object (Alertmanager webhook v4)`},
		{"alerts an object", `{"version":"4","alerts":{"a":{}}}`, `.alerts is a JSON object, want an array`},
		{"alert a number", `{"version":"4","alerts":[{},1]}`, `.alerts[1] is a JSON number, want an object`},
		{"labels an array", `{"alerts":[{"labels":{}},{"labels":["a"]}]}`, `.alerts[1].labels is a JSON array, want an object`},
		{"label key not an identifier", `{"alerts":[{"labels":{"app.kubernetes.io/name":true}}]}`, `.alerts[0].labels["app.kubernetes.io/name"] is a JSON boolean, want a string`},
		{"startsAt a boolean", `{"alerts":[{"startsAt":false}]}`, `.alerts[0].startsAt is a JSON boolean, want a string`},
		{"group label an object", `{"groupLabels":{"team":{"x":1}}}`, `.groupLabels.team is a JSON object, want a string`},
		{"truncatedAlerts a fraction", `{"truncatedAlerts":1.5}`, `.truncatedAlerts is the number 1.5, want a whole number from -9223372036854775808 to 9223372036854775807`},
		{"truncatedAlerts too big", `{"truncatedAlerts":1e400}`, `.truncatedAlerts is the number 1e400, want a whole number from`},
		{"truncatedAlerts a string", `{"truncatedAlerts":"3"}`, `.truncatedAlerts is a JSON string, want a whole number`},
		{"after unknown nested fields", "{\"future\": {\"deep\": [1, {\"x\": [[]]}, \"]}\"]},\n  \"version\": [4]}", `.version is a JSON array, want a string`},
		{"no group key", `{"version":"4","status":"firing","alerts":[]}`, `no "groupKey"`},
		{"bad status", `{"version":"4","groupKey":"g","status":"burning","alerts":[]}`, `"status": "burning" is neither`},
		{"no alerts", `{"version":"4","groupKey":"g","status":"firing"}`, `no "alerts"`},
		{"negative truncated", `{"version":"4","groupKey":"g","status":"firing","alerts":[],"truncatedAlerts":-1}`, `"truncatedAlerts" is -1`},
		{"labels not strings", alert(`"status":"firing","labels":{"a":1},"startsAt":"2024-01-01T00:00:00Z","fingerprint":"f"`), `.alerts[0].labels.a is a JSON number, want a string`},
		{"alert without fingerprint", alert(`"status":"firing","labels":{"a":"b"},"startsAt":"2024-01-01T00:00:00Z"`), `alerts[0]: no "fingerprint"`},
		{"alert without labels", alert(`"status":"firing","startsAt":"2024-01-01T00:00:00Z","fingerprint":"f"`), `alert f has no "labels"`},
		{"alert without startsAt", alert(`"status":"firing","labels":{"a":"b"},"fingerprint":"f"`), `alert f has no "startsAt"`},
		{"alert bad startsAt", alert(`"status":"firing","labels":{"a":"b"},"startsAt":"yesterday","fingerprint":"f"`), `"startsAt" "yesterday" is not an RFC 3339 time`},
		{"alert zero startsAt", alert(`"status":"firing","labels":{"a":"b"},"startsAt":"0001-01-01T00:00:00Z","fingerprint":"f"`), `"startsAt" "0001-01-01T00:00:00Z"`},
		{"alert bad endsAt", alert(`"status":"firing","labels":{"a":"b"},"startsAt":"2024-01-01T00:00:00Z","endsAt":"soon","fingerprint":"f"`), `"endsAt" "soon"`},
		{"resolved without endsAt", alert(`"status":"resolved","labels":{"a":"b"},"startsAt":"2024-01-01T00:00:00Z","fingerprint":"f"`), `resolved but has no "endsAt"`},
		{"alert bad status", alert(`"status":"","labels":{"a":"b"},"startsAt":"2024-01-01T00:00:00Z","fingerprint":"f"`), `alerts[0]: "status": missing`},
		{"fingerprint too long", alert(`"status":"firing","labels":{"a":"b"},"startsAt":"2024-01-01T00:00:00Z","fingerprint":"` + strings.Repeat("f", 65) + `"`), `"fingerprint" is 65 bytes, more than 64`},
		{"label value too long", alert(`"status":"firing","labels":{"a":"` + strings.Repeat("v", 1025) + `"},"startsAt":"2024-01-01T00:00:00Z","fingerprint":"f"`), `label "a" is longer than 1024 bytes`},
		{"long value clipped", `{"version":"` + strings.Repeat("x", 1000) + `","groupKey":"g","status":"firing","alerts":[]}`, `xxx..." is not supported`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseWebhook([]byte(tc.body))
			if err == nil {
				t.Fatalf("no error for %s", tc.body)
			}
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			if len(err.Error()) > 300 {
				t.Errorf("error is %d bytes long", len(err.Error()))
			}
			if goType.MatchString(err.Error()) {
				t.Errorf("error %q names a Go type", err)
			}
		})
	}
}

func TestReadWebhookLimit(t *testing.T) {
	big := `{"version":"4","groupKey":"g","status":"firing","alerts":[],"receiver":"` + strings.Repeat("r", MaxWebhookBytes) + `"}`
	_, err := ReadWebhook(strings.NewReader(big))
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "limit of 1048576 bytes (1 MiB)") {
		t.Fatalf("err = %v, want the body limit named", err)
	}
	w, err := ReadWebhook(strings.NewReader(`{"version":"4","groupKey":"g","status":"resolved","alerts":[],"futureField":{"x":1}}`))
	if err != nil || w.Status != StatusResolved {
		t.Fatalf("a small body with an unknown field: %v, %+v", err, w)
	}
}

func FuzzParseWebhook(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) {
		w, err := ParseWebhook(body)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if w.Version != WebhookVersion || (w.Status != StatusFiring && w.Status != StatusResolved) {
			t.Fatalf("accepted envelope %+v", w)
		}
		for _, a := range w.Alerts {
			if a.Fingerprint == "" || a.StartsAt.IsZero() || len(a.Labels) == 0 {
				t.Fatalf("accepted alert %+v", a)
			}
			if a.Status == StatusResolved && a.EndsAt.IsZero() {
				t.Fatalf("accepted resolved alert without an end %+v", a)
			}
		}
	})
}
