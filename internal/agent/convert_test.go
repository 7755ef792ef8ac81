package agent

import (
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/vigilhq/vigil/internal/health"
	"github.com/vigilhq/vigil/internal/restart"
	"github.com/vigilhq/vigil/internal/runtime"
	"github.com/vigilhq/vigil/internal/statedir"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// TestEnumConversions: every domain value maps to its own protocol value
// (none to UNSPECIFIED, no two to the same), and exit reasons survive the
// state file's names both ways.
func TestEnumConversions(t *testing.T) {
	seen := map[vigilv1.ExitReason]runtime.ExitReason{}
	for _, r := range []runtime.ExitReason{runtime.ExitCompleted, runtime.ExitError, runtime.ExitSignal, runtime.ExitOOMKilled, runtime.ExitUnknown} {
		p := exitReasonProto(r)
		if p == vigilv1.ExitReason_EXIT_REASON_UNSPECIFIED {
			t.Errorf("exit reason %v maps to UNSPECIFIED", r)
		}
		if other, dup := seen[p]; dup {
			t.Errorf("exit reasons %v and %v both map to %v", r, other, p)
		}
		seen[p] = r
		if back := exitReasonFromString(r.String()); back != p {
			t.Errorf("exit reason %v: by name %v, want %v", r, back, p)
		}
		e := exitFromRecord(exitRecord(runtime.Exit{Code: 3, Reason: r, Signal: "TERM"}))
		if e.Reason != r || e.Code != 3 || e.Signal != "TERM" {
			t.Errorf("exit reason %v through the state file: %+v", r, e)
		}
	}
	if len(seen) != len(vigilv1.ExitReason_name)-1 {
		t.Errorf("%d exit reasons map to %d of the protocol's %d (UNSPECIFIED aside)", len(seen), len(seen), len(vigilv1.ExitReason_name)-1)
	}
	if e := exitFromRecord(&statedir.ExitRecord{Reason: "from-the-future"}); e.Reason != runtime.ExitUnknown {
		t.Errorf("an unknown reason name reads as %v, want unknown", e.Reason)
	}

	hs := map[vigilv1.HealthStatus]bool{}
	for _, s := range []health.Status{health.StatusNone, health.StatusStarting, health.StatusHealthy, health.StatusUnhealthy} {
		p := healthStatusProto(s)
		if p == vigilv1.HealthStatus_HEALTH_STATUS_UNSPECIFIED || hs[p] || p.String() != "HEALTH_STATUS_"+map[health.Status]string{
			health.StatusNone: "NONE", health.StatusStarting: "STARTING", health.StatusHealthy: "HEALTHY", health.StatusUnhealthy: "UNHEALTHY"}[s] {
			t.Errorf("health status %v maps to %v", s, p)
		}
		hs[p] = true
	}
	if len(hs) != len(vigilv1.HealthStatus_name)-1 {
		t.Errorf("health statuses cover %d of the protocol's %d", len(hs), len(vigilv1.HealthStatus_name)-1)
	}

	st := map[vigilv1.ContainerState]bool{}
	for _, s := range []runtime.State{runtime.StateCreated, runtime.StateRunning, runtime.StatePaused, runtime.StateStopped} {
		p := stateProto(s)
		if p == vigilv1.ContainerState_CONTAINER_STATE_UNSPECIFIED || st[p] {
			t.Errorf("state %v maps to %v", s, p)
		}
		st[p] = true
	}
	if len(st) != len(vigilv1.ContainerState_name)-1 {
		t.Errorf("states cover %d of the protocol's %d", len(st), len(vigilv1.ContainerState_name)-1)
	}

	ms := map[vigilv1.Manager]bool{}
	for _, m := range []runtime.Manager{runtime.ManagerVigil, runtime.ManagerKubelet, runtime.ManagerDocker, runtime.ManagerContainerd} {
		p := managerProto(m)
		if ms[p] {
			t.Errorf("manager %v maps to %v twice", m, p)
		}
		ms[p] = true
	}
}

// TestRestartEnumConversions: every restart policy kind and decision kind
// maps to its own protocol value, and every protocol value but UNSPECIFIED
// is reached: the conversions are bijective, whatever the numbers (they
// are switches, not casts). An unknown domain value is UNSPECIFIED.
func TestRestartEnumConversions(t *testing.T) {
	pk := map[vigilv1.RestartPolicyKind]restart.Kind{}
	for _, k := range []restart.Kind{restart.KindNo, restart.KindAlways, restart.KindOnFailure, restart.KindUnlessStopped} {
		p := restartPolicyKindProto(k)
		if other, dup := pk[p]; dup || p == vigilv1.RestartPolicyKind_RESTART_POLICY_KIND_UNSPECIFIED {
			t.Errorf("policy kind %v maps to %v (also %v)", k, p, other)
		}
		if want := "RESTART_POLICY_KIND_" + strings.ToUpper(strings.ReplaceAll(k.String(), "-", "_")); p.String() != want {
			t.Errorf("policy kind %v maps to %v, want %s", k, p, want)
		}
		pk[p] = k
	}
	if len(pk) != len(vigilv1.RestartPolicyKind_name)-1 {
		t.Errorf("policy kinds reach %d of the protocol's %d", len(pk), len(vigilv1.RestartPolicyKind_name)-1)
	}
	if p := restartPolicyKindProto(restart.Kind(99)); p != vigilv1.RestartPolicyKind_RESTART_POLICY_KIND_UNSPECIFIED {
		t.Errorf("an unknown policy kind maps to %v", p)
	}

	dk := map[vigilv1.RestartDecisionKind]restart.DecisionKind{}
	for _, k := range []restart.DecisionKind{restart.DecisionRestart, restart.DecisionBackoff, restart.DecisionNone,
		restart.DecisionGiveUp, restart.DecisionSkipExplicitStop, restart.DecisionSkipManaged} {
		p := restartDecisionKindProto(k)
		if other, dup := dk[p]; dup || p == vigilv1.RestartDecisionKind_RESTART_DECISION_KIND_UNSPECIFIED {
			t.Errorf("decision kind %v maps to %v (also %v)", k, p, other)
		}
		if want := "RESTART_DECISION_KIND_" + strings.ToUpper(k.String()); p.String() != want {
			t.Errorf("decision kind %v maps to %v, want %s", k, p, want)
		}
		dk[p] = k
	}
	if len(dk) != len(vigilv1.RestartDecisionKind_name)-1 {
		t.Errorf("decision kinds reach %d of the protocol's %d", len(dk), len(vigilv1.RestartDecisionKind_name)-1)
	}
	if p := restartDecisionKindProto(0); p != vigilv1.RestartDecisionKind_RESTART_DECISION_KIND_UNSPECIFIED {
		t.Errorf("no decision maps to %v", p)
	}
}

// TestHealthReportBlame: the health sent upstream carries the blame
// decideHealthBlame puts on it, and only then.
func TestHealthReportBlame(t *testing.T) {
	at := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	tr := &tracked{probeHealth: &health.Health{Status: health.StatusUnhealthy, Kind: health.KindTCP}, crossNodeAt: at}
	if b := healthReportLocked(tr).GetBlame(); b != vigilv1.HealthBlame_HEALTH_BLAME_NODE_NETWORK {
		t.Errorf("blamed: upstream health blame %v, want NODE_NETWORK", b)
	}
	tr.crossNodeAt = time.Time{}
	if b := healthReportLocked(tr).GetBlame(); b != vigilv1.HealthBlame_HEALTH_BLAME_UNSPECIFIED {
		t.Errorf("cleared: upstream health blame %v, want UNSPECIFIED", b)
	}
	tr.crossNodeAt, tr.netCause = at, "LinkDown eth0"
	if h := healthReportLocked(tr); h.GetBlame() != vigilv1.HealthBlame_HEALTH_BLAME_UNSPECIFIED || h.GetStatus() != vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY {
		t.Errorf("its own network down: upstream health %v, want unhealthy without blame", h)
	}
}

// TestLabelErrorsProtoBounded: what goes on the wire is at most
// maxLabelErrors entries of one line and at most maxLabelErrorBytes each,
// valid UTF-8 when cut.
func TestLabelErrorsProtoBounded(t *testing.T) {
	if got := labelErrorsProto(nil); got != nil {
		t.Errorf("no errors: %q, want nil", got)
	}
	var in []string
	for i := range 12 {
		in = append(in, fmt.Sprintf("error %d:\nline two", i))
	}
	in[0] = "é" + strings.Repeat("x", 2*maxLabelErrorBytes)
	got := labelErrorsProto(in)
	if len(got) != maxLabelErrors {
		t.Fatalf("%d entries, want %d", len(got), maxLabelErrors)
	}
	for _, e := range got {
		if len(e) > maxLabelErrorBytes || strings.Contains(e, "\n") || !utf8.ValidString(e) {
			t.Errorf("entry %q: %d bytes, over %d, several lines, or invalid UTF-8", e, len(e), maxLabelErrorBytes)
		}
	}
	if got[1] != "error 1:; line two" {
		t.Errorf("entry %q, want the lines joined", got[1])
	}
}
