package remediation

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/store"
)

// Config configures an Engine. Zero fields take the defaults written beside
// them (filled in by New).
type Config struct {
	// Store holds the intents, the journal, the outboxes and the budgets.
	// Required. Shared by every aggregator replica (bbolt: one replica).
	Store store.Store
	// Fleet resolves targets. Required.
	Fleet FleetView
	// Rules in force; default: DefaultRules (no rule, only operators act).
	Rules *RuleSet
	// Registry for the engine's metrics; default: a private registry (no
	// metrics exposed). New fails if they are already registered there.
	Registry prometheus.Registerer
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Logger; default: discard.
	Logger *slog.Logger
	// Tick: how often Run expires commands past their deadline and
	// re-evaluates the storm guard. Default 1 s.
	Tick time.Duration
	// SweepInterval: how often Run deletes what is past Retention, when
	// Leader says this replica is the leader. Default 10 m.
	SweepInterval time.Duration
	// Leader reports whether this replica runs the once-only housekeeping
	// (the sweep). Default nil: always (one replica on bbolt). With etcd,
	// the aggregator passes its election's answer.
	Leader func() bool
	// MaxAttempts of one decision's store transaction when other writers
	// changed what it read (another replica, or this one's Expire);
	// default 32. Past it the webhook answers 503 and Alertmanager retries.
	MaxAttempts int
}

// Engine is the remediation engine: it takes webhooks and operators'
// requests, decides (Decide), and writes the decision, the claim of its
// intent, the budgets it charges, the journal and the command in one store
// transaction conditioned on the revisions it read, so that any number of
// deliveries and replicas come to one action. Commands reach agents through
// Deliver; their results come back through RecordResult.
//
// All methods are safe for concurrent use. A local mutex orders this
// replica's decisions, to spare them conflicts with each other; correctness
// never rests on it, only on the store's conditions.
type Engine struct {
	cfg       Config
	st        store.Store
	fleet     FleetView
	rules     *RuleSet
	now       func() time.Time
	log       *slog.Logger
	m         *metrics
	mu        sync.Mutex // orders this replica's decisions (not for correctness)
	gmu       sync.Mutex // guards queue and leading (group commit of webhooks)
	queue     []*receiveReq
	leading   bool
	journalNS atomic.Int64 // the last journal key's time
	inst      uint32
	storm     atomic.Bool
	running   atomic.Bool
}

// New checks cfg, fills its defaults and registers the metrics.
func New(cfg Config) (*Engine, error) {
	if cfg.Store == nil {
		return nil, fmt.Errorf("remediation: no store: %w", errdefs.ErrInvalid)
	}
	if cfg.Fleet == nil {
		return nil, fmt.Errorf("remediation: no fleet view: %w", errdefs.ErrInvalid)
	}
	if cfg.Rules == nil {
		cfg.Rules = StaticRuleSet(DefaultRules())
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Tick <= 0 {
		cfg.Tick = time.Second
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = 10 * time.Minute
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 32
	}
	m, err := newMetrics(cfg.Registry)
	if err != nil {
		return nil, err
	}
	return &Engine{cfg: cfg, st: cfg.Store, fleet: cfg.Fleet, rules: cfg.Rules, now: cfg.Now, log: cfg.Logger, m: m, inst: rand.Uint32()}, nil
}

// Rules is the rule set in force (Reload it on SIGHUP).
func (e *Engine) Rules() *RuleSet { return e.rules }

// errExhausted: a transaction kept conflicting with other writers.
var errExhausted = fmt.Errorf("the store kept changing under the decision: %w", errdefs.ErrUnavailable)

// atomically runs fn in a fresh transaction and commits it, again from the
// start while the commit finds that what fn read has changed.
func (e *Engine) atomically(ctx context.Context, fn func(t *txn) error) (store.TxnResult, error) {
	for attempt := 0; attempt < e.cfg.MaxAttempts; attempt++ {
		t := newTxn(e.st)
		if err := fn(t); err != nil {
			return store.TxnResult{}, err
		}
		res, err := t.commit(ctx)
		if err != nil {
			return res, fmt.Errorf("writing the remediation journal: %w", err)
		}
		if res.Succeeded {
			return res, nil
		}
		if attempt > 2 {
			select {
			case <-ctx.Done():
				return res, context.Cause(ctx)
			case <-time.After(time.Duration(rand.Int64N(int64(time.Millisecond) << min(attempt, 6)))):
			}
		}
	}
	return store.TxnResult{}, errExhausted
}

// addJournal appends j. Its key's time is j.Time, made strictly
// increasing within this engine, so that entries written at one instant
// (one transaction's) still list in the order they were written.
func (e *Engine) addJournal(t *txn, j JournalEntry) {
	ns := j.Time.UnixNano()
	for {
		last := e.journalNS.Load()
		if ns <= last {
			ns = last + 1
		}
		if e.journalNS.CompareAndSwap(last, ns) {
			break
		}
	}
	key := fmt.Sprintf("%s%s-%08x", journalPrefix, inverted(time.Unix(0, ns)), e.inst)
	t.put(key, j)
}

// readBudget reads the shared budgets that rs enforces and the target's
// history. A limit turned off is neither read nor written: its key is not
// a condition of the transaction, and does not grow.
func readBudget(ctx context.Context, t *txn, rs *Rules, size FleetSize, target string) (Budget, error) {
	var f fleetValue
	var n nodesValue
	var tb TargetBudget
	if rs.MaxActionsPerMinute > 0 {
		if _, err := t.getJSON(ctx, fleetKey, &f); err != nil {
			return Budget{}, err
		}
	}
	if rs.MaxNodes(size.Nodes) > 0 {
		if _, err := t.getJSON(ctx, nodesKey, &n); err != nil {
			return Budget{}, err
		}
	}
	if target != "" {
		if _, err := t.getJSON(ctx, targetKey(target), &tb); err != nil {
			return Budget{}, err
		}
	}
	return Budget{FleetTimes: f.Times, InFlight: n.InFlight, Target: tb}, nil
}

func writeBudget(t *txn, rs *Rules, size FleetSize, target string, b Budget) {
	if rs.MaxActionsPerMinute > 0 {
		t.put(fleetKey, fleetValue{Times: b.FleetTimes})
	}
	if rs.MaxNodes(size.Nodes) > 0 {
		t.put(nodesKey, nodesValue{InFlight: b.InFlight})
	}
	t.put(targetKey(target), b.Target)
}

// decided is the outcome of one decision, for metrics after the commit.
type decided struct {
	rec       Remediation
	duplicate bool
	cancelled bool
}

// apply writes a decision: the record, the claim, the command and the
// budgets. intent is "" for operators' requests.
func (e *Engine) apply(ctx context.Context, t *txn, rec *Remediation, d Decision, in Input, intent string, iv intentValue) error {
	now := in.Now
	rec.Action, rec.Signal, rec.Escalated, rec.Target, rec.Fence = d.Action, d.Signal, d.Escalated, d.Target, d.Fence
	rec.Message, rec.CreatedAt, rec.UpdatedAt = d.Message, now, now
	rec.DryRun = d.Reason == ReasonDryRun
	if rec.Action == 0 {
		rec.Action = in.Action
	}
	switch {
	case d.Act:
		rec.State, rec.Deadline = StatePending, now.Add(in.Rules.CommandDeadline)
	default:
		rec.State, rec.Result = StateSuppressed, string(d.Reason)
	}
	if d.Claim && intent != "" {
		iv.RemediationID, iv.CreatedAt, iv.LastSeen = rec.ID, now, now
		t.put(intent, iv)
	}
	t.put(recordKey(rec.ID), rec)
	result := "act"
	if !d.Act {
		result = string(d.Reason)
	}
	e.addJournal(t, JournalEntry{Time: now, Kind: JournalDecision, RemediationID: rec.ID, AlertName: rec.AlertName,
		Fingerprint: rec.Fingerprint, AlertStartsAt: rec.AlertStartsAt, Action: rec.Action, Target: targetString(rec), Result: result,
		Message: rec.Message, Who: rec.RequestedBy})
	if !d.Act {
		return nil
	}
	cmd := commandValue{State: StatePending, Command: Command{ID: rec.ID, Action: d.Action, Signal: d.Signal, Target: d.Target,
		Fence: d.Fence, Deadline: rec.Deadline, Reason: rec.Reason}}
	t.put(commandKey(d.Target.Node, rec.ID), cmd)
	writeBudget(t, in.Rules, in.Fleet, d.Target.Key(), in.Budget.Charge(d, now, rec.ID, rec.Deadline.Add(in.Rules.ResultGrace)))
	return nil
}

func targetString(r *Remediation) string {
	if r.Target.Node != "" {
		return r.Target.Key()
	}
	return r.Ref.String()
}

// Summary says what became of a webhook's alerts.
type Summary struct {
	Alerts     int      `json:"alerts"`
	Acted      int      `json:"acted"`
	Suppressed int      `json:"suppressed"`
	Duplicates int      `json:"duplicates"`
	Cancelled  int      `json:"cancelled"`
	Unmatched  int      `json:"unmatched"`
	IDs        []string `json:"remediations,omitempty"`
}

type prepared struct {
	a         *Alert
	rule      *Rule
	ref       TargetRef
	state     TargetState
	lookupErr error
	target    string // the target's key, or the ref's form when unresolved
	intent    string
}

// Receive journals and decides every alert of w, and returns once that is
// committed: the intents are claimed, the commands in their nodes'
// outboxes. An error means nothing of w was written (a store that cannot be
// written, or kept conflicting): the webhook answers 5xx and Alertmanager
// delivers again, which is then safe.
//
// Webhooks received at the same time are committed together, in one store
// transaction (group commit, as bbolt's Batch does): the cost of a webhook
// is the store's fsync, shared by all those waiting for it. One caller at a
// time leads a group and the others wait for it; a group holds at most
// maxGroupAlerts alerts. Receive blocks until its webhook is committed or
// failed, whatever ctx does: its webhook may be in a group under way.
func (e *Engine) Receive(ctx context.Context, w *Webhook, receivedAt time.Time) (Summary, error) {
	req := &receiveReq{w: w, received: receivedAt, done: make(chan struct{}), lead: make(chan struct{})}
	e.gmu.Lock()
	e.queue = append(e.queue, req)
	leader := !e.leading
	e.leading = true
	e.gmu.Unlock()
	if !leader {
		select {
		case <-req.done:
			return req.sum, req.err
		case <-req.lead:
		}
	}
	// Lead one group (with this webhook in it), then hand the lead to the
	// first webhook still waiting, so no caller serves others for long.
	e.gmu.Lock()
	var group []*receiveReq
	alerts := 0
	for len(e.queue) > 0 && (len(group) == 0 || alerts+len(e.queue[0].w.Alerts) <= maxGroupAlerts) {
		alerts += len(e.queue[0].w.Alerts)
		group = append(group, e.queue[0])
		e.queue = e.queue[1:]
	}
	e.gmu.Unlock()
	gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), groupTimeout)
	e.receiveGroup(gctx, group)
	cancel()
	e.gmu.Lock()
	if len(e.queue) > 0 {
		close(e.queue[0].lead)
	} else {
		e.leading = false
	}
	e.gmu.Unlock()
	<-req.done
	return req.sum, req.err
}

// maxGroupAlerts bounds one group commit; groupTimeout bounds its store
// transaction (the callers waiting for it do not carry their own deadline
// into it).
const (
	maxGroupAlerts = 1000
	groupTimeout   = 10 * time.Second
)

type receiveReq struct {
	w        *Webhook
	received time.Time
	sum      Summary
	err      error
	done     chan struct{} // closed when sum and err are set
	lead     chan struct{} // closed when this caller is to lead the next group
}

// receiveGroup decides the alerts of a group of webhooks in one store
// transaction and answers each caller.
func (e *Engine) receiveGroup(ctx context.Context, group []*receiveReq) {
	rs := e.rules.Current()
	size := e.fleet.Size()
	ps := make([][]prepared, len(group))
	total := 0
	for g, req := range group {
		w := req.w
		total += len(w.Alerts)
		ps[g] = make([]prepared, len(w.Alerts))
		for i := range w.Alerts {
			a := &w.Alerts[i]
			p := prepared{a: a, rule: rs.Match(a.Labels)}
			if p.rule != nil {
				p.ref = p.rule.Ref(a.Labels)
				p.state, p.lookupErr = e.fleet.Lookup(p.ref)
				p.target = p.ref.String()
				if p.lookupErr == nil {
					p.target = p.state.Target.Key()
				}
				p.intent = intentKey(a.Fingerprint, a.StartsAt, p.rule.Action)
			}
			ps[g][i] = p
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	sums := make([]Summary, len(group))
	var out []decided
	var storm bool
	_, err := e.atomically(ctx, func(t *txn) error {
		out = out[:0]
		now := e.now()
		firing, err := e.firingTargets(ctx, rs, now)
		if err != nil {
			return err
		}
		for _, gp := range ps {
			for _, p := range gp {
				if p.rule != nil && p.a.Status == StatusFiring {
					firing[p.target] = struct{}{}
				}
			}
		}
		storm = stormActive(rs, len(firing), size)
		for g, gp := range ps {
			sums[g] = Summary{Alerts: len(gp)}
			sum := &sums[g]
			for _, p := range gp {
				d, err := e.decideAlert(ctx, t, rs, size, p, now, group[g].received, storm, len(firing))
				if err != nil {
					return err
				}
				switch {
				case d == nil:
					sum.Unmatched++
					continue
				case d.duplicate:
					sum.Duplicates++
				case d.cancelled:
					sum.Cancelled++
				case d.rec.State == StatePending:
					sum.Acted++
				case d.rec.ID != "":
					sum.Suppressed++
				}
				if d.rec.ID != "" {
					sum.IDs = append(sum.IDs, d.rec.ID)
				}
				if d.rec.ID != "" || d.duplicate {
					out = append(out, *d)
				}
			}
		}
		return nil
	})
	for g, req := range group {
		req.sum, req.err = sums[g], err
		if err != nil {
			req.sum = Summary{}
		}
		close(req.done)
	}
	if err != nil {
		return
	}
	e.setStorm(storm, total)
	for _, d := range out {
		switch {
		case d.duplicate:
			e.m.suppressed.WithLabelValues(string(ReasonDuplicate)).Inc()
		case d.cancelled:
			e.m.suppressed.WithLabelValues(string(ReasonResolved)).Inc()
			e.m.remediations.WithLabelValues(d.rec.Action.String(), ResultCancelled).Inc()
		case d.rec.State == StateSuppressed:
			e.m.suppressed.WithLabelValues(d.rec.Result).Inc()
		}
		if d.rec.ID != "" {
			e.log.Info("remediation decided", "id", d.rec.ID, "rule", d.rec.Rule, "alert", d.rec.AlertName, "action", d.rec.Action.String(),
				"target", targetString(&d.rec), "state", string(d.rec.State), "result", d.rec.Result, "message", d.rec.Message)
		}
	}
}

// decideAlert journals one alert and decides it within t. nil: no rule
// matched; an empty decided: a resolved alert that cancelled nothing.
func (e *Engine) decideAlert(ctx context.Context, t *txn, rs *Rules, size FleetSize, p prepared, now, received time.Time, storm bool, firing int) (*decided, error) {
	a := p.a
	j := JournalEntry{Time: now, Kind: JournalAlert, AlertName: a.Name(), Fingerprint: a.Fingerprint, AlertStatus: a.Status,
		AlertStartsAt: a.StartsAt, Target: p.target}
	if p.rule == nil {
		j.Message = "no rule matches"
		e.addJournal(t, j)
		return nil, nil
	}
	j.Action, j.Message = p.rule.Action, "rule "+p.rule.Name
	e.addJournal(t, j)
	if a.Status == StatusResolved {
		t.del(firingKey(p.target))
		d, err := e.resolve(ctx, t, p, now)
		if err != nil {
			return nil, err
		}
		if d == nil {
			return &decided{}, nil // nothing to cancel: counted as none
		}
		return d, nil
	}
	t.put(firingKey(p.target), firingValue{Seen: now, Fingerprint: a.Fingerprint})
	var iv intentValue
	claimed, err := t.getJSON(ctx, p.intent, &iv)
	if err != nil {
		return nil, err
	}
	if claimed {
		iv.LastSeen = now
		t.put(p.intent, iv)
		e.addJournal(t, JournalEntry{Time: now, Kind: JournalDuplicate, RemediationID: iv.RemediationID, AlertName: a.Name(),
			Fingerprint: a.Fingerprint, AlertStartsAt: a.StartsAt, Action: p.rule.Action, Target: p.target, Result: string(ReasonDuplicate),
			Message: "this alert's intent was claimed at " + iv.CreatedAt.Format(time.RFC3339Nano) + " by remediation " + iv.RemediationID})
		return &decided{duplicate: true}, nil
	}
	budgetKey := ""
	if p.lookupErr == nil {
		budgetKey = p.target
	}
	b, err := readBudget(ctx, t, rs, size, budgetKey)
	if err != nil {
		return nil, err
	}
	in := Input{Now: now, Rules: rs, Rule: p.rule, Action: p.rule.Action, Signal: p.rule.Signal, Ref: p.ref, State: p.state,
		LookupErr: p.lookupErr, AlertContainerID: a.Labels["container_id"], Fleet: size, Budget: b}
	if storm {
		in.FiringTargets = firing
	}
	d := Decide(in)
	rec := Remediation{ID: newID(now), Source: SourceAlert, Rule: p.rule.Name, AlertName: a.Name(), Fingerprint: a.Fingerprint,
		AlertStartsAt: a.StartsAt, Reason: alertReason(a), Requested: p.rule.Action, Ref: p.ref, ReceivedAt: received}
	if err := e.apply(ctx, t, &rec, d, in, p.intent, intentValue{Fingerprint: a.Fingerprint, StartsAt: a.StartsAt, Action: p.rule.Action}); err != nil {
		return nil, err
	}
	return &decided{rec: rec}, nil
}

func alertReason(a *Alert) string {
	if s := a.Annotations["summary"]; s != "" {
		return a.Name() + ": " + clip(s)
	}
	return a.Name()
}

// resolve cancels the command of a resolved alert if it was not sent yet.
func (e *Engine) resolve(ctx context.Context, t *txn, p prepared, now time.Time) (*decided, error) {
	var iv intentValue
	ok, err := t.getJSON(ctx, p.intent, &iv)
	if err != nil || !ok {
		return nil, err
	}
	var rec Remediation
	if ok, err := t.getJSON(ctx, recordKey(iv.RemediationID), &rec); err != nil || !ok {
		return nil, err
	}
	if rec.State != StatePending {
		return nil, nil
	}
	ck := commandKey(rec.Target.Node, rec.ID)
	var cmd commandValue
	if ok, err := t.getJSON(ctx, ck, &cmd); err != nil || !ok || cmd.State != StatePending {
		return nil, err
	}
	t.del(ck)
	if err := e.releaseNode(ctx, t, rec.Target.Node, rec.ID, now); err != nil {
		return nil, err
	}
	rec.State, rec.Result, rec.UpdatedAt = StateCancelled, string(ReasonResolved), now
	rec.Message = join(rec.Message, "the alert resolved at "+p.a.EndsAt.Format(time.RFC3339)+" before the command was sent")
	t.put(recordKey(rec.ID), rec)
	e.addJournal(t, JournalEntry{Time: now, Kind: JournalCancelled, RemediationID: rec.ID, AlertName: rec.AlertName, Fingerprint: rec.Fingerprint,
		Action: rec.Action, Target: targetString(&rec), Result: string(ReasonResolved), Message: "the alert resolved before the command was sent"})
	return &decided{rec: rec, cancelled: true}, nil
}

// releaseNode ends command id's count against its node's commands in
// flight (when the limit was on and counted it).
func (e *Engine) releaseNode(ctx context.Context, t *txn, node, id string, now time.Time) error {
	var n nodesValue
	ok, err := t.getJSON(ctx, nodesKey, &n)
	if err != nil || !ok {
		return err
	}
	if _, counted := n.InFlight[node][id]; !counted {
		return nil
	}
	t.put(nodesKey, nodesValue{InFlight: release(n.InFlight, node, id, now)})
	return nil
}

// firingTargets reads the targets with firing alerts within the storm
// window. Not a condition of the transaction: the storm guard is a
// threshold over a moving set, and a decision a few milliseconds stale is
// as good.
func (e *Engine) firingTargets(ctx context.Context, rs *Rules, now time.Time) (map[string]struct{}, error) {
	out := map[string]struct{}{}
	if rs.StormShare == 0 {
		return out, nil
	}
	kvs, _, err := e.st.List(ctx, firingPrefix, 0)
	if err != nil {
		return nil, fmt.Errorf("reading firing targets: %w", err)
	}
	for _, kv := range kvs {
		var f firingValue
		if jsonUnmarshal(kv.Value, &f) == nil && now.Sub(f.Seen) < rs.StormWindow {
			out[kv.Key[len(firingPrefix):]] = struct{}{}
		}
	}
	return out, nil
}

func stormActive(rs *Rules, firing int, size FleetSize) bool {
	return rs.StormShare > 0 && firing >= rs.StormMinTargets && float64(firing) > rs.StormShare*float64(size.Targets)
}

func (e *Engine) setStorm(on bool, firingHint int) {
	if e.storm.Swap(on) == on {
		return
	}
	if on {
		e.m.storm.Set(1)
		e.log.Warn("storm guard: holding every alert-driven action", "alerts_in_webhook", firingHint)
	} else {
		e.m.storm.Set(0)
		e.log.Info("storm guard: storm over, alert-driven actions resume")
	}
	now := e.now()
	ctx, cancel := context.WithTimeout(context.Background(), groupTimeout)
	defer cancel()
	_, err := e.atomically(ctx, func(t *txn) error {
		msg := "storm over: alert-driven actions resume"
		if on {
			msg = "storm: more targets fire at once than the storm guard allows; every alert-driven action is held"
		}
		e.addJournal(t, JournalEntry{Time: now, Kind: JournalStorm, Message: msg})
		return nil
	})
	if err != nil {
		e.log.Warn("journaling the storm guard's change", "err", err)
	}
}

// OperatorRequest is an operator's request for an action (gRPC
// RequestRemediation, vigilctl restart|stop|kill|link-up). It passes the
// same budgets, fences and journal as alerts, after the rules; the storm
// guard does not hold it (a human decided).
type OperatorRequest struct {
	Action Action
	Target TargetRef
	// Signal for kill_container; 0 means SIGKILL.
	Signal uint32
	// Reason is journaled; required.
	Reason string
	DryRun bool
	// Who asked: the caller's identity from its credential; required.
	Who string
}

func (r OperatorRequest) validate() error {
	switch {
	case r.Action < ActionRestart || r.Action > ActionLinkUp:
		return fmt.Errorf("request: unknown action %d: %w", int(r.Action), errdefs.ErrInvalid)
	case r.Target.Node == "":
		return fmt.Errorf("request: the target names no node: %w", errdefs.ErrInvalid)
	case r.Action.onContainer() && r.Target.Container == "":
		return fmt.Errorf("request: %s needs a container: %w", r.Action, errdefs.ErrInvalid)
	case r.Action.onContainer() && r.Target.Interface != "":
		return fmt.Errorf("request: %s takes no interface: %w", r.Action, errdefs.ErrInvalid)
	case r.Action == ActionLinkUp && r.Target.Interface == "":
		return fmt.Errorf("request: set_link_up needs an interface: %w", errdefs.ErrInvalid)
	case r.Signal != 0 && r.Action != ActionKill:
		return fmt.Errorf("request: a signal is only for kill_container: %w", errdefs.ErrInvalid)
	case r.Signal > 64:
		return fmt.Errorf("request: signal %d is out of range 1-64: %w", r.Signal, errdefs.ErrInvalid)
	case r.Reason == "":
		return fmt.Errorf("request: a reason is required (it is journaled): %w", errdefs.ErrInvalid)
	case r.Who == "":
		return fmt.Errorf("request: the caller's identity is missing: %w", errdefs.ErrInvalid)
	}
	return nil
}

// Request decides an operator's request and journals it; a command goes
// to the node's outbox when it acts. A suppression is an answer (the
// Remediation's State and Result say why), not an error; errors are
// ErrInvalid for a malformed request and store errors.
func (e *Engine) Request(ctx context.Context, r OperatorRequest) (Remediation, error) {
	received := e.now()
	if err := r.validate(); err != nil {
		return Remediation{}, err
	}
	if r.Action == ActionKill && r.Signal == 0 {
		r.Signal = 9
	}
	st, lerr := e.fleet.Lookup(r.Target)
	rs := e.rules.Current()
	size := e.fleet.Size()
	// An operator naming a host link means it: the rules' allow_host_link is
	// for alerts.
	e.mu.Lock()
	defer e.mu.Unlock()
	var rec Remediation
	_, err := e.atomically(ctx, func(t *txn) error {
		now := e.now()
		e.addJournal(t, JournalEntry{Time: now, Kind: JournalRequest, Action: r.Action, Target: r.Target.String(), Message: r.Reason, Who: r.Who})
		key := ""
		if lerr == nil {
			key = st.Target.Key()
		}
		b, err := readBudget(ctx, t, rs, size, key)
		if err != nil {
			return err
		}
		in := Input{Now: now, Rules: rs, Action: r.Action, Signal: r.Signal, DryRun: r.DryRun, Ref: r.Target, State: st, LookupErr: lerr,
			Fleet: size, Budget: b}
		d := Decide(in)
		rec = Remediation{ID: newID(now), Source: SourceOperator, RequestedBy: r.Who, Reason: r.Reason, Requested: r.Action, Ref: r.Target, ReceivedAt: received}
		return e.apply(ctx, t, &rec, d, in, "", intentValue{})
	})
	if err != nil {
		return Remediation{}, err
	}
	if rec.State == StateSuppressed {
		e.m.suppressed.WithLabelValues(rec.Result).Inc()
	}
	e.log.Info("operator's remediation decided", "id", rec.ID, "who", rec.RequestedBy, "action", rec.Action.String(),
		"target", targetString(&rec), "state", string(rec.State), "result", rec.Result, "message", rec.Message)
	return rec, nil
}

// ErrNotPending: Dispatch found the command no longer waiting to be sent
// (sent by another replica, cancelled, expired, ended). The caller must
// not send it.
var ErrNotPending = fmt.Errorf("command is not waiting to be sent: %w", errdefs.ErrConflict)

// Dispatch marks a pending command as sent and returns it, with its
// fence's intent revision, for the caller to send on the node's stream. It
// is the only way a command leaves the outbox: of two replicas, or two
// calls, one gets the command and the other ErrNotPending. A command past
// its deadline is marked expired instead (ErrNotPending).
func (e *Engine) Dispatch(ctx context.Context, node, id string) (Command, error) {
	var out Command
	var expired *Remediation
	_, err := e.atomically(ctx, func(t *txn) error {
		now := e.now()
		out, expired = Command{}, nil
		ck := commandKey(node, id)
		var cmd commandValue
		ok, err := t.getJSON(ctx, ck, &cmd)
		if err != nil {
			return err
		}
		if !ok || cmd.State != StatePending {
			return fmt.Errorf("command %s for node %s: %w", id, node, ErrNotPending)
		}
		var rec Remediation
		if _, err := t.getJSON(ctx, recordKey(id), &rec); err != nil {
			return err
		}
		if !now.Before(cmd.Deadline) {
			rec, err := e.end(ctx, t, ck, id, node, StateExpired, ResultExpired, "deadline passed before the node's stream could take it", JournalExpired, now)
			expired = &rec
			return err
		}
		cmd.State, cmd.DispatchedAt = StateDispatched, now
		t.put(ck, cmd)
		rec.State, rec.UpdatedAt = StateDispatched, now
		t.put(recordKey(id), rec)
		e.addJournal(t, JournalEntry{Time: now, Kind: JournalDispatched, RemediationID: id, Action: cmd.Action, Target: cmd.Target.Key()})
		out = cmd.Command
		out.Fence.IntentRevision = t.createRevision(ck)
		return nil
	})
	if err != nil {
		return Command{}, err
	}
	if expired != nil {
		e.ended(*expired)
		return Command{}, fmt.Errorf("command %s for node %s: deadline passed: %w", id, node, ErrNotPending)
	}
	return out, nil
}

// Undispatch puts a command that Dispatch returned but that could not be
// sent (the stream ended, its queue was full) back into the outbox.
func (e *Engine) Undispatch(ctx context.Context, node, id string, why error) error {
	_, err := e.atomically(ctx, func(t *txn) error {
		now := e.now()
		ck := commandKey(node, id)
		var cmd commandValue
		ok, err := t.getJSON(ctx, ck, &cmd)
		if err != nil || !ok || cmd.State != StateDispatched {
			return err
		}
		var rec Remediation
		if _, err := t.getJSON(ctx, recordKey(id), &rec); err != nil {
			return err
		}
		cmd.State, cmd.DispatchedAt = StatePending, time.Time{}
		t.put(ck, cmd)
		rec.State, rec.UpdatedAt = StatePending, now
		t.put(recordKey(id), rec)
		e.addJournal(t, JournalEntry{Time: now, Kind: JournalReturned, RemediationID: id, Action: cmd.Action, Target: cmd.Target.Key(),
			Message: fmt.Sprintf("could not be sent: %v", why)})
		return nil
	})
	return err
}

// end finishes a command: its record's state and result, the outbox
// entry deleted, the node's in-flight entry released, a journal line.
func (e *Engine) end(ctx context.Context, t *txn, ck, id, node string, st State, result, msg string, kind JournalKind, now time.Time) (Remediation, error) {
	var rec Remediation
	ok, err := t.getJSON(ctx, recordKey(id), &rec)
	if err != nil {
		return rec, err
	}
	if !ok {
		return rec, fmt.Errorf("remediation %s: %w", id, errdefs.ErrNotFound)
	}
	t.del(ck)
	if err := e.releaseNode(ctx, t, node, id, now); err != nil {
		return rec, err
	}
	rec.State, rec.Result, rec.UpdatedAt = st, result, now
	if msg != "" {
		rec.Message = join(rec.Message, msg)
	}
	t.put(recordKey(id), rec)
	e.addJournal(t, JournalEntry{Time: now, Kind: kind, RemediationID: id, AlertName: rec.AlertName, Fingerprint: rec.Fingerprint,
		Action: rec.Action, Target: targetString(&rec), Result: result, Message: msg})
	return rec, nil
}

// ended counts a command's end.
func (e *Engine) ended(rec Remediation) {
	e.m.remediations.WithLabelValues(rec.Action.String(), rec.Result).Inc()
	if rec.Result == string(OutcomeFenced) {
		e.m.suppressed.WithLabelValues(string(ReasonFenced)).Inc()
	}
	if !rec.ReceivedAt.IsZero() {
		e.m.duration.Observe(e.now().Sub(rec.ReceivedAt).Seconds())
	}
	e.log.Info("remediation ended", "id", rec.ID, "action", rec.Action.String(), "target", targetString(&rec), "state", string(rec.State),
		"result", rec.Result, "message", rec.Message)
}

// RecordResult records an agent's answer to command id. It is idempotent:
// a result for a command that has already ended (an agent resending it
// after a reconnect) changes nothing and is not an error. ErrNotFound for
// an id never decided.
func (e *Engine) RecordResult(ctx context.Context, id string, o Outcome, message string) error {
	if _, err := ParseOutcome(string(o)); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var rec Remediation
	var changed bool
	_, err := e.atomically(ctx, func(t *txn) error {
		now := e.now()
		changed = false
		ok, err := t.getJSON(ctx, recordKey(id), &rec)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("result for remediation %s: %w", id, errdefs.ErrNotFound)
		}
		if rec.State.Final() {
			return nil
		}
		rec, err = e.end(ctx, t, commandKey(rec.Target.Node, id), id, rec.Target.Node, o.state(), string(o), clip1k(message), JournalResult, now)
		changed = true
		return err
	})
	if err != nil || !changed {
		return err
	}
	e.ended(rec)
	return nil
}

func clip1k(s string) string {
	if len(s) <= 1024 {
		return s
	}
	return s[:1024] + "..."
}

// Expire ends the commands whose time is up: pending past their deadline
// (expired: they certainly did not run) and dispatched past their deadline
// plus the result grace (unknown: they may have run). Neither is ever sent
// again. Run calls it every Tick; it returns how many it ended.
func (e *Engine) Expire(ctx context.Context) (int, error) {
	kvs, _, err := e.st.List(ctx, commandsPrefix, 0)
	if err != nil {
		return 0, err
	}
	rs := e.rules.Current()
	n := 0
	for _, kv := range kvs {
		var cmd commandValue
		if jsonUnmarshal(kv.Value, &cmd) != nil {
			continue
		}
		now := e.now()
		pendingLate := cmd.State == StatePending && !now.Before(cmd.Deadline)
		sentLate := cmd.State == StateDispatched && !now.Before(cmd.Deadline.Add(rs.ResultGrace))
		if !pendingLate && !sentLate {
			continue
		}
		var rec Remediation
		var done bool
		e.mu.Lock()
		_, err := e.atomically(ctx, func(t *txn) error {
			done = false
			var cur commandValue
			ok, err := t.getJSON(ctx, kv.Key, &cur)
			if err != nil || !ok || cur.State != cmd.State {
				return err
			}
			if pendingLate {
				rec, err = e.end(ctx, t, kv.Key, cmd.ID, cmd.Target.Node, StateExpired, ResultExpired,
					"deadline "+cmd.Deadline.Format(time.RFC3339)+" passed before it was sent: not carried out", JournalExpired, now)
			} else {
				rec, err = e.end(ctx, t, kv.Key, cmd.ID, cmd.Target.Node, StateUnknown, ResultUnknown,
					"sent at "+cur.DispatchedAt.Format(time.RFC3339)+", no result by "+now.Format(time.RFC3339)+": it may have run; not sent again", JournalUnknown, now)
			}
			done = err == nil
			return err
		})
		e.mu.Unlock()
		if err != nil {
			return n, err
		}
		if done {
			e.ended(rec)
			n++
		}
	}
	return n, nil
}

// Deliver sends node's commands with send until ctx ends: those in the
// outbox now, then each one written later (a watch on Outbox(node)). Each
// goes through Dispatch first, so no two replicas or calls send the same
// command. When send fails the command goes back to the outbox and Deliver
// returns send's error: the stream is gone, and the next Deliver for the
// node will send it. The aggregator runs one Deliver per node stream it
// holds, under the stream's context; send must not block for long (queue
// the command on the stream).
func (e *Engine) Deliver(ctx context.Context, node string, send func(Command) error) error {
	prefix := Outbox(node)
	for {
		kvs, rev, err := e.st.List(ctx, prefix, 0)
		if err != nil {
			return err
		}
		for _, kv := range kvs {
			if err := e.deliverOne(ctx, node, kv, send); err != nil {
				return err
			}
		}
		err = e.watchOutbox(ctx, node, prefix, rev, send)
		if ctx.Err() != nil {
			return nil
		}
		if !errors.Is(err, store.ErrCompacted) {
			return err
		}
	}
}

func (e *Engine) watchOutbox(ctx context.Context, node, prefix string, rev int64, send func(Command) error) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for resp := range e.st.Watch(wctx, prefix, rev) {
		if resp.Err != nil {
			return resp.Err
		}
		for _, ev := range resp.Events {
			if ev.Type != store.EventPut {
				continue
			}
			if err := e.deliverOne(ctx, node, ev.KV, send); err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}

func (e *Engine) deliverOne(ctx context.Context, node string, kv store.KV, send func(Command) error) error {
	var cmd commandValue
	if err := jsonUnmarshal(kv.Value, &cmd); err != nil || cmd.State != StatePending {
		return nil
	}
	c, err := e.Dispatch(ctx, node, cmd.ID)
	if errors.Is(err, ErrNotPending) {
		return nil
	}
	if err != nil {
		return err
	}
	if serr := send(c); serr != nil {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := e.Undispatch(uctx, node, c.ID, serr); err != nil {
			e.log.Warn("a command that could not be sent stays dispatched; it will be marked unknown at its deadline", "id", c.ID, "err", err)
		}
		return fmt.Errorf("sending command %s to node %s: %w", c.ID, node, serr)
	}
	return nil
}

// Run expires commands and re-evaluates the storm guard every Tick, and
// sweeps what is past Retention every SweepInterval when Leader says so,
// until ctx ends. It returns nil then. Run may be called once at a time.
func (e *Engine) Run(ctx context.Context) error {
	if !e.running.CompareAndSwap(false, true) {
		return fmt.Errorf("remediation: Run is already running: %w", errdefs.ErrConflict)
	}
	defer e.running.Store(false)
	tick := time.NewTicker(e.cfg.Tick)
	defer tick.Stop()
	lastSweep := e.now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		e.runOnce(ctx)
		if e.now().Sub(lastSweep) >= e.cfg.SweepInterval && (e.cfg.Leader == nil || e.cfg.Leader()) {
			lastSweep = e.now()
			if n, err := e.Sweep(ctx); err != nil && ctx.Err() == nil {
				e.log.Warn("sweeping the remediation journal", "err", err)
			} else if n > 0 {
				e.log.Info("swept the remediation journal", "deleted", n)
			}
		}
	}
}

// runOnce is one tick of Run without the sweep.
func (e *Engine) runOnce(ctx context.Context) {
	if _, err := e.Expire(ctx); err != nil && ctx.Err() == nil {
		e.log.Warn("expiring remediation commands", "err", err)
	}
	rs := e.rules.Current()
	if firing, err := e.firingTargets(ctx, rs, e.now()); err == nil {
		e.setStorm(stormActive(rs, len(firing), e.fleet.Size()), 0)
	}
}
