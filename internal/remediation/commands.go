package remediation

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/store"
)

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
	switch rec.Result {
	case string(OutcomeFenced):
		e.m.suppressed.WithLabelValues(string(ReasonFenced)).Inc()
	case string(OutcomeRefused):
		e.m.suppressed.WithLabelValues(string(ReasonRefused)).Inc()
	}
	if !rec.ReceivedAt.IsZero() {
		e.m.duration.Observe(e.now().Sub(rec.ReceivedAt).Seconds())
	}
	e.log.Info("remediation ended", "id", rec.ID, "action", rec.Action.String(), "target", targetString(&rec), "state", string(rec.State),
		"result", rec.Result, "message", rec.Message)
	if e.cfg.OnChange != nil {
		e.cfg.OnChange(rec)
	}
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
	return clipN(s, 1024)
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

// Deliver sends node's commands with send until ctx ends, then returns
// nil: those in the outbox now, then each one written later (a watch on
// Outbox(node)). Each goes through Dispatch first, so no two replicas or
// calls send the same command. When send fails (the stream's queue is
// full, the stream is ending) the command goes back to the outbox, and
// Deliver tries again after a backoff (deliverBackoff: 100 ms doubling to
// 5 s, with jitter; reset once a command goes out), as it does when the
// store fails (etcd without quorum): while ctx lives, nothing is
// left behind. The aggregator runs one Deliver per node stream it holds,
// under the stream's context, and need not restart it; send must not block
// for long (it queues the command on the stream).
func (e *Engine) Deliver(ctx context.Context, node string, send func(Command) error) error {
	prefix := Outbox(node)
	failures := 0
	sendOK := func(c Command) error {
		err := send(c)
		if err == nil {
			failures = 0 // a command went out: the next failure starts over
		}
		return err
	}
	for ctx.Err() == nil {
		start := time.Now()
		err := e.deliverFrom(ctx, node, prefix, sendOK)
		if ctx.Err() != nil {
			break
		}
		if errors.Is(err, store.ErrCompacted) {
			continue // list again and watch from there
		}
		if time.Since(start) >= deliverBackoffMax {
			failures = 0 // the watch lived long: not a failing store
		}
		wait := deliverBackoff(failures, rand.Int64N)
		failures++
		e.log.Warn("delivering commands: trying again", "node", node, "in", wait, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	return nil
}

// deliverBackoffMax caps Deliver's wait between attempts.
const deliverBackoffMax = 5 * time.Second

// deliverBackoff is Deliver's wait after failures failed attempts in a
// row: a ceiling doubling from 100 ms to deliverBackoffMax, of which half
// is fixed and half drawn (draw returns a uniform value in [0, n)), so the
// streams of many nodes that failed together (a slow etcd) do not retry in
// step.
func deliverBackoff(failures int, draw func(n int64) int64) time.Duration {
	c := 100 * time.Millisecond
	for i := 0; i < failures && c < deliverBackoffMax; i++ {
		c *= 2
	}
	c = min(c, deliverBackoffMax)
	return c/2 + time.Duration(draw(int64(c/2)+1))
}

// deliverFrom sends what is in the outbox, then what comes, until an error.
func (e *Engine) deliverFrom(ctx context.Context, node, prefix string, send func(Command) error) error {
	kvs, rev, err := e.st.List(ctx, prefix, 0)
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		if err := e.deliverOne(ctx, node, kv, send); err != nil {
			return err
		}
	}
	return e.watchOutbox(ctx, node, prefix, rev, send)
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
