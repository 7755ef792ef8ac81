package restart

import (
	"fmt"
	"strconv"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// DecisionKind is what the restart policy decided. Its values are the
// protocol's RestartDecisionKind numbers, so that the agent converts with a
// plain cast.
type DecisionKind int

const (
	// DecisionRestart: restart now (the first restart since the backoff was
	// reset).
	DecisionRestart DecisionKind = iota + 1
	// DecisionBackoff: restart after Decision.Delay.
	DecisionBackoff
	// DecisionNone: do not restart, the policy says no.
	DecisionNone
	// DecisionGiveUp: do not restart, on-failure:N is exhausted.
	DecisionGiveUp
	// DecisionSkipExplicitStop: do not restart, an operator stopped the
	// container on purpose.
	DecisionSkipExplicitStop
	// DecisionSkipManaged: do not restart, another manager owns the container.
	DecisionSkipManaged
)

var decisionNames = [...]string{
	DecisionRestart:          "restart",
	DecisionBackoff:          "backoff",
	DecisionNone:             "none",
	DecisionGiveUp:           "give_up",
	DecisionSkipExplicitStop: "skip_explicit_stop",
	DecisionSkipManaged:      "skip_managed",
}

// String returns the kind in snake case ("give_up").
func (k DecisionKind) String() string {
	if k >= DecisionRestart && int(k) < len(decisionNames) {
		return decisionNames[k]
	}
	return "unknown(" + strconv.Itoa(int(k)) + ")"
}

// MarshalText writes the kind as its name, so that state files read well.
func (k DecisionKind) MarshalText() ([]byte, error) {
	if k == 0 {
		return []byte{}, nil
	}
	if k < DecisionRestart || int(k) >= len(decisionNames) {
		return nil, fmt.Errorf("restart decision kind %d: %w", int(k), errdefs.ErrInvalid)
	}
	return []byte(k.String()), nil
}

// UnmarshalText is the inverse of MarshalText.
func (k *DecisionKind) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*k = 0
		return nil
	}
	for c := DecisionRestart; int(c) < len(decisionNames); c++ {
		if string(b) == decisionNames[c] {
			*k = c
			return nil
		}
	}
	return fmt.Errorf("restart decision kind %q: %w", b, errdefs.ErrInvalid)
}

// Decision is one decision of the restart policy.
type Decision struct {
	// Kind is what was decided.
	Kind DecisionKind `json:"kind,omitempty"`
	// Delay is how long to wait before restarting (DecisionBackoff); 0
	// otherwise.
	Delay time.Duration `json:"delay,omitempty"`
	// At is when the restart is due (DecisionRestart, DecisionBackoff); zero
	// otherwise.
	At time.Time `json:"at,omitzero"`
	// Reason says why, for the event stream and the log.
	Reason string `json:"reason,omitempty"`
}

// Restarts reports whether the decision asks for a restart.
func (d Decision) Restarts() bool {
	return d.Kind == DecisionRestart || d.Kind == DecisionBackoff
}

// State is a container's restart state. It is plain data: the agent persists
// it (JSON) in its state dir and puts it back into a Tracker after an agent
// restart.
type State struct {
	// Running is true between a start and the next exit.
	Running bool `json:"running"`
	// StartedAt is when the current (or last) task started.
	StartedAt time.Time `json:"started_at,omitzero"`
	// HealthySince is when the current run first turned healthy; zero when it
	// is not healthy now.
	HealthySince time.Time `json:"healthy_since,omitzero"`
	// ExplicitlyStopped records an operator's stop: no policy restarts the
	// container until it is started again.
	ExplicitlyStopped bool `json:"explicitly_stopped,omitempty"`
	// GaveUp is true once on-failure:N is exhausted, until an operator starts
	// the container again.
	GaveUp bool `json:"gave_up,omitempty"`
	// RestartCount counts the restarts carried out over the container's
	// lifetime (task starts the tracker scheduled, and those of an
	// operator's restart: OnCommandRestart); it only grows.
	RestartCount uint64 `json:"restart_count"`
	// Retries counts the restarts decided since the last operator start; it
	// is what on-failure:N limits.
	Retries int `json:"retries"`
	// ConsecutiveRestarts counts the restarts decided since the backoff was
	// last reset; it picks the next delay.
	ConsecutiveRestarts int `json:"consecutive_restarts"`
	// CurrentDelay is the delay of the last restart decided since the reset;
	// 0 after a reset.
	CurrentDelay time.Duration `json:"current_delay"`
	// Pending is true while a decided restart has not happened yet.
	Pending bool `json:"pending,omitempty"`
	// NextRestartAt is when the pending restart is due; zero when none is.
	NextRestartAt time.Time `json:"next_restart_at,omitzero"`
	// CrashLooping is true when the container keeps failing faster than it
	// can reset its backoff: ConsecutiveRestarts reached
	// Backoff.CrashLoopAfter, or the delay reached Backoff.Max. A reset
	// clears it.
	CrashLooping bool `json:"crash_looping,omitempty"`
	// CommandStopped is true between the exit an operator's restart caused
	// (OnCommandStop) and its start (OnCommandRestart), or whatever ends it
	// otherwise. Found set by an agent that starts afresh, it says the
	// previous run died in the middle of that restart: its task stopped,
	// the new one never started. The command is not carried out again; the
	// policy decides, as on a failed restart (OnExit's replay of that exit,
	// or the agent's start-up recovery).
	CommandStopped bool `json:"command_stopped,omitempty"`
	// Last is the last decision taken.
	Last Decision `json:"last,omitzero"`
}

// Tracker turns one container's lifecycle into restart decisions. It is a
// plain value with exported fields: no I/O, no clock (every method takes the
// time of the event), no goroutines. It is not safe for concurrent use; the
// agent serializes calls per container.
//
// The agent's side of the contract:
//   - Call OnStart for every task start (its own restarts included), OnExit
//     for every task exit, OnHealthy/OnUnhealthy for health transitions,
//     OnExplicitStop/OnExplicitStart for an operator's stop or start (through
//     Vigil's API, or a task deleted by someone else while it ran), and
//     OnCommandStop/OnCommandRestart instead of OnExit/OnStart for the exit
//     and the start of an operator's restart through Vigil's API.
//   - Keep at most one restart timer per container and (re)arm it to
//     Decision.At whenever a decision Restarts(); the tracker repeats the
//     pending decision when asked again (for instance by the exit that
//     follows a kill for an unhealthy restart), so re-arming is idempotent.
//   - After OnExplicitStop, cancel the timer (State.Pending is then false).
//   - For an unhealthy restart: kill the task at once, then start a new task
//     when the decision is due.
//   - Persist State after each call that returns a decision or changes it.
type Tracker struct {
	// Policy is the container's restart configuration. The agent may replace
	// it (new labels, new defaults) between calls.
	Policy Policy `json:"policy"`
	// ManagedBy names the manager that owns the container when it is not
	// Vigil ("kubelet", "docker", "containerd"); "" or "vigil" means Vigil.
	ManagedBy string `json:"managed_by,omitempty"`
	// State is the restart state.
	State State `json:"state"`
}

// NewTracker returns a tracker with a fresh state.
func NewTracker(p Policy, managedBy string) *Tracker {
	return &Tracker{Policy: p, ManagedBy: managedBy}
}

func (t *Tracker) managed() bool { return t.ManagedBy != "" && t.ManagedBy != "vigil" }

// OnStart records a task start at now (the task's start time). A start the
// tracker scheduled (a restart was pending) counts as a restart; any other
// start is an operator's and has OnExplicitStart's effect, as `docker start`
// resets Docker's restart count (the start of an operator's restart through
// Vigil is reported with OnCommandRestart instead). Calling it again with
// the same start time while running is a no-op, so the agent may replay
// starts after its own restart.
func (t *Tracker) OnStart(now time.Time) {
	s := &t.State
	if s.Running && s.StartedAt.Equal(now) {
		return
	}
	if s.Pending {
		s.RestartCount++
	} else {
		t.operatorStart()
	}
	s.Pending, s.NextRestartAt, s.CommandStopped = false, time.Time{}, false
	s.Running, s.StartedAt, s.HealthySince = true, now, time.Time{}
}

// OnExplicitStart records that an operator asked for the container to start:
// it clears an explicit stop and a given-up on-failure limit, and resets the
// backoff. The task start that follows is reported with OnStart.
func (t *Tracker) OnExplicitStart(now time.Time) {
	t.operatorStart()
	t.State.Pending, t.State.NextRestartAt = false, time.Time{}
}

func (t *Tracker) operatorStart() {
	s := &t.State
	s.ExplicitlyStopped, s.GaveUp, s.Retries, s.CommandStopped = false, false, 0, false
	t.resetBackoff()
}

// OnCommandStop records the exit of the running task that an operator's
// restart stopped (a RESTART command through Vigil, as `docker restart`).
// The exit is the command's, not the workload's failure: nothing is
// decided, and nothing advances (not the backoff, not the crash-loop state,
// not on-failure's count), so the policy neither restarts the container a
// second time nor takes it for a crash. The restart's start follows with
// OnCommandRestart; until then CommandStopped says the restart is half done. A run stable long enough still resets the backoff, as
// at any exit.
func (t *Tracker) OnCommandStop(now time.Time) {
	t.Settle(now)
	s := &t.State
	s.Running, s.HealthySince, s.CommandStopped = false, time.Time{}, true
}

// OnCommandRestart records the start of the task an operator's restart
// made (a RESTART command through Vigil). It is a restart, counted once in
// RestartCount whatever the policy (no included), and it replaces a pending
// restart of the policy (the agent cancels its timer). The container runs
// by the operator's will, as after OnExplicitStart: an explicit stop, a
// given-up on-failure limit and on-failure's count are cleared. It is no
// crash and no fresh start: the backoff and the crash-loop state stay as
// they were (a stable run resets them, as always). Calling it again with
// the same start time while running is a no-op.
func (t *Tracker) OnCommandRestart(now time.Time) {
	s := &t.State
	if s.Running && s.StartedAt.Equal(now) {
		return
	}
	s.RestartCount++
	s.ExplicitlyStopped, s.GaveUp, s.Retries, s.CommandStopped = false, false, 0, false
	s.Pending, s.NextRestartAt = false, time.Time{}
	s.Running, s.StartedAt, s.HealthySince = true, now, time.Time{}
}

// OnUnseenExit records that the running task ended while no one watched
// (the agent was down) and is gone, its exit status with it: the tracker
// is no longer running, and nothing is decided (the agent decides what the
// missing task means: an operator's stop, or a lost task after a reboot).
func (t *Tracker) OnUnseenExit(now time.Time) {
	s := &t.State
	s.Running, s.HealthySince = false, time.Time{}
}

// OnExplicitStop records an operator's stop: no policy restarts the
// container until it is started again, and a pending restart is cancelled
// (the agent cancels its timer).
func (t *Tracker) OnExplicitStop(now time.Time) {
	s := &t.State
	s.ExplicitlyStopped, s.CommandStopped = true, false
	s.Pending, s.NextRestartAt = false, time.Time{}
}

// OnHealthy records that the running container turned (or is) healthy.
func (t *Tracker) OnHealthy(now time.Time) {
	s := &t.State
	if s.Running && s.HealthySince.IsZero() {
		s.HealthySince = now
	}
	t.Settle(now)
}

// OnExit records a task exit with its exit code (128+n for signal n) and
// decides what to do. reason ("error", "oom_killed", ...) only goes into the
// decision's text. A non-zero code is a failure.
//
// Repeated calls for the same exit (the tracker is not running) return the
// last decision again without counting anything, so the agent may replay
// exits after its own restart; except the exit of an operator's restart
// whose start never came (CommandStopped: the agent died in between),
// which is decided as a failed restart.
func (t *Tracker) OnExit(code uint32, reason string, now time.Time) Decision {
	s := &t.State
	if !s.Running && !s.StartedAt.IsZero() {
		if s.CommandStopped {
			return t.OnRestartFailed(CommandCut, now)
		}
		return t.repeat(now)
	}
	t.Settle(now)
	s.Running, s.HealthySince = false, time.Time{}
	what := fmt.Sprintf("exited with code %d", code)
	if reason != "" {
		what += " (" + reason + ")"
	}
	if d, ok := t.precheck(what, now); ok {
		return t.decide(d)
	}
	if t.Policy.Kind == KindOnFailure && code == 0 {
		return t.decide(Decision{Kind: DecisionNone, Reason: what + "; on-failure restarts only after a non-zero exit"})
	}
	return t.schedule(what, now)
}

// OnUnhealthy records that the container turned unhealthy and decides
// whether to restart it (RestartOnUnhealthy). Under on-failure an unhealthy
// restart counts against the retry limit.
func (t *Tracker) OnUnhealthy(now time.Time) Decision {
	s := &t.State
	t.Settle(now)
	s.HealthySince = time.Time{}
	const what = "turned unhealthy"
	if t.managed() {
		return t.decide(Decision{Kind: DecisionSkipManaged, Reason: what + "; restarts belong to " + t.ManagedBy})
	}
	if t.Policy.Kind == KindNo || !t.Policy.RestartOnUnhealthy {
		return t.decide(Decision{Kind: DecisionNone, Reason: what + "; restart on unhealthy is off (" + LabelOnUnhealthy + ")"})
	}
	if !s.Running {
		return t.decide(Decision{Kind: DecisionNone, Reason: what + " but is not running"})
	}
	if d, ok := t.precheck(what, now); ok {
		return t.decide(d)
	}
	return t.schedule(what, now)
}

// precheck returns the decision that applies before the policy's own logic:
// another manager, policy no, a pending restart, an explicit stop, a limit
// already given up on.
func (t *Tracker) precheck(what string, now time.Time) (Decision, bool) {
	s := &t.State
	switch {
	case t.managed():
		return Decision{Kind: DecisionSkipManaged, Reason: what + "; restarts belong to " + t.ManagedBy}, true
	case t.Policy.Kind == KindNo:
		return Decision{Kind: DecisionNone, Reason: what + "; restart policy is no"}, true
	case s.Pending:
		d := t.pending(now)
		d.Reason = what + "; a restart is already scheduled"
		return d, true
	case s.ExplicitlyStopped:
		return Decision{Kind: DecisionSkipExplicitStop, Reason: what + "; stopped by an operator, policy " + t.Policy.String() + " does not restart it"}, true
	case s.GaveUp:
		return Decision{Kind: DecisionGiveUp, Reason: what + "; gave up earlier: " + t.giveUpText()}, true
	}
	return Decision{}, false
}

// schedule decides a restart, with the next backoff delay, or gives up when
// on-failure:N is exhausted.
func (t *Tracker) schedule(what string, now time.Time) Decision {
	s, p := &t.State, t.Policy
	if p.Kind == KindOnFailure && p.MaxRetries > 0 && s.Retries >= p.MaxRetries {
		s.GaveUp = true
		return t.decide(Decision{Kind: DecisionGiveUp, Reason: what + "; " + t.giveUpText()})
	}
	delay := p.Backoff.delay(s.ConsecutiveRestarts)
	s.ConsecutiveRestarts++
	s.Retries++
	s.CurrentDelay = delay
	s.Pending, s.NextRestartAt = true, now.Add(delay)
	s.CrashLooping = s.CrashLooping || s.ConsecutiveRestarts >= p.Backoff.CrashLoopAfter || delay >= p.Backoff.Max
	d := Decision{Kind: DecisionRestart, At: s.NextRestartAt}
	attempt := fmt.Sprintf("restart %d", s.Retries)
	if p.Kind == KindOnFailure && p.MaxRetries > 0 {
		attempt += " of " + strconv.Itoa(p.MaxRetries)
	}
	d.Reason = fmt.Sprintf("%s; policy %s: %s", what, p, attempt)
	if delay > 0 {
		d.Kind, d.Delay = DecisionBackoff, delay
		d.Reason += fmt.Sprintf(" after %s backoff (%d in a row without a stable run)", delay, s.ConsecutiveRestarts)
	} else {
		d.Reason += " now"
	}
	if s.CrashLooping {
		d.Reason += "; crash-looping"
	}
	return t.decide(d)
}

// OnRestartFailed records that the agent could not carry out the pending
// restart (the task could not be created or started) and decides the next
// attempt: a restart attempt that failed counts as a failed run.
func (t *Tracker) OnRestartFailed(cause string, now time.Time) Decision {
	s := &t.State
	s.Pending, s.NextRestartAt, s.Running, s.CommandStopped = false, time.Time{}, false, false
	what := "restart failed: " + cause
	if d, ok := t.precheck(what, now); ok {
		return t.decide(d)
	}
	return t.schedule(what, now)
}

// CommandCut is the cause of OnRestartFailed for an operator's restart that
// an agent's death cut between its stop and its start.
const CommandCut = "the agent stopped in the middle of an operator's restart (a RESTART command), after the task's stop and before its start"

func (t *Tracker) giveUpText() string {
	return fmt.Sprintf("policy %s allows %d restarts and %d were made", t.Policy, t.Policy.MaxRetries, t.State.Retries)
}

// pending returns the pending restart as a decision, with the delay left.
func (t *Tracker) pending(now time.Time) Decision {
	d := Decision{Kind: DecisionRestart, At: t.State.NextRestartAt}
	if left := t.State.NextRestartAt.Sub(now); left > 0 {
		d.Kind, d.Delay = DecisionBackoff, left
	}
	return d
}

// repeat answers a repeated exit with the last decision (the pending
// restart's delay brought up to date).
func (t *Tracker) repeat(now time.Time) Decision {
	d := t.State.Last
	if t.State.Pending {
		p := t.pending(now)
		d.Kind, d.Delay, d.At = p.Kind, p.Delay, p.At
	}
	return d
}

func (t *Tracker) decide(d Decision) Decision {
	t.State.Last = d
	return d
}

// stableSince returns when the current run became stable: its start, or,
// with a health check, when it turned healthy. Zero when it is not stable.
func (t *Tracker) stableSince() time.Time {
	s := &t.State
	if !s.Running {
		return time.Time{}
	}
	if t.Policy.HealthChecked {
		return s.HealthySince
	}
	return s.StartedAt
}

// ResetAt returns when the backoff of the running container will reset if
// it stays up (and healthy, where checked), so that the agent can call
// Settle then; ok is false when no reset is coming (nothing to reset, not
// running, or not healthy).
func (t *Tracker) ResetAt() (at time.Time, ok bool) {
	s := &t.State
	since := t.stableSince()
	if since.IsZero() || (s.ConsecutiveRestarts == 0 && !s.CrashLooping) {
		return time.Time{}, false
	}
	return since.Add(t.Policy.Backoff.ResetAfter), true
}

// Settle resets the backoff when the running container has been up (and
// healthy, where checked) for at least Backoff.ResetAfter at now, and
// reports whether it did. Every On... method settles first; the agent calls
// it at ResetAt so that the state it reports is current.
func (t *Tracker) Settle(now time.Time) bool {
	at, ok := t.ResetAt()
	if !ok || now.Before(at) {
		return false
	}
	t.resetBackoff()
	return true
}

func (t *Tracker) resetBackoff() {
	s := &t.State
	s.ConsecutiveRestarts, s.CurrentDelay, s.CrashLooping = 0, 0, false
}
