package restart

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// step is one event in a tracker scenario. at is seconds since t0.
type step struct {
	at    float64
	ev    string // start, exit, unhealthy, healthy, stop, opstart, failed, settle, cmdstop, cmdrestart
	code  uint32
	want  DecisionKind
	delay time.Duration // for want == DecisionBackoff
	check func(t *testing.T, s State)
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func secs(f float64) time.Time { return t0.Add(time.Duration(f * float64(time.Second))) }

func runSteps(t *testing.T, tr *Tracker, steps []step) {
	t.Helper()
	for i, st := range steps {
		now := secs(st.at)
		var d Decision
		got := false
		switch st.ev {
		case "start":
			tr.OnStart(now)
		case "exit":
			d, got = tr.OnExit(st.code, "", now), true
		case "unhealthy":
			d, got = tr.OnUnhealthy(now), true
		case "healthy":
			tr.OnHealthy(now)
		case "stop":
			tr.OnExplicitStop(now)
		case "opstart":
			tr.OnExplicitStart(now)
		case "failed":
			d, got = tr.OnRestartFailed("image gone", now), true
		case "settle":
			tr.Settle(now)
		case "cmdstop":
			tr.OnCommandStop(now)
		case "cmdrestart":
			tr.OnCommandRestart(now)
		default:
			t.Fatalf("step %d: unknown event %q", i, st.ev)
		}
		if got {
			if d.Kind != st.want {
				t.Fatalf("step %d (%s at %vs): decision %v (%s), want %v", i, st.ev, st.at, d.Kind, d.Reason, st.want)
			}
			if d.Reason == "" {
				t.Errorf("step %d: empty reason", i)
			}
			if d.Restarts() {
				if d.Delay != st.delay {
					t.Errorf("step %d: delay %s, want %s", i, d.Delay, st.delay)
				}
				if st.delay > 0 && !d.At.Equal(now.Add(st.delay)) {
					t.Errorf("step %d: due at %s, want %s", i, d.At, now.Add(st.delay))
				}
				if st.delay == 0 && (d.At.IsZero() || d.At.After(now)) {
					t.Errorf("step %d: immediate restart due at %s, after now %s", i, d.At, now)
				}
			}
		}
		if st.check != nil {
			st.check(t, tr.State)
		}
	}
}

func policy(kind Kind, n int, onUnhealthy, checked bool) Policy {
	return Policy{Kind: kind, MaxRetries: n, RestartOnUnhealthy: onUnhealthy, HealthChecked: checked,
		Backoff: Backoff{Initial: time.Second, Max: 8 * time.Second, ResetAfter: 10 * time.Second, CrashLoopAfter: 4}}
}

func TestTracker(t *testing.T) {
	restarts := func(n uint64) func(*testing.T, State) {
		return func(t *testing.T, s State) {
			t.Helper()
			if s.RestartCount != n {
				t.Errorf("RestartCount = %d, want %d", s.RestartCount, n)
			}
		}
	}
	tests := []struct {
		name      string
		policy    Policy
		managedBy string
		steps     []step
	}{
		{name: "on-failure:3 restarts exactly 3 times after exit 1", policy: policy(KindOnFailure, 3, false, false), steps: []step{
			{at: 0, ev: "start"},
			{at: 1, ev: "exit", code: 1, want: DecisionRestart},
			{at: 1, ev: "start"},
			{at: 2, ev: "exit", code: 1, want: DecisionBackoff, delay: time.Second},
			{at: 3, ev: "start"},
			{at: 4, ev: "exit", code: 1, want: DecisionBackoff, delay: 2 * time.Second},
			{at: 6, ev: "start", check: restarts(3)},
			{at: 7, ev: "exit", code: 1, want: DecisionGiveUp, check: func(t *testing.T, s State) {
				if !s.GaveUp || s.Pending || s.RestartCount != 3 {
					t.Errorf("state after giving up: %+v", s)
				}
			}},
			{at: 8, ev: "exit", code: 1, want: DecisionGiveUp}, // a replayed exit
		}},
		{name: "on-failure:3 limit holds across stable runs", policy: policy(KindOnFailure, 3, false, false), steps: []step{
			{at: 0, ev: "start"},
			{at: 100, ev: "exit", code: 2, want: DecisionRestart},
			{at: 100, ev: "start"},
			{at: 200, ev: "exit", code: 2, want: DecisionRestart},
			{at: 200, ev: "start"},
			{at: 300, ev: "exit", code: 2, want: DecisionRestart},
			{at: 300, ev: "start"},
			{at: 400, ev: "exit", code: 2, want: DecisionGiveUp},
			// An operator's start gives the container its retries back.
			{at: 500, ev: "opstart"},
			{at: 500, ev: "start", check: restarts(3)},
			{at: 501, ev: "exit", code: 2, want: DecisionRestart},
		}},
		{name: "on-failure: exit 0 is not restarted", policy: policy(KindOnFailure, 0, false, false), steps: []step{
			{at: 0, ev: "start"},
			{at: 1, ev: "exit", code: 0, want: DecisionNone},
		}},
		{name: "on-failure: signal and OOM exits are failures", policy: policy(KindOnFailure, 0, false, false), steps: []step{
			{at: 0, ev: "start"},
			{at: 1, ev: "exit", code: 137, want: DecisionRestart},
			{at: 1, ev: "start"},
			{at: 2, ev: "exit", code: 143, want: DecisionBackoff, delay: time.Second},
		}},
		{name: "on-failure without a limit never gives up", policy: policy(KindOnFailure, 0, false, false), steps: []step{
			{at: 0, ev: "start"},
			{at: 1, ev: "exit", code: 1, want: DecisionRestart}, {at: 1, ev: "start"},
			{at: 2, ev: "exit", code: 1, want: DecisionBackoff, delay: 1 * time.Second}, {at: 3, ev: "start"},
			{at: 4, ev: "exit", code: 1, want: DecisionBackoff, delay: 2 * time.Second}, {at: 6, ev: "start"},
			{at: 7, ev: "exit", code: 1, want: DecisionBackoff, delay: 4 * time.Second}, {at: 11, ev: "start"},
			{at: 12, ev: "exit", code: 1, want: DecisionBackoff, delay: 8 * time.Second}, {at: 20, ev: "start"},
			{at: 21, ev: "exit", code: 1, want: DecisionBackoff, delay: 8 * time.Second, check: restarts(5)},
		}},
		{name: "always restarts after exit 0", policy: policy(KindAlways, 0, false, false), steps: []step{
			{at: 0, ev: "start"},
			{at: 1, ev: "exit", code: 0, want: DecisionRestart},
		}},
		{name: "no never restarts", policy: policy(KindNo, 0, false, false), steps: []step{
			{at: 0, ev: "start"},
			{at: 1, ev: "exit", code: 1, want: DecisionNone},
		}},
		{name: "unless-stopped stays stopped after an explicit stop", policy: policy(KindUnlessStopped, 0, false, false), steps: []step{
			{at: 0, ev: "start"},
			{at: 5, ev: "stop"},
			{at: 5, ev: "exit", code: 143, want: DecisionSkipExplicitStop},
			// The operator starts it again: a crash is restarted once more.
			{at: 50, ev: "start"},
			{at: 51, ev: "exit", code: 1, want: DecisionRestart},
		}},
		{name: "always after an explicit stop", policy: policy(KindAlways, 0, false, false), steps: []step{
			{at: 0, ev: "start"},
			{at: 5, ev: "stop"},
			{at: 5, ev: "exit", code: 0, want: DecisionSkipExplicitStop},
		}},
		{name: "unless-stopped restarts after a crash", policy: policy(KindUnlessStopped, 0, false, false), steps: []step{
			{at: 0, ev: "start"},
			{at: 1, ev: "exit", code: 139, want: DecisionRestart},
		}},
		{name: "explicit stop cancels a pending restart", policy: policy(KindAlways, 0, false, false), steps: []step{
			{at: 0, ev: "start"},
			{at: 1, ev: "exit", code: 1, want: DecisionRestart}, {at: 1, ev: "start"},
			{at: 2, ev: "exit", code: 1, want: DecisionBackoff, delay: time.Second},
			{at: 2.5, ev: "stop", check: func(t *testing.T, s State) {
				if s.Pending || !s.NextRestartAt.IsZero() || !s.ExplicitlyStopped {
					t.Errorf("after stop: %+v", s)
				}
			}},
		}},
		{name: "managed by the kubelet", policy: policy(KindAlways, 0, true, true), managedBy: "kubelet", steps: []step{
			{at: 0, ev: "start"},
			{at: 1, ev: "exit", code: 1, want: DecisionSkipManaged},
			{at: 2, ev: "start"},
			{at: 3, ev: "unhealthy", want: DecisionSkipManaged},
		}},
		{name: "backoff caps and resets after a stable run", policy: policy(KindAlways, 0, false, false), steps: []step{
			{at: 0, ev: "start"},
			{at: 1, ev: "exit", code: 1, want: DecisionRestart}, {at: 1, ev: "start"},
			{at: 2, ev: "exit", code: 1, want: DecisionBackoff, delay: time.Second}, {at: 3, ev: "start"},
			{at: 4, ev: "exit", code: 1, want: DecisionBackoff, delay: 2 * time.Second}, {at: 6, ev: "start"},
			{at: 7, ev: "exit", code: 1, want: DecisionBackoff, delay: 4 * time.Second, check: func(t *testing.T, s State) {
				if !s.CrashLooping || s.ConsecutiveRestarts != 4 {
					t.Errorf("4 restarts in a row: %+v", s)
				}
			}}, {at: 11, ev: "start"},
			// 9.9s is not enough to reset...
			{at: 20.9, ev: "exit", code: 1, want: DecisionBackoff, delay: 8 * time.Second}, {at: 28.9, ev: "start"},
			// ...the cap holds...
			{at: 29, ev: "exit", code: 1, want: DecisionBackoff, delay: 8 * time.Second}, {at: 37, ev: "start"},
			// ...10s is.
			{at: 47, ev: "exit", code: 1, want: DecisionRestart, check: func(t *testing.T, s State) {
				if s.CrashLooping || s.ConsecutiveRestarts != 1 || s.CurrentDelay != 0 {
					t.Errorf("after reset: %+v", s)
				}
			}},
		}},
		{name: "cap reached means crash-looping", policy: Policy{Kind: KindAlways,
			Backoff: Backoff{Initial: time.Second, Max: 2 * time.Second, ResetAfter: time.Minute, CrashLoopAfter: 100}}, steps: []step{
			{at: 0, ev: "start"},
			{at: 1, ev: "exit", code: 1, want: DecisionRestart}, {at: 1, ev: "start"},
			{at: 2, ev: "exit", code: 1, want: DecisionBackoff, delay: time.Second, check: func(t *testing.T, s State) {
				if s.CrashLooping {
					t.Error("crash-looping before the cap")
				}
			}}, {at: 3, ev: "start"},
			{at: 4, ev: "exit", code: 1, want: DecisionBackoff, delay: 2 * time.Second, check: func(t *testing.T, s State) {
				if !s.CrashLooping {
					t.Error("not crash-looping at the cap")
				}
			}},
		}},
		{name: "with a health check only a healthy run resets", policy: policy(KindAlways, 0, true, true), steps: []step{
			{at: 0, ev: "start"},
			{at: 1, ev: "exit", code: 1, want: DecisionRestart}, {at: 1, ev: "start"},
			{at: 2, ev: "exit", code: 1, want: DecisionBackoff, delay: time.Second}, {at: 3, ev: "start"},
			// Up for 60s but never healthy: no reset.
			{at: 63, ev: "exit", code: 1, want: DecisionBackoff, delay: 2 * time.Second}, {at: 65, ev: "start"},
			// Healthy from 70 to 79.9: not enough.
			{at: 70, ev: "healthy"},
			{at: 79.9, ev: "exit", code: 1, want: DecisionBackoff, delay: 4 * time.Second}, {at: 84, ev: "start"},
			{at: 85, ev: "healthy"},
			{at: 90, ev: "healthy"}, // still healthy: the start of the streak stays at 85
			{at: 95, ev: "settle", check: func(t *testing.T, s State) {
				if s.ConsecutiveRestarts != 0 || s.CrashLooping {
					t.Errorf("10s healthy: not reset: %+v", s)
				}
			}},
			{at: 96, ev: "exit", code: 1, want: DecisionRestart},
		}},
		{name: "unhealthy restarts, the following exit repeats the pending decision", policy: policy(KindAlways, 0, true, true), steps: []step{
			{at: 0, ev: "start"},
			{at: 5, ev: "healthy"},
			{at: 8, ev: "unhealthy", want: DecisionRestart},
			{at: 8.1, ev: "exit", code: 137, want: DecisionRestart, check: func(t *testing.T, s State) {
				if s.Retries != 1 || s.ConsecutiveRestarts != 1 {
					t.Errorf("the kill's exit was counted: %+v", s)
				}
			}},
			{at: 8.2, ev: "start", check: restarts(1)},
			{at: 12, ev: "unhealthy", want: DecisionBackoff, delay: time.Second},
			{at: 12.5, ev: "exit", code: 137, want: DecisionBackoff, delay: 500 * time.Millisecond},
		}},
		{name: "unhealthy with restart-on-unhealthy off", policy: policy(KindAlways, 0, false, true), steps: []step{
			{at: 0, ev: "start"},
			{at: 8, ev: "unhealthy", want: DecisionNone},
		}},
		{name: "unhealthy under policy no", policy: policy(KindNo, 0, true, true), steps: []step{
			{at: 0, ev: "start"},
			{at: 8, ev: "unhealthy", want: DecisionNone},
		}},
		{name: "unhealthy counts against on-failure:1", policy: policy(KindOnFailure, 1, true, true), steps: []step{
			{at: 0, ev: "start"},
			{at: 8, ev: "unhealthy", want: DecisionRestart},
			{at: 8, ev: "exit", code: 137, want: DecisionRestart},
			{at: 9, ev: "start"},
			{at: 20, ev: "unhealthy", want: DecisionGiveUp},
		}},
		{name: "a failed restart backs off", policy: policy(KindAlways, 0, false, false), steps: []step{
			{at: 0, ev: "start"},
			{at: 1, ev: "exit", code: 1, want: DecisionRestart},
			{at: 1, ev: "failed", want: DecisionBackoff, delay: time.Second},
			{at: 2, ev: "failed", want: DecisionBackoff, delay: 2 * time.Second},
			{at: 4, ev: "start", check: restarts(1)},
		}},
		{name: "always: an operator's restart is counted and advances no backoff", policy: policy(KindAlways, 0, false, false), steps: []step{
			{at: 0, ev: "start"},
			{at: 1, ev: "exit", code: 1, want: DecisionRestart}, {at: 1, ev: "start"},
			{at: 2, ev: "cmdstop", check: func(t *testing.T, s State) {
				if s.Running || s.Pending || s.ConsecutiveRestarts != 1 || s.Retries != 1 || s.CrashLooping {
					t.Errorf("the command's stop moved the policy: %+v", s)
				}
			}},
			{at: 2.1, ev: "cmdrestart", check: restarts(2)},
			{at: 2.1, ev: "cmdrestart", check: restarts(2)}, // replayed
			// The next crash waits what it would have without the command:
			// the second restart in a row.
			{at: 3, ev: "exit", code: 1, want: DecisionBackoff, delay: time.Second},
		}},
		{name: "always: an operator's restart cut by the agent's death is decided as a failed restart when its exit is replayed", policy: policy(KindAlways, 0, false, false), steps: []step{
			{at: 0, ev: "start"},
			{at: 2, ev: "cmdstop", check: func(t *testing.T, s State) {
				if !s.CommandStopped || s.Running || s.Pending {
					t.Errorf("the command's stop: %+v, want CommandStopped and nothing pending", s)
				}
			}},
			// The next agent replays the exit: not a repeat of the last
			// decision (none), the policy's restart.
			{at: 30, ev: "exit", code: 143, want: DecisionRestart, check: func(t *testing.T, s State) {
				if s.CommandStopped || !s.Pending || s.RestartCount != 0 {
					t.Errorf("after the replayed exit: %+v, want a restart pending, no longer CommandStopped", s)
				}
			}},
			{at: 30, ev: "exit", code: 143, want: DecisionRestart}, // replayed again: the same pending restart
			{at: 30.1, ev: "start", check: restarts(1)},
		}},
		{name: "no: an operator's restart cut by the agent's death leaves the container down", policy: policy(KindNo, 0, false, false), steps: []step{
			{at: 0, ev: "start"},
			{at: 2, ev: "cmdstop"},
			{at: 30, ev: "exit", code: 143, want: DecisionNone, check: func(t *testing.T, s State) {
				if s.CommandStopped || s.Pending {
					t.Errorf("after the replayed exit: %+v", s)
				}
			}},
		}},
		{name: "a command's restart that starts clears CommandStopped, and a later exit is the policy's as usual", policy: policy(KindNo, 0, false, false), steps: []step{
			{at: 0, ev: "start"},
			{at: 2, ev: "cmdstop"},
			{at: 2.1, ev: "cmdrestart", check: func(t *testing.T, s State) {
				if s.CommandStopped {
					t.Errorf("after the command's start: %+v", s)
				}
			}},
			{at: 3, ev: "exit", code: 0, want: DecisionNone},
			{at: 3, ev: "exit", code: 0, want: DecisionNone}, // a replay repeats it
		}},
		{name: "no: an operator's restart is counted", policy: policy(KindNo, 0, false, false), steps: []step{
			{at: 0, ev: "start"},
			{at: 5, ev: "cmdstop"},
			{at: 5.1, ev: "cmdrestart", check: restarts(1)},
			{at: 6, ev: "exit", code: 1, want: DecisionNone, check: restarts(1)},
		}},
		{name: "an operator's restart of a container a crash left pending replaces the pending restart", policy: policy(KindUnlessStopped, 0, false, false), steps: []step{
			{at: 0, ev: "start"},
			{at: 1, ev: "exit", code: 1, want: DecisionRestart}, {at: 1, ev: "start"},
			{at: 2, ev: "exit", code: 1, want: DecisionBackoff, delay: time.Second},
			{at: 2.5, ev: "cmdrestart", check: func(t *testing.T, s State) {
				if s.Pending || !s.NextRestartAt.IsZero() || s.RestartCount != 2 || s.ConsecutiveRestarts != 2 {
					t.Errorf("after the command's restart: %+v", s)
				}
			}},
		}},
		{name: "an operator's restart of a stopped container clears the stop and a given-up limit", policy: policy(KindOnFailure, 1, false, false), steps: []step{
			{at: 0, ev: "start"},
			{at: 1, ev: "exit", code: 1, want: DecisionRestart}, {at: 1, ev: "start"},
			{at: 2, ev: "exit", code: 1, want: DecisionGiveUp},
			{at: 3, ev: "cmdrestart", check: func(t *testing.T, s State) {
				if s.GaveUp || s.Retries != 0 || s.RestartCount != 2 || s.ConsecutiveRestarts != 1 {
					t.Errorf("after the command's restart: %+v", s)
				}
			}},
			{at: 4, ev: "exit", code: 1, want: DecisionBackoff, delay: time.Second},
			{at: 5, ev: "stop"},
			{at: 6, ev: "cmdrestart", check: func(t *testing.T, s State) {
				if s.ExplicitlyStopped || s.RestartCount != 3 {
					t.Errorf("after the command's restart of a stopped container: %+v", s)
				}
			}},
		}},
		{name: "replayed start and exit change nothing", policy: policy(KindAlways, 0, false, false), steps: []step{
			{at: 0, ev: "start"},
			{at: 1, ev: "exit", code: 1, want: DecisionRestart}, {at: 1, ev: "start"},
			{at: 2, ev: "exit", code: 1, want: DecisionBackoff, delay: time.Second},
			{at: 2, ev: "exit", code: 1, want: DecisionBackoff, delay: time.Second},
			{at: 3, ev: "start"},
			{at: 3, ev: "start", check: func(t *testing.T, s State) {
				if s.RestartCount != 2 || s.ConsecutiveRestarts != 2 {
					t.Errorf("replay counted: %+v", s)
				}
			}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runSteps(t, NewTracker(tt.policy, tt.managedBy), tt.steps)
		})
	}
}

func TestTrackerResetAt(t *testing.T) {
	tr := NewTracker(policy(KindAlways, 0, false, false), "")
	tr.OnStart(secs(0))
	if _, ok := tr.ResetAt(); ok {
		t.Fatal("ResetAt with nothing to reset")
	}
	tr.OnExit(1, "error", secs(1))
	tr.OnStart(secs(1))
	at, ok := tr.ResetAt()
	if !ok || !at.Equal(secs(11)) {
		t.Fatalf("ResetAt = %v, %v; want %v", at, ok, secs(11))
	}
	if tr.Settle(secs(10.999)) {
		t.Fatal("Settle before ResetAt reset the backoff")
	}
	if !tr.Settle(secs(11)) || tr.State.ConsecutiveRestarts != 0 {
		t.Fatalf("Settle at ResetAt: %+v", tr.State)
	}
}

// TestTrackerPersist checks that a tracker survives a JSON round trip in the
// middle of a backoff, as the agent's state dir keeps it across restarts.
func TestTrackerPersist(t *testing.T) {
	tr := NewTracker(policy(KindOnFailure, 5, true, true), "")
	runSteps(t, tr, []step{
		{at: 0, ev: "start"},
		{at: 1, ev: "exit", code: 1, want: DecisionRestart}, {at: 1, ev: "start"},
		{at: 2, ev: "exit", code: 1, want: DecisionBackoff, delay: time.Second},
	})
	tr.State.ExplicitlyStopped = false
	b, err := json.Marshal(tr)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{`"kind":"on-failure"`, `"kind":"backoff"`, `"pending":true`} {
		if !strings.Contains(string(b), s) {
			t.Errorf("state %s lacks %s", b, s)
		}
	}
	var back Tracker
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back.Policy, tr.Policy) || !reflect.DeepEqual(back.State.Last, tr.State.Last) ||
		!back.State.NextRestartAt.Equal(tr.State.NextRestartAt) || back.State.Retries != tr.State.Retries {
		t.Fatalf("round trip:\n%+v\n%+v", back, *tr)
	}
	// The restored tracker carries on where the old one stopped.
	runSteps(t, &back, []step{
		{at: 2.5, ev: "exit", code: 1, want: DecisionBackoff, delay: 500 * time.Millisecond}, // replay
		{at: 3, ev: "start"},
		{at: 4, ev: "exit", code: 1, want: DecisionBackoff, delay: 2 * time.Second, check: func(t *testing.T, s State) {
			if s.RestartCount != 2 || s.Retries != 3 {
				t.Errorf("restored state: %+v", s)
			}
		}},
	})
}

func TestDecisionKindText(t *testing.T) {
	for k := DecisionRestart; k <= DecisionSkipManaged; k++ {
		b, err := k.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back DecisionKind
		if err := back.UnmarshalText(b); err != nil || back != k {
			t.Errorf("%v: round trip gave %v, %v", k, back, err)
		}
	}
	var k DecisionKind
	if err := k.UnmarshalText([]byte("reboot")); err == nil {
		t.Error("UnmarshalText accepted an unknown kind")
	}
}
