package remediation

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"time"
)

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
// transaction (group commit, as bbolt's Batch does; several for a group
// larger than the store takes in one, see Config.MaxTxnOps): the cost of a webhook is
// the store's fsync, shared by all those waiting for it. One caller at a
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

// A group whose alerts need more writes or conditions than
// Config.MaxTxnOps is committed in several transactions, one after
// another; a caller is answered 2xx only once all of its alerts are
// committed. If a later transaction fails, the alerts committed before it
// stay (Alertmanager's retry finds them claimed: duplicates), which is what
// makes the split safe.

// full reports whether t should take no more alerts (an alert adds at
// most about a dozen writes and conditions).
func (t *txn) full(limit int) bool { return len(t.order) > limit-16 || len(t.reads) > limit-16 }

type groupItem struct {
	g int // index of the webhook in the group
	p prepared
}

// receiveGroup decides the alerts of a group of webhooks, in as few store
// transactions as etcd allows (one, for all but large groups), and answers
// each caller.
func (e *Engine) receiveGroup(ctx context.Context, group []*receiveReq) {
	rs := e.rules.Current()
	size := e.fleet.Size()
	var items []groupItem
	for g, req := range group {
		w := req.w
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
			items = append(items, groupItem{g: g, p: p})
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	sums := make([]Summary, len(group))
	for g, req := range group {
		sums[g].Alerts = len(req.w.Alerts)
	}
	failedFrom := len(items)
	var err error
	// The storm guard is evaluated once for the group: the firing marks
	// (not a condition of the transactions, see firingTargets) and the
	// group's own firing targets.
	firing, err := e.firingTargets(ctx, rs, e.now())
	if err != nil {
		failedFrom = 0
	}
	for _, it := range items {
		if err == nil && it.p.rule != nil && it.p.a.Status == StatusFiring {
			firing[it.p.target] = struct{}{}
		}
	}
	storm := err == nil && stormActive(rs, len(firing), size)
	for pos := 0; err == nil && pos < len(items); {
		var out []decided
		var n int
		var chunk []Summary
		var committedAt time.Time
		_, err = e.atomically(ctx, func(t *txn) error {
			out, n, chunk = out[:0], 0, make([]Summary, len(group))
			now := e.now()
			committedAt = now
			for pos+n < len(items) && (n == 0 || !t.full(e.cfg.MaxTxnOps)) {
				it := items[pos+n]
				n++
				d, err := e.decideAlert(ctx, t, rs, size, it.p, now, group[it.g].received, storm, len(firing))
				if err != nil {
					return err
				}
				sum := &chunk[it.g]
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
			return nil
		})
		if err != nil {
			failedFrom = pos
			break
		}
		for g := range chunk {
			c, s := chunk[g], &sums[g]
			s.Acted, s.Suppressed, s.Duplicates, s.Cancelled, s.Unmatched = s.Acted+c.Acted, s.Suppressed+c.Suppressed,
				s.Duplicates+c.Duplicates, s.Cancelled+c.Cancelled, s.Unmatched+c.Unmatched
			s.IDs = append(s.IDs, c.IDs...)
		}
		e.committed(items[pos:pos+n], out, committedAt)
		pos += n
	}
	failed := make([]bool, len(group))
	for _, it := range items[failedFrom:] {
		failed[it.g] = true
	}
	for g, req := range group {
		req.sum = sums[g]
		if failed[g] {
			req.sum, req.err = Summary{}, err
		}
		close(req.done)
	}
	if err == nil {
		e.setStorm(storm, len(items))
	}
}

// committed updates this replica's view of the firing targets and the
// metrics after a transaction of a group committed.
func (e *Engine) committed(items []groupItem, out []decided, at time.Time) {
	var fired, resolved []string
	for _, it := range items {
		switch {
		case it.p.rule == nil:
		case it.p.a.Status == StatusFiring:
			fired = append(fired, it.p.target)
		default:
			resolved = append(resolved, it.p.target)
		}
	}
	e.noteFiring(fired, resolved, at)
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
			if e.cfg.OnChange != nil && !d.duplicate {
				e.cfg.OnChange(d.rec)
			}
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

// firingRefresh: how stale this replica's view of the firing marks may
// be. Other replicas' marks are seen within it; this replica's own at once.
const firingRefresh = time.Second

// firingCache is this replica's view of /remediation/firing/: target →
// when it was last seen firing.
type firingCache struct {
	mu   sync.Mutex
	at   time.Time // when listed from the store
	seen map[string]time.Time
}

// firingTargets returns the targets with firing alerts within the storm
// window, from the store at most firingRefresh ago plus what this replica
// wrote since. Not a condition of the transaction: the storm guard is a
// threshold over a moving set, and a view a second stale is as good; it
// spares each webhook a listing of every firing target.
func (e *Engine) firingTargets(ctx context.Context, rs *Rules, now time.Time) (map[string]struct{}, error) {
	out := map[string]struct{}{}
	if rs.StormShare == 0 {
		return out, nil
	}
	fc := &e.firing
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.seen == nil || now.Sub(fc.at) >= firingRefresh || now.Before(fc.at) {
		kvs, _, err := e.st.List(ctx, firingPrefix, 0)
		if err != nil {
			return nil, fmt.Errorf("reading firing targets: %w", err)
		}
		fc.seen, fc.at = make(map[string]time.Time, len(kvs)), now
		for _, kv := range kvs {
			var f firingValue
			target, err := url.PathUnescape(kv.Key[len(firingPrefix):])
			if err == nil && jsonUnmarshal(kv.Value, &f) == nil {
				fc.seen[target] = f.Seen
			}
		}
	}
	for target, seen := range fc.seen {
		if now.Sub(seen) < rs.StormWindow {
			out[target] = struct{}{}
		}
	}
	return out, nil
}

// noteFiring records in this replica's view the marks a committed group
// wrote: firing targets seen at now, resolved ones gone.
func (e *Engine) noteFiring(firing []string, resolved []string, now time.Time) {
	fc := &e.firing
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.seen == nil {
		return
	}
	for _, t := range firing {
		fc.seen[t] = now
	}
	for _, t := range resolved {
		delete(fc.seen, t)
	}
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
