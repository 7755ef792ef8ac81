package remediation

import (
	"fmt"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// State is where a remediation is in its life.
type State string

const (
	// StatePending: decided, its command in the node's outbox, not yet sent.
	StatePending State = "pending"
	// StateDispatched: sent to the agent, no result yet.
	StateDispatched State = "dispatched"
	// StateSucceeded: the agent carried it out.
	StateSucceeded State = "succeeded"
	// StateFailed: the agent tried and failed, or found no such target.
	StateFailed State = "failed"
	// StateSuppressed: decided not to act (Result is the Reason), or the
	// agent did not carry it out because its fence no longer held (Result
	// fenced) or its policy refused it (Result refused).
	StateSuppressed State = "suppressed"
	// StateCancelled: the alert resolved before the command was sent.
	StateCancelled State = "cancelled"
	// StateExpired: its deadline passed before it was sent, or the agent
	// received it too late: it certainly did not run.
	StateExpired State = "expired"
	// StateUnknown: sent, and no result came by its deadline plus the
	// result grace: it may have run. Never sent again.
	StateUnknown State = "unknown"
)

// States lists every state.
var States = []State{StatePending, StateDispatched, StateSucceeded, StateFailed, StateSuppressed, StateCancelled, StateExpired, StateUnknown}

// Final reports whether s is an end state.
func (s State) Final() bool { return s != StatePending && s != StateDispatched }

// Outcome is how an agent answered a command.
type Outcome string

const (
	OutcomeSucceeded Outcome = "succeeded"
	OutcomeFailed    Outcome = "failed"
	// OutcomeFenced: the fence no longer held on the node.
	OutcomeFenced Outcome = "fenced"
	// OutcomeExpired: the agent received it after its deadline.
	OutcomeExpired Outcome = "expired"
	// OutcomeDuplicate: the agent had already run this command id.
	OutcomeDuplicate Outcome = "duplicate"
	// OutcomeNotFound: no such target on the node.
	OutcomeNotFound Outcome = "not_found"
	// OutcomeRefused: the agent refused it (not from this aggregator, a
	// namespace not allowed, more than a kill for another manager's
	// container, a host link); the message says which.
	OutcomeRefused Outcome = "refused"
)

// Outcomes lists every outcome.
var Outcomes = []Outcome{OutcomeSucceeded, OutcomeFailed, OutcomeFenced, OutcomeExpired, OutcomeDuplicate, OutcomeNotFound, OutcomeRefused}

// ParseOutcome checks an outcome's name.
func ParseOutcome(s string) (Outcome, error) {
	for _, o := range Outcomes {
		if string(o) == s {
			return o, nil
		}
	}
	return "", fmt.Errorf("unknown command outcome %q: %w", clip(s), errdefs.ErrInvalid)
}

// state is the remediation state an outcome leads to.
func (o Outcome) state() State {
	switch o {
	case OutcomeSucceeded, OutcomeDuplicate:
		return StateSucceeded
	case OutcomeFenced, OutcomeRefused:
		return StateSuppressed
	case OutcomeExpired:
		return StateExpired
	}
	return StateFailed
}

// Remediation results beyond the outcomes (the result label of
// vigil_remediations_total): the engine's own ends of a command.
const (
	ResultExpired   = "expired"
	ResultUnknown   = "unknown"
	ResultCancelled = "cancelled"
)

// Source says what asked for a remediation.
type Source string

const (
	SourceAlert    Source = "alert"
	SourceOperator Source = "operator"
)

// Remediation is one decision and what became of it: the record the API
// lists and the journal refers to.
type Remediation struct {
	ID     string `json:"id"`
	Source Source `json:"source"`
	// Rule that matched (alerts only).
	Rule string `json:"rule,omitempty"`
	// The alert: its name, fingerprint and startsAt (alerts only).
	AlertName     string    `json:"alert_name,omitempty"`
	Fingerprint   string    `json:"fingerprint,omitempty"`
	AlertStartsAt time.Time `json:"alert_starts_at,omitzero"`
	// RequestedBy: the operator's identity (operators only).
	RequestedBy string `json:"requested_by,omitempty"`
	// Reason it was asked for: the alert's summary annotation or name, or
	// the operator's reason.
	Reason string `json:"reason"`
	// Requested is the action asked for; Action the one decided (after
	// escalation, and a kill for a container another manager owns).
	Requested Action `json:"requested"`
	Action    Action `json:"action"`
	Signal    uint32 `json:"signal,omitempty"`
	Escalated bool   `json:"escalated,omitempty"`
	// Ref is the target as asked for; Target as resolved (empty when
	// it could not be).
	Ref    TargetRef `json:"ref"`
	Target Target    `json:"target"`
	Fence  Fence     `json:"fence"`
	DryRun bool      `json:"dry_run,omitempty"`
	State  State     `json:"state"`
	// Result: the suppression reason, the agent's outcome, or expired,
	// unknown, cancelled.
	Result string `json:"result,omitempty"`
	// Message: the decision's explanation, then the agent's detail.
	Message string `json:"message"`
	// ReceivedAt: when the webhook or request arrived (the duration
	// histogram starts here); CreatedAt when decided; UpdatedAt the last
	// change; Deadline the command's.
	ReceivedAt time.Time `json:"received_at"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
	Deadline   time.Time `json:"deadline,omitzero"`
}

// JournalKind is what a journal entry records.
type JournalKind string

const (
	JournalAlert      JournalKind = "alert"      // an alert received (firing or resolved)
	JournalRequest    JournalKind = "request"    // an operator's request received
	JournalDecision   JournalKind = "decision"   // a decision: act, or suppressed and why
	JournalDuplicate  JournalKind = "duplicate"  // an alert whose intent was claimed before
	JournalDispatched JournalKind = "dispatched" // a command handed to the node's stream
	JournalReturned   JournalKind = "returned"   // a dispatch that could not be sent, back in the outbox
	JournalResult     JournalKind = "result"     // the agent's answer
	JournalExpired    JournalKind = "expired"    // deadline passed before it was sent
	JournalUnknown    JournalKind = "unknown"    // sent, no answer by deadline + grace
	JournalCancelled  JournalKind = "cancelled"  // the alert resolved before it was sent
	JournalStorm      JournalKind = "storm"      // the storm guard began or ended holding actions
)

// JournalEntry is one line of the journal.
type JournalEntry struct {
	Time          time.Time   `json:"time"`
	Kind          JournalKind `json:"kind"`
	RemediationID string      `json:"remediation_id,omitempty"`
	AlertName     string      `json:"alert_name,omitempty"`
	Fingerprint   string      `json:"fingerprint,omitempty"`
	AlertStatus   AlertStatus `json:"alert_status,omitempty"`
	AlertStartsAt time.Time   `json:"alert_starts_at,omitzero"`
	Action        Action      `json:"action,omitempty"`
	Target        string      `json:"target,omitempty"`
	// Result: a suppression reason, an outcome, or "act".
	Result  string `json:"result,omitempty"`
	Message string `json:"message,omitempty"`
	Who     string `json:"who,omitempty"`
}

// Stored values.
type intentValue struct {
	RemediationID string    `json:"remediation_id"`
	Fingerprint   string    `json:"fingerprint"`
	StartsAt      time.Time `json:"starts_at"`
	Action        Action    `json:"action"`
	CreatedAt     time.Time `json:"created_at"`
	// LastSeen: the last delivery of the alert; the sweep keeps the intent
	// for Retention after it, so a long-firing alert never acts twice.
	LastSeen time.Time `json:"last_seen"`
}

type commandValue struct {
	Command
	State        State     `json:"state"`
	DispatchedAt time.Time `json:"dispatched_at,omitzero"`
}

type fleetValue struct {
	Times []time.Time `json:"times"`
}

type nodesValue struct {
	InFlight map[string]map[string]time.Time `json:"in_flight"`
}

type firingValue struct {
	Seen        time.Time `json:"seen"`
	Fingerprint string    `json:"fingerprint"`
}
