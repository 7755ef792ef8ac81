package remediation

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/store"
)

// DefaultListLimit is how many remediations List returns when not told.
const DefaultListLimit = 100

// MaxListLimit bounds one List.
const MaxListLimit = 10000

// ListFilter selects remediations.
type ListFilter struct {
	// Node: only this node's; empty for all.
	Node string
	// Limit: at most this many (newest first); 0 for DefaultListLimit.
	Limit int
}

// List returns remediations, newest first.
func (e *Engine) List(ctx context.Context, f ListFilter) ([]Remediation, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = DefaultListLimit
	}
	if limit > MaxListLimit {
		return nil, fmt.Errorf("limit %d is over the maximum of %d: %w", limit, MaxListLimit, errdefs.ErrInvalid)
	}
	storeLimit := limit
	if f.Node != "" {
		storeLimit = 0 // filtered here: read them all (bounded by retention)
	}
	kvs, _, err := e.st.List(ctx, recordsPrefix, storeLimit)
	if err != nil {
		return nil, err
	}
	out := make([]Remediation, 0, min(limit, len(kvs)))
	for _, kv := range kvs {
		var r Remediation
		if err := jsonUnmarshal(kv.Value, &r); err != nil {
			e.log.Warn("skipping a remediation record this version cannot read", "key", kv.Key, "err", err)
			continue
		}
		if f.Node != "" && r.Target.Node != f.Node && r.Ref.Node != f.Node {
			continue
		}
		r.Fence.IntentRevision = kv.CreateRevision
		out = append(out, r)
		if len(out) == limit {
			break
		}
	}
	return out, nil
}

// Get returns remediation id, or ErrNotFound.
func (e *Engine) Get(ctx context.Context, id string) (Remediation, error) {
	kv, err := e.st.Get(ctx, recordKey(id))
	if err != nil {
		return Remediation{}, fmt.Errorf("remediation %s: %w", clip(id), err)
	}
	var r Remediation
	if err := jsonUnmarshal(kv.Value, &r); err != nil {
		return Remediation{}, fmt.Errorf("remediation %s: unreadable record: %v: %w", id, err, errdefs.ErrInvalid)
	}
	r.Fence.IntentRevision = kv.CreateRevision
	return r, nil
}

// Journal returns the journal's newest entries first, at most limit
// (0: DefaultListLimit); with id set, only those of remediation id.
func (e *Engine) Journal(ctx context.Context, id string, limit int) ([]JournalEntry, error) {
	if limit <= 0 {
		limit = DefaultListLimit
	}
	storeLimit := limit
	if id != "" {
		storeLimit = 0
	}
	kvs, _, err := e.st.List(ctx, journalPrefix, storeLimit)
	if err != nil {
		return nil, err
	}
	var out []JournalEntry
	for _, kv := range kvs {
		var j JournalEntry
		if jsonUnmarshal(kv.Value, &j) != nil || (id != "" && j.RemediationID != id) {
			continue
		}
		out = append(out, j)
		if len(out) == limit {
			break
		}
	}
	return out, nil
}

// Sweep deletes what is past retention: journal entries and ended
// remediations older than Retention, intents whose alert was last
// delivered longer ago than Retention, firing marks older than the storm
// window, and target histories older than an hour. Commands in an outbox
// are never swept (Expire ends them). It must run on one replica (the
// leader); running it on two at once is safe, only wasteful. It returns
// how many keys it deleted.
func (e *Engine) Sweep(ctx context.Context) (int, error) {
	rs := e.rules.Current()
	now := e.now()
	cutoff := now.Add(-rs.Retention)
	deleted := 0
	var batch []store.Cond
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		ops := make([]store.Op, len(batch))
		for i, c := range batch {
			ops[i] = store.Delete(c.Key)
		}
		// Each deletion is conditioned on the key being as read; a key
		// written since (an intent seen again) fails the batch, and the
		// next sweep decides again.
		res, err := e.st.Txn(ctx, batch, ops)
		if err != nil {
			return err
		}
		if res.Succeeded {
			deleted += len(batch)
		}
		batch = batch[:0]
		return nil
	}
	sweep := func(prefix string, old func(store.KV) bool) error {
		kvs, _, err := e.st.List(ctx, prefix, 0)
		if err != nil {
			return err
		}
		for _, kv := range kvs {
			if !old(kv) {
				continue
			}
			batch = append(batch, store.Cond{Key: kv.Key, ModRevision: kv.ModRevision})
			if len(batch) >= e.cfg.MaxTxnOps {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		return flush()
	}
	steps := []struct {
		prefix string
		old    func(store.KV) bool
	}{
		{journalPrefix, func(kv store.KV) bool {
			t, ok := idTime(strings.TrimPrefix(kv.Key, journalPrefix))
			return ok && t.Before(cutoff)
		}},
		{recordsPrefix, func(kv store.KV) bool {
			var r Remediation
			return jsonUnmarshal(kv.Value, &r) == nil && r.State.Final() && r.UpdatedAt.Before(cutoff)
		}},
		{intentsPrefix, func(kv store.KV) bool {
			var iv intentValue
			return jsonUnmarshal(kv.Value, &iv) == nil && iv.LastSeen.Before(cutoff)
		}},
		{firingPrefix, func(kv store.KV) bool {
			var f firingValue
			return jsonUnmarshal(kv.Value, &f) == nil && now.Sub(f.Seen) >= rs.StormWindow
		}},
		{targetsPrefix, func(kv store.KV) bool {
			var tb TargetBudget
			return jsonUnmarshal(kv.Value, &tb) == nil && len(within(tb.Times, now, time.Hour)) == 0 && now.Sub(tb.EscalatedAt) >= time.Hour
		}},
	}
	for _, s := range steps {
		if err := sweep(s.prefix, s.old); err != nil {
			return deleted, fmt.Errorf("sweeping %s: %w", s.prefix, err)
		}
	}
	return deleted, nil
}
