package remediation

import (
	"context"
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
	// MaxTxnOps bounds the writes, and the conditions, of one store
	// transaction: a group of webhooks that needs more is committed in
	// several. Default 100, under etcd's limit (--max-txn-ops, 128 by
	// default). bbolt has no such limit, and each transaction costs an
	// fsync: with bbolt set it high (5000) so that a large webhook is one
	// transaction. At least 32.
	MaxTxnOps int
	// OnChange, when set, is told of every remediation decided (whatever
	// its state: pending, suppressed, dry run) and of every one that ended,
	// after the store has it: the aggregator's change feed (WatchEvents,
	// vigilctl events). Called from the engine's goroutines, possibly under
	// its locks: it must not block nor call the engine.
	OnChange func(Remediation)
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
	firing    firingCache
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
	if cfg.MaxTxnOps <= 0 {
		cfg.MaxTxnOps = 100
	}
	if cfg.MaxTxnOps < 32 {
		return nil, fmt.Errorf("remediation: MaxTxnOps %d is under 32: %w", cfg.MaxTxnOps, errdefs.ErrInvalid)
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
