package restart

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
)

func TestParse(t *testing.T) {
	def := DefaultBackoff()
	custom := def
	custom.Initial, custom.Max, custom.ResetAfter = 500*time.Millisecond, time.Minute, 30*time.Second

	tests := []struct {
		name    string
		labels  map[string]string
		health  bool
		want    Policy
		wantErr []string // substrings of the error; nil: no error
	}{
		{name: "no labels", want: Policy{Kind: KindNo, Backoff: def}},
		{name: "no labels, health check", health: true, want: Policy{Kind: KindNo, HealthChecked: true, Backoff: def}},
		{name: "no", labels: map[string]string{LabelPolicy: "no"}, want: Policy{Kind: KindNo, Backoff: def}},
		{name: "always", labels: map[string]string{LabelPolicy: "always"}, want: Policy{Kind: KindAlways, Backoff: def}},
		{name: "unless-stopped", labels: map[string]string{LabelPolicy: "unless-stopped"}, want: Policy{Kind: KindUnlessStopped, Backoff: def}},
		{name: "on-failure", labels: map[string]string{LabelPolicy: "on-failure"}, want: Policy{Kind: KindOnFailure, Backoff: def}},
		{name: "on-failure:3", labels: map[string]string{LabelPolicy: "on-failure:3"}, want: Policy{Kind: KindOnFailure, MaxRetries: 3, Backoff: def}},
		{name: "on-failure:0 is unlimited", labels: map[string]string{LabelPolicy: "on-failure:0"}, want: Policy{Kind: KindOnFailure, Backoff: def}},
		{name: "unhealthy default on with check and policy", labels: map[string]string{LabelPolicy: "always"}, health: true,
			want: Policy{Kind: KindAlways, RestartOnUnhealthy: true, HealthChecked: true, Backoff: def}},
		{name: "unhealthy default off without check", labels: map[string]string{LabelPolicy: "always"},
			want: Policy{Kind: KindAlways, Backoff: def}},
		{name: "unhealthy false wins", labels: map[string]string{LabelPolicy: "on-failure", LabelOnUnhealthy: "false"}, health: true,
			want: Policy{Kind: KindOnFailure, HealthChecked: true, Backoff: def}},
		{name: "unhealthy true without check", labels: map[string]string{LabelPolicy: "always", LabelOnUnhealthy: "true"},
			want: Policy{Kind: KindAlways, RestartOnUnhealthy: true, Backoff: def}},
		{name: "backoff labels", labels: map[string]string{LabelPolicy: "always", LabelBackoffInitial: "500ms", LabelBackoffMax: "1m", LabelBackoffReset: "30s"},
			want: Policy{Kind: KindAlways, Backoff: custom}},
		{name: "backoff labels without policy", labels: map[string]string{LabelBackoffInitial: "2s"},
			want: Policy{Kind: KindNo, Backoff: Backoff{Initial: 2 * time.Second, Max: def.Max, ResetAfter: def.ResetAfter, CrashLoopAfter: def.CrashLoopAfter}}},
		{name: "other labels ignored", labels: map[string]string{"vigil.io/health-cmd": "true", "restart-policy": "bogus", LabelPolicy: "always"},
			want: Policy{Kind: KindAlways, Backoff: def}},

		{name: "unknown policy", labels: map[string]string{LabelPolicy: "sometimes"},
			wantErr: []string{`label vigil.io/restart-policy="sometimes"`, `want "no", "always"`}},
		{name: "policy case matters", labels: map[string]string{LabelPolicy: "Always"}, wantErr: []string{`vigil.io/restart-policy="Always"`}},
		{name: "policy with spaces", labels: map[string]string{LabelPolicy: " always"}, wantErr: []string{`vigil.io/restart-policy=" always"`}},
		{name: "empty policy", labels: map[string]string{LabelPolicy: ""}, wantErr: []string{`vigil.io/restart-policy=""`}},
		{name: "count on always", labels: map[string]string{LabelPolicy: "always:3"}, wantErr: []string{"only allowed with on-failure"}},
		{name: "negative count", labels: map[string]string{LabelPolicy: "on-failure:-1"}, wantErr: []string{`"on-failure:-1"`, "decimal number"}},
		{name: "plus count", labels: map[string]string{LabelPolicy: "on-failure:+1"}, wantErr: []string{"decimal number"}},
		{name: "empty count", labels: map[string]string{LabelPolicy: "on-failure:"}, wantErr: []string{"decimal number"}},
		{name: "two counts", labels: map[string]string{LabelPolicy: "on-failure:1:2"}, wantErr: []string{"decimal number"}},
		{name: "huge count", labels: map[string]string{LabelPolicy: "on-failure:99999999999999999999"}, wantErr: []string{"too large"}},
		{name: "unhealthy not bool", labels: map[string]string{LabelPolicy: "always", LabelOnUnhealthy: "yes"},
			wantErr: []string{`vigil.io/restart-on-unhealthy="yes"`, `want "true" or "false"`}},
		{name: "unhealthy true under no", labels: map[string]string{LabelOnUnhealthy: "true"}, health: true,
			wantErr: []string{`vigil.io/restart-on-unhealthy="true"`, "no effect"}},
		{name: "bad duration", labels: map[string]string{LabelPolicy: "always", LabelBackoffInitial: "10"},
			wantErr: []string{`vigil.io/restart-backoff-initial="10"`, "Go duration"}},
		{name: "zero duration", labels: map[string]string{LabelPolicy: "always", LabelBackoffReset: "0s"},
			wantErr: []string{`vigil.io/restart-backoff-reset="0s"`, "positive"}},
		{name: "negative duration", labels: map[string]string{LabelPolicy: "always", LabelBackoffMax: "-1s"},
			wantErr: []string{`vigil.io/restart-backoff-max="-1s"`, "positive"}},
		{name: "initial above default cap", labels: map[string]string{LabelPolicy: "always", LabelBackoffInitial: "10m"},
			wantErr: []string{"cap 5m0s", "below the initial delay 10m0s"}},
		{name: "typo label", labels: map[string]string{"vigil.io/restart-polcy": "always"},
			wantErr: []string{"unknown label vigil.io/restart-polcy"}},
		{name: "several errors", labels: map[string]string{LabelPolicy: "bogus", LabelBackoffMax: "x"},
			wantErr: []string{`vigil.io/restart-policy="bogus"`, `vigil.io/restart-backoff-max="x"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.labels, def, tt.health)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if got != tt.want {
					t.Fatalf("Parse =\n %+v\nwant\n %+v", got, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Parse = %+v, want an error", got)
			}
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
			safe := Policy{Kind: KindNo, HealthChecked: tt.health, Backoff: def}
			if got != safe {
				t.Errorf("on error Parse = %+v, want policy no %+v", got, safe)
			}
		})
	}
}

func TestParseInvalidDefaults(t *testing.T) {
	for _, b := range []Backoff{
		{Initial: 0, Max: time.Minute, ResetAfter: time.Minute, CrashLoopAfter: 1},
		{Initial: time.Minute, Max: time.Second, ResetAfter: time.Minute, CrashLoopAfter: 1},
		{Initial: time.Second, Max: time.Minute, ResetAfter: 0, CrashLoopAfter: 1},
		{Initial: time.Second, Max: time.Minute, ResetAfter: time.Minute, CrashLoopAfter: 0},
	} {
		if _, err := Parse(map[string]string{LabelPolicy: "always"}, b, false); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("Parse with defaults %+v: err = %v, want ErrInvalid", b, err)
		}
	}
}

func TestBackoffDelay(t *testing.T) {
	b := Backoff{Initial: time.Second, Max: 10 * time.Second}
	want := []time.Duration{0, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second}
	for n, w := range want {
		if got := b.delay(n); got != w {
			t.Errorf("delay(%d) = %s, want %s", n, got, w)
		}
	}
	// Large counts must neither overflow nor loop long.
	huge := Backoff{Initial: time.Hour, Max: time.Duration(1<<63 - 1)}
	if got := huge.delay(1000); got != huge.Max {
		t.Errorf("delay(1000) = %s, want the cap", got)
	}
}

func TestPolicyString(t *testing.T) {
	for p, want := range map[Policy]string{
		{Kind: KindNo}:                       "no",
		{Kind: KindOnFailure}:                "on-failure",
		{Kind: KindOnFailure, MaxRetries: 3}: "on-failure:3",
		{Kind: KindUnlessStopped}:            "unless-stopped",
	} {
		if got := p.String(); got != want {
			t.Errorf("String() = %q, want %q", got, want)
		}
	}
}

// FuzzParse checks that Parse never panics, always returns a usable policy,
// and that whatever it accepts round-trips through the policy's label value.
func FuzzParse(f *testing.F) {
	f.Add("always", "true", "1s", "5m", "2m")
	f.Add("on-failure:3", "", "", "", "")
	f.Add("on-failure:", "yes", "10", "-1s", "0")
	f.Add("unless-stopped", "false", "100ms", "1m", "10s")
	f.Fuzz(func(t *testing.T, policy, unhealthy, initial, max, reset string) {
		labels := map[string]string{}
		for k, v := range map[string]string{LabelPolicy: policy, LabelOnUnhealthy: unhealthy,
			LabelBackoffInitial: initial, LabelBackoffMax: max, LabelBackoffReset: reset} {
			if v != "" {
				labels[k] = v
			}
		}
		p, err := Parse(labels, DefaultBackoff(), true)
		if verr := p.Backoff.Validate(); verr != nil {
			t.Fatalf("Parse returned an unusable backoff %+v: %v", p.Backoff, verr)
		}
		if err != nil {
			if p.Kind != KindNo || !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("on error: policy %v, err %v", p, err)
			}
			return
		}
		again, err := Parse(map[string]string{LabelPolicy: p.String()}, DefaultBackoff(), true)
		if err != nil || again.Kind != p.Kind || again.MaxRetries != p.MaxRetries {
			t.Fatalf("policy %q does not round-trip: %+v, %v", p.String(), again, err)
		}
	})
}
