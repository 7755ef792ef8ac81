package remediation

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/url"
	"strconv"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/store"
)

// Key layout in the store. Values are JSON. Everything a decision reads
// and writes for one webhook is written by one store Txn, conditioned on
// the revisions it read.
//
//	/remediation/intents/<hash>            the claim of one alert firing: hash of (fingerprint,
//	                                       startsAt, the rule's action); created with
//	                                       create-if-absent, its revision is the fence's
//	                                       intent revision. Kept for Retention after the
//	                                       alert was last delivered.
//	/remediation/records/<id>              one remediation: the decision, the command, its
//	                                       state and result. Ids begin with the inverted
//	                                       decision time, so a listing is newest first.
//	/remediation/journal/<inv-time>-<n>    the journal, newest first: every alert received,
//	                                       every decision and its reason, every command sent,
//	                                       its result, expiry, cancellation. Append-only.
//	/remediation/commands/<node>/<id>      a node's outbox: commands not yet answered, in state
//	                                       pending (not sent) or dispatched (sent, waiting for
//	                                       the result). Deleted when the command ends.
//	/remediation/budget/fleet              the fleet's actions within the last minute.
//	/remediation/budget/nodes              commands in flight by node.
//	/remediation/budget/targets/<target>   one target's actions within the last hour.
//	/remediation/firing/<target>           a target with a firing alert a rule matched, and
//	                                       when it was last seen (the storm guard counts them).
const (
	Prefix         = "/remediation/"
	intentsPrefix  = Prefix + "intents/"
	recordsPrefix  = Prefix + "records/"
	journalPrefix  = Prefix + "journal/"
	commandsPrefix = Prefix + "commands/"
	fleetKey       = Prefix + "budget/fleet"
	nodesKey       = Prefix + "budget/nodes"
	targetsPrefix  = Prefix + "budget/targets/"
	firingPrefix   = Prefix + "firing/"
)

// Outbox is the key prefix of node's commands: the aggregator that holds
// node's stream watches it (Engine.Deliver does).
func Outbox(node string) string { return commandsPrefix + url.PathEscape(node) + "/" }

func commandKey(node, id string) string { return Outbox(node) + id }
func recordKey(id string) string        { return recordsPrefix + id }
func targetKey(t string) string         { return targetsPrefix + url.PathEscape(t) }
func firingKey(t string) string         { return firingPrefix + url.PathEscape(t) }

func intentKey(fingerprint string, startsAt time.Time, a Action) string {
	h := sha256.Sum256([]byte(fingerprint + "\x00" + strconv.FormatInt(startsAt.UnixNano(), 10) + "\x00" + a.String()))
	return intentsPrefix + hex.EncodeToString(h[:16])
}

// inverted makes keys that sort newest first.
func inverted(t time.Time) string {
	return fmt.Sprintf("%016x", uint64(math.MaxInt64-t.UnixNano()))
}

// newID is a remediation id: the inverted time and 8 random hex digits.
func newID(now time.Time) string {
	return fmt.Sprintf("%s-%08x", inverted(now), rand.Uint32())
}

// idTime recovers the decision time from an id (for sweeps).
func idTime(id string) (time.Time, bool) {
	if len(id) < 16 {
		return time.Time{}, false
	}
	v, err := strconv.ParseUint(id[:16], 16, 64)
	if err != nil || v > math.MaxInt64 {
		return time.Time{}, false
	}
	return time.Unix(0, math.MaxInt64-int64(v)), true
}

// txn is an optimistic transaction over the store, in the manner of etcd's
// STM: reads are cached and become the Txn's conditions (a key read as
// absent must still be absent), writes are buffered and visible to later
// reads, and commit applies them all in one store Txn or nothing.
type txn struct {
	s      store.Store
	reads  map[string]store.KV // ModRevision 0: absent
	writes map[string]*[]byte  // nil: delete
	order  []string
}

func newTxn(s store.Store) *txn {
	return &txn{s: s, reads: map[string]store.KV{}, writes: map[string]*[]byte{}}
}

// get returns key's value as this transaction sees it.
func (t *txn) get(ctx context.Context, key string) ([]byte, bool, error) {
	if w, ok := t.writes[key]; ok {
		if w == nil {
			return nil, false, nil
		}
		return *w, true, nil
	}
	kv, ok := t.reads[key]
	if !ok {
		var err error
		kv, err = t.s.Get(ctx, key)
		switch {
		case errors.Is(err, errdefs.ErrNotFound):
			kv = store.KV{Key: key}
		case err != nil:
			return nil, false, err
		}
		t.reads[key] = kv
	}
	return kv.Value, kv.ModRevision != 0, nil
}

// getJSON decodes key's value into v; false when absent.
func (t *txn) getJSON(ctx context.Context, key string, v any) (bool, error) {
	b, ok, err := t.get(ctx, key)
	if err != nil || !ok {
		return false, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("store key %s holds a value this version cannot read: %v: %w", key, err, errdefs.ErrInvalid)
	}
	return true, nil
}

// createRevision is the store's create revision of key as read (0 when
// written by this transaction or absent).
func (t *txn) createRevision(key string) int64 { return t.reads[key].CreateRevision }

func (t *txn) put(key string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("remediation: marshalling %T: %v", v, err)) // our own types always marshal
	}
	if _, ok := t.writes[key]; !ok {
		t.order = append(t.order, key)
	}
	t.writes[key] = &b
}

func (t *txn) del(key string) {
	if _, ok := t.writes[key]; !ok {
		t.order = append(t.order, key)
	}
	t.writes[key] = nil
}

func (t *txn) commit(ctx context.Context) (store.TxnResult, error) {
	conds := make([]store.Cond, 0, len(t.reads))
	for k, kv := range t.reads {
		conds = append(conds, store.Cond{Key: k, ModRevision: kv.ModRevision})
	}
	ops := make([]store.Op, 0, len(t.order))
	for _, k := range t.order {
		if w := t.writes[k]; w == nil {
			ops = append(ops, store.Delete(k))
		} else {
			ops = append(ops, store.Put(k, *w))
		}
	}
	if len(ops) == 0 {
		return store.TxnResult{Succeeded: true}, nil
	}
	return t.s.Txn(ctx, conds, ops)
}
