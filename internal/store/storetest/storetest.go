package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/store"
)

// Open returns a new, empty store for one test. The suite closes it when
// the test ends (Close is idempotent, so Open may register its own Close).
type Open func(t *testing.T) store.Store

// Option changes how the suite runs.
type Option func(*config)

type config struct {
	ttl     time.Duration
	compact func(ctx context.Context, s store.Store, rev int64) error
	reopen  func(t *testing.T, s store.Store) store.Store
	timeout time.Duration
}

// WithTTL sets the lease TTL the suite grants, the shortest the store
// honours (etcd rounds a TTL up to whole seconds and to its minimum TTL).
// The default is 1 s. Expiry tests wait up to many TTLs for the condition.
func WithTTL(ttl time.Duration) Option { return func(c *config) { c.ttl = ttl } }

// WithCompact gives the suite a way to make the revisions up to rev
// unavailable to Watch; without it the compaction test is skipped.
func WithCompact(compact func(ctx context.Context, s store.Store, rev int64) error) Option {
	return func(c *config) { c.compact = compact }
}

// WithReopen gives the suite a way to close s and open it again on the same
// data, for the persistence test; without it that test is skipped.
func WithReopen(reopen func(t *testing.T, s store.Store) store.Store) Option {
	return func(c *config) { c.reopen = reopen }
}

// Run runs the conformance suite, each check in a subtest with a store of
// its own from open.
func Run(t *testing.T, open Open, opts ...Option) {
	c := &config{ttl: time.Second, timeout: 30 * time.Second}
	for _, o := range opts {
		o(c)
	}
	checks := []struct {
		name string
		fn   func(t *testing.T, c *config, s store.Store)
	}{
		{"Revisions", checkRevisions},
		{"TxnSharedRevision", checkTxnSharedRevision},
		{"GetMissing", checkGetMissing},
		{"Create", checkCreate},
		{"CreateConcurrent", checkCreateConcurrent},
		{"CompareAndSwap", checkCompareAndSwap},
		{"CompareAndSwapCounter", checkCompareAndSwapCounter},
		{"TxnAtomic", checkTxnAtomic},
		{"TxnCompareOnly", checkTxnCompareOnly},
		{"TxnKeyTwice", checkTxnKeyTwice},
		{"Invalid", checkInvalid},
		{"DeleteMissing", checkDeleteMissing},
		{"DeleteRecreate", checkDeleteRecreate},
		{"List", checkList},
		{"Watch", checkWatch},
		{"WatchFromPast", checkWatchFromPast},
		{"WatchCompacted", checkWatchCompacted},
		{"WatchContextEnd", checkWatchContextEnd},
		{"WatchSlowConsumer", checkWatchSlowConsumer},
		{"WatchClose", checkWatchClose},
		{"WatchReplay", checkWatchReplay},
		{"Lease", checkLease},
		{"LeaseExpiry", checkLeaseExpiry},
		{"LeaseKeepAlive", checkLeaseKeepAlive},
		{"LeaseMissing", checkLeaseMissing},
		{"LeaseTimeToLive", checkLeaseTimeToLive},
		{"ContextCanceled", checkContextCanceled},
		{"Close", checkClose},
		{"Reopen", checkReopen},
	}
	for _, ch := range checks {
		t.Run(ch.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			ch.fn(t, c, s)
		})
	}
}

func ctxFor(t *testing.T, c *config) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	t.Cleanup(cancel)
	return ctx
}

func put(t *testing.T, ctx context.Context, s store.Store, key, value string) int64 {
	t.Helper()
	rev, err := store.PutKey(ctx, s, key, []byte(value))
	if err != nil {
		t.Fatalf("put %q: %v", key, err)
	}
	return rev
}

func get(t *testing.T, ctx context.Context, s store.Store, key string) store.KV {
	t.Helper()
	kv, err := s.Get(ctx, key)
	if err != nil {
		t.Fatalf("Get %q: %v", key, err)
	}
	return kv
}

func mustMissing(t *testing.T, ctx context.Context, s store.Store, key string) {
	t.Helper()
	kv, err := s.Get(ctx, key)
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Get %q = %+v, %v; want ErrNotFound", key, kv, err)
	}
}

func currentRev(t *testing.T, ctx context.Context, s store.Store) int64 {
	t.Helper()
	_, rev, err := s.List(ctx, "\xff-no-such-prefix", 1)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return rev
}

func checkRevisions(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	r1 := put(t, ctx, s, "a", "1")
	r2 := put(t, ctx, s, "b", "1")
	if r1 <= 0 || r2 <= r1 {
		t.Fatalf("revisions of two writes: %d then %d; want positive and increasing", r1, r2)
	}
	kv := get(t, ctx, s, "a")
	if kv.CreateRevision != r1 || kv.ModRevision != r1 || string(kv.Value) != "1" || kv.Lease != store.NoLease {
		t.Fatalf("a after its create at %d: %+v", r1, kv)
	}
	r3 := put(t, ctx, s, "a", "2")
	if r3 <= r2 {
		t.Fatalf("third write at %d, not after %d", r3, r2)
	}
	kv = get(t, ctx, s, "a")
	if kv.CreateRevision != r1 || kv.ModRevision != r3 || string(kv.Value) != "2" {
		t.Fatalf("a after its update at %d: %+v; want create %d, mod %d, value 2", r3, kv, r1, r3)
	}
	if rev := currentRev(t, ctx, s); rev != r3 {
		t.Fatalf("List revision %d after the last write at %d", rev, r3)
	}
}

func checkTxnSharedRevision(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	put(t, ctx, s, "c", "old")
	before := currentRev(t, ctx, s)
	res, err := s.Txn(ctx, nil, []store.Op{
		store.Put("a", []byte("1")), store.Put("b", []byte("2")), store.Delete("c"),
	})
	if err != nil || !res.Succeeded {
		t.Fatalf("Txn = %+v, %v", res, err)
	}
	if res.Revision <= before {
		t.Fatalf("Txn revision %d not after %d", res.Revision, before)
	}
	for _, k := range []string{"a", "b"} {
		if kv := get(t, ctx, s, k); kv.ModRevision != res.Revision || kv.CreateRevision != res.Revision {
			t.Errorf("%s: %+v; want create and mod revision %d, the Txn's", k, kv, res.Revision)
		}
	}
	mustMissing(t, ctx, s, "c")
	evs := collect(t, c, s.Watch(ctx, "", before), 3)
	for _, ev := range evs {
		if ev.KV.ModRevision != res.Revision {
			t.Errorf("event %v at revision %d; the Txn's is %d", ev.KV.Key, ev.KV.ModRevision, res.Revision)
		}
	}
}

func checkGetMissing(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	mustMissing(t, ctx, s, "nothing")
	put(t, ctx, s, "something", "x")
	mustMissing(t, ctx, s, "some") // a prefix of a key is not the key
}

func checkCreate(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	rev, err := store.Create(ctx, s, "intent", []byte("first"), store.NoLease)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	_, err = store.Create(ctx, s, "intent", []byte("second"), store.NoLease)
	if !errors.Is(err, errdefs.ErrConflict) || !store.IsConflict(err) {
		t.Fatalf("second Create = %v; want ErrConflict", err)
	}
	kv := get(t, ctx, s, "intent")
	if string(kv.Value) != "first" || kv.ModRevision != rev || kv.CreateRevision != rev {
		t.Fatalf("after a refused Create: %+v; want the first value at %d", kv, rev)
	}
	if now := currentRev(t, ctx, s); now != rev {
		t.Fatalf("a refused Create moved the revision from %d to %d", rev, now)
	}
}

func checkCreateConcurrent(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	const keys, racers = 10, 16
	var mu sync.Mutex
	winners := make(map[string][]int)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for r := 0; r < racers; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for k := 0; k < keys; k++ {
				key := fmt.Sprintf("claim/%d", k)
				_, err := store.Create(ctx, s, key, []byte(strconv.Itoa(r)), store.NoLease)
				switch {
				case err == nil:
					mu.Lock()
					winners[key] = append(winners[key], r)
					mu.Unlock()
				case !store.IsConflict(err):
					t.Errorf("Create %s by %d: %v", key, r, err)
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	for k := 0; k < keys; k++ {
		key := fmt.Sprintf("claim/%d", k)
		w := winners[key]
		if len(w) != 1 {
			t.Errorf("%s claimed by %v; want exactly one of %d racers", key, w, racers)
			continue
		}
		if kv := get(t, ctx, s, key); string(kv.Value) != strconv.Itoa(w[0]) {
			t.Errorf("%s holds %q; its winner was %d", key, kv.Value, w[0])
		}
	}
}

func checkCompareAndSwap(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	r1 := put(t, ctx, s, "k", "1")
	r2, err := store.CompareAndSwap(ctx, s, "k", []byte("2"), r1)
	if err != nil {
		t.Fatalf("CompareAndSwap at the current revision: %v", err)
	}
	if _, err := store.CompareAndSwap(ctx, s, "k", []byte("stale"), r1); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("CompareAndSwap at a stale revision = %v; want ErrConflict", err)
	}
	if _, err := store.CompareAndSwap(ctx, s, "absent", []byte("x"), r1); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("CompareAndSwap of a missing key = %v; want ErrConflict", err)
	}
	mustMissing(t, ctx, s, "absent")
	if kv := get(t, ctx, s, "k"); string(kv.Value) != "2" || kv.ModRevision != r2 || kv.CreateRevision != r1 {
		t.Fatalf("k: %+v; want value 2, mod %d, create %d", kv, r2, r1)
	}
}

// checkCompareAndSwapCounter has writers increment one counter with
// read-modify-CAS loops: a lost update shows as a short count.
func checkCompareAndSwapCounter(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	const writers, each = 4, 10
	put(t, ctx, s, "counter", "0")
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; {
				kv, err := s.Get(ctx, "counter")
				if err != nil {
					t.Errorf("Get: %v", err)
					return
				}
				n, _ := strconv.Atoi(string(kv.Value))
				_, err = store.CompareAndSwap(ctx, s, "counter", []byte(strconv.Itoa(n+1)), kv.ModRevision)
				switch {
				case err == nil:
					i++
				case !store.IsConflict(err):
					t.Errorf("CompareAndSwap: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if kv := get(t, ctx, s, "counter"); string(kv.Value) != strconv.Itoa(writers*each) {
		t.Fatalf("counter %s after %d increments", kv.Value, writers*each)
	}
}

func checkTxnAtomic(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	ra := put(t, ctx, s, "a", "1")
	put(t, ctx, s, "b", "1")
	before := currentRev(t, ctx, s)
	// a holds, b does not (it exists): nothing applies.
	res, err := s.Txn(ctx, []store.Cond{{Key: "a", ModRevision: ra}, {Key: "b", ModRevision: 0}},
		[]store.Op{store.Put("x", []byte("1")), store.Delete("a"), store.Put("b", []byte("2"))})
	if err != nil {
		t.Fatalf("Txn: %v", err)
	}
	if res.Succeeded || res.Revision != before {
		t.Fatalf("Txn with a failed cond = %+v; want not succeeded at revision %d", res, before)
	}
	mustMissing(t, ctx, s, "x")
	if kv := get(t, ctx, s, "a"); string(kv.Value) != "1" {
		t.Fatalf("a changed by a failed Txn: %+v", kv)
	}
	if kv := get(t, ctx, s, "b"); string(kv.Value) != "1" {
		t.Fatalf("b changed by a failed Txn: %+v", kv)
	}
	// Both hold: every op applies.
	res, err = s.Txn(ctx, []store.Cond{{Key: "a", ModRevision: ra}, {Key: "x", ModRevision: 0}},
		[]store.Op{store.Put("x", []byte("1")), store.Delete("a"), store.Put("b", []byte("2"))})
	if err != nil || !res.Succeeded || res.Revision != before+1 {
		t.Fatalf("Txn whose conds hold = %+v, %v; want succeeded at %d", res, err, before+1)
	}
	mustMissing(t, ctx, s, "a")
	if kv := get(t, ctx, s, "x"); string(kv.Value) != "1" || kv.ModRevision != res.Revision {
		t.Fatalf("x: %+v", kv)
	}
	if kv := get(t, ctx, s, "b"); string(kv.Value) != "2" || kv.ModRevision != res.Revision {
		t.Fatalf("b: %+v", kv)
	}
}

func checkTxnCompareOnly(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	r := put(t, ctx, s, "a", "1")
	res, err := s.Txn(ctx, []store.Cond{{Key: "a", ModRevision: r}}, nil)
	if err != nil || !res.Succeeded || res.Revision != r {
		t.Fatalf("compare-only Txn that holds = %+v, %v; want succeeded at %d", res, err, r)
	}
	res, err = s.Txn(ctx, []store.Cond{{Key: "a", ModRevision: r + 1}}, nil)
	if err != nil || res.Succeeded || res.Revision != r {
		t.Fatalf("compare-only Txn that fails = %+v, %v; want not succeeded at %d", res, err, r)
	}
}

func checkTxnKeyTwice(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	before := currentRev(t, ctx, s)
	for _, ops := range [][]store.Op{
		{store.Put("a", []byte("1")), store.Put("b", nil), store.Put("a", []byte("2"))},
		{store.Put("a", []byte("1")), store.Delete("a")},
		{store.Delete("a"), store.Delete("a")},
	} {
		_, err := s.Txn(ctx, nil, ops)
		if !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("Txn naming a key twice (%v) = %v; want ErrInvalid", ops, err)
		}
	}
	mustMissing(t, ctx, s, "a")
	mustMissing(t, ctx, s, "b")
	if now := currentRev(t, ctx, s); now != before {
		t.Fatalf("refused Txns moved the revision from %d to %d", before, now)
	}
}

func checkInvalid(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	if _, err := s.Get(ctx, ""); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Get of an empty key = %v; want ErrInvalid", err)
	}
	if _, err := s.Txn(ctx, nil, []store.Op{store.Put("", []byte("x"))}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Put of an empty key = %v; want ErrInvalid", err)
	}
	if _, err := s.Txn(ctx, []store.Cond{{Key: ""}}, nil); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Cond on an empty key = %v; want ErrInvalid", err)
	}
	if _, err := s.Txn(ctx, nil, []store.Op{{Kind: 0, Key: "k"}}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Op of no kind = %v; want ErrInvalid", err)
	}
	if _, err := s.Txn(ctx, []store.Cond{{Key: "k", ModRevision: -1}}, nil); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Cond on a negative revision = %v; want ErrInvalid", err)
	}
	for _, ttl := range []time.Duration{0, -time.Second} {
		if _, err := s.Grant(ctx, ttl); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("Grant(%v) = %v; want ErrInvalid", ttl, err)
		}
	}
	if _, _, err := s.List(ctx, "", -1); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("List with a negative limit = %v; want ErrInvalid", err)
	}
	mustMissing(t, ctx, s, "k")
}

func checkDeleteMissing(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	r := put(t, ctx, s, "here", "x")
	if err := store.DeleteKey(ctx, s, "gone"); err != nil {
		t.Fatalf("delete of a missing key: %v", err)
	}
	res, err := s.Txn(ctx, nil, []store.Op{store.Delete("gone"), store.Delete("also-gone")})
	if err != nil || !res.Succeeded || res.Revision != r {
		t.Fatalf("Txn deleting only missing keys = %+v, %v; want succeeded at the unchanged revision %d", res, err, r)
	}
	if now := currentRev(t, ctx, s); now != r {
		t.Fatalf("deletes of missing keys moved the revision from %d to %d", r, now)
	}
	// A watcher sees no event for them: the next event is the next write.
	ch := s.Watch(ctx, "", r)
	r2 := put(t, ctx, s, "next", "x")
	evs := collect(t, c, ch, 1)
	if evs[0].KV.Key != "next" || evs[0].KV.ModRevision != r2 {
		t.Fatalf("first event after deletes of missing keys: %+v; want the put of next at %d", evs[0], r2)
	}
}

func checkDeleteRecreate(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	r1 := put(t, ctx, s, "k", "1")
	if err := store.DeleteKey(ctx, s, "k"); err != nil {
		t.Fatal(err)
	}
	mustMissing(t, ctx, s, "k")
	rDel := currentRev(t, ctx, s)
	if rDel <= r1 {
		t.Fatalf("delete did not advance the revision: %d after %d", rDel, r1)
	}
	// A deleted key is absent: create-if-absent succeeds on it.
	r3, err := store.Create(ctx, s, "k", []byte("2"), store.NoLease)
	if err != nil {
		t.Fatalf("Create after delete: %v", err)
	}
	if kv := get(t, ctx, s, "k"); kv.CreateRevision != r3 || kv.ModRevision != r3 {
		t.Fatalf("recreated k: %+v; want create revision %d (not the first life's %d)", kv, r3, r1)
	}
}

func checkList(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	keys := []string{"a/3", "a/1", "b", "a/2", "ab", "a/10", "a"}
	rand.New(rand.NewSource(1)).Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	var last int64
	for _, k := range keys {
		last = put(t, ctx, s, k, "v-"+k)
	}
	kvs, rev, err := s.List(ctx, "a/", 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"a/1", "a/10", "a/2", "a/3"}
	if got := keysOf(kvs); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("List a/ = %v; want %v", got, want)
	}
	for _, kv := range kvs {
		if string(kv.Value) != "v-"+kv.Key || kv.ModRevision == 0 || kv.CreateRevision == 0 {
			t.Errorf("listed %+v", kv)
		}
	}
	if rev != last {
		t.Fatalf("List revision %d; the last write was at %d", rev, last)
	}
	kvs, _, err = s.List(ctx, "a/", 2)
	if err != nil {
		t.Fatal(err)
	}
	if got := keysOf(kvs); fmt.Sprint(got) != fmt.Sprint(want[:2]) {
		t.Fatalf("List a/ limit 2 = %v; want %v", got, want[:2])
	}
	kvs, _, err = s.List(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := keysOf(kvs); fmt.Sprint(got) != "[a a/1 a/10 a/2 a/3 ab b]" {
		t.Fatalf("List of everything = %v", got)
	}
	kvs, _, err = s.List(ctx, "c", 0)
	if err != nil || len(kvs) != 0 {
		t.Fatalf("List of a prefix nothing has = %v, %v; want empty", keysOf(kvs), err)
	}
}

func keysOf(kvs []store.KV) []string {
	out := make([]string, 0, len(kvs))
	for _, kv := range kvs {
		out = append(out, kv.Key)
	}
	return out
}

// collect reads events from ch until it has n, failing the test on an
// error response, a closed channel or the deadline.
func collect(t *testing.T, c *config, ch <-chan store.WatchResponse, n int) []store.Event {
	t.Helper()
	var evs []store.Event
	deadline := time.After(c.timeout)
	for len(evs) < n {
		select {
		case resp, ok := <-ch:
			if !ok {
				t.Fatalf("watch closed after %d of %d events", len(evs), n)
			}
			if resp.Err != nil {
				t.Fatalf("watch failed after %d of %d events: %v", len(evs), n, resp.Err)
			}
			evs = append(evs, resp.Events...)
		case <-deadline:
			t.Fatalf("watch gave %d of %d events within %v: %s", len(evs), n, c.timeout, eventsString(evs))
		}
	}
	if len(evs) > n {
		t.Fatalf("watch gave %d events; want %d: %s", len(evs), n, eventsString(evs))
	}
	return evs
}

// quiet checks that ch delivers nothing for a short while.
func quiet(t *testing.T, ch <-chan store.WatchResponse) {
	t.Helper()
	select {
	case resp := <-ch:
		t.Fatalf("unexpected watch response: %s (err %v)", eventsString(resp.Events), resp.Err)
	case <-time.After(200 * time.Millisecond):
	}
}

func eventsString(evs []store.Event) string {
	var b bytes.Buffer
	for _, ev := range evs {
		typ := "put"
		if ev.Type == store.EventDelete {
			typ = "delete"
		}
		fmt.Fprintf(&b, "[%s %s=%q @%d c%d] ", typ, ev.KV.Key, ev.KV.Value, ev.KV.ModRevision, ev.KV.CreateRevision)
	}
	return b.String()
}

type wantEvent struct {
	typ      store.EventType
	key, val string
	mod, cre int64
}

func matchEvents(t *testing.T, got []store.Event, want []wantEvent) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d events, want %d: %s", len(got), len(want), eventsString(got))
	}
	for i, w := range want {
		g := got[i]
		ok := g.Type == w.typ && g.KV.Key == w.key && g.KV.ModRevision == w.mod
		if w.typ == store.EventPut {
			ok = ok && string(g.KV.Value) == w.val && g.KV.CreateRevision == w.cre
		} else {
			ok = ok && g.KV.Value == nil
		}
		if !ok {
			t.Fatalf("event %d: %s; want %+v (all: %s)", i, eventsString([]store.Event{g}), w, eventsString(got))
		}
	}
}

func checkWatch(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	r0 := put(t, ctx, s, "w/0", "before")
	ch := s.Watch(ctx, "w/", r0)
	r1 := put(t, ctx, s, "w/1", "a")
	res, err := s.Txn(ctx, nil, []store.Op{store.Put("w/2", []byte("b")), store.Put("w/1", []byte("c"))})
	if err != nil {
		t.Fatal(err)
	}
	r2 := res.Revision
	put(t, ctx, s, "x/1", "other prefix")
	put(t, ctx, s, "w", "not under w/")
	if err := store.DeleteKey(ctx, s, "w/1"); err != nil {
		t.Fatal(err)
	}
	r3 := currentRev(t, ctx, s)
	r4 := put(t, ctx, s, "w/1", "d")
	evs := collect(t, c, ch, 5)
	// The order within one revision is the Txn's.
	matchEvents(t, evs, []wantEvent{
		{store.EventPut, "w/1", "a", r1, r1},
		{store.EventPut, "w/2", "b", r2, r2},
		{store.EventPut, "w/1", "c", r2, r1},
		{store.EventDelete, "w/1", "", r3, 0},
		{store.EventPut, "w/1", "d", r4, r4},
	})
	quiet(t, ch)
}

func checkWatchFromPast(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	r1 := put(t, ctx, s, "k", "1")
	r2 := put(t, ctx, s, "k", "2")
	r3 := put(t, ctx, s, "k", "3")
	ch := s.Watch(ctx, "k", r1)
	r4 := put(t, ctx, s, "k", "4")
	matchEvents(t, collect(t, c, ch, 3), []wantEvent{
		{store.EventPut, "k", "2", r2, r1},
		{store.EventPut, "k", "3", r3, r1},
		{store.EventPut, "k", "4", r4, r1},
	})
	// Two watchers from the same revision see the same changes.
	matchEvents(t, collect(t, c, s.Watch(ctx, "", r2), 2), []wantEvent{
		{store.EventPut, "k", "3", r3, r1},
		{store.EventPut, "k", "4", r4, r1},
	})
}

func checkWatchCompacted(t *testing.T, c *config, s store.Store) {
	if c.compact == nil {
		t.Skip("the store gave no way to compact (WithCompact)")
	}
	ctx := ctxFor(t, c)
	r1 := put(t, ctx, s, "k", "1")
	put(t, ctx, s, "k", "2")
	r3 := put(t, ctx, s, "k", "3")
	if err := c.compact(ctx, s, r3); err != nil {
		t.Fatalf("compact to %d: %v", r3, err)
	}
	ch := s.Watch(ctx, "k", r1)
	select {
	case resp, ok := <-ch:
		if !ok || !errors.Is(resp.Err, store.ErrCompacted) || len(resp.Events) != 0 {
			t.Fatalf("watch from compacted revision %d: %+v (open %v); want only ErrCompacted", r1, resp, ok)
		}
		if !errors.Is(resp.Err, errdefs.ErrNotFound) {
			t.Fatalf("ErrCompacted %v does not wrap ErrNotFound", resp.Err)
		}
	case <-time.After(c.timeout):
		t.Fatal("no response from a watch of a compacted revision")
	}
	mustClose(t, c, ch)
	// From the compaction's revision on, the watch works.
	ch = s.Watch(ctx, "k", r3)
	r4 := put(t, ctx, s, "k", "4")
	matchEvents(t, collect(t, c, ch, 1), []wantEvent{{store.EventPut, "k", "4", r4, r1}})
}

// mustClose drains ch and fails unless it is closed within the deadline;
// it returns the last response's Err.
func mustClose(t *testing.T, c *config, ch <-chan store.WatchResponse) error {
	t.Helper()
	var last error
	deadline := time.After(c.timeout)
	for {
		select {
		case resp, ok := <-ch:
			if !ok {
				return last
			}
			if last != nil {
				t.Fatalf("watch response after its error %v", last)
			}
			last = resp.Err
		case <-deadline:
			t.Fatal("watch channel not closed")
		}
	}
}

func checkWatchContextEnd(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	r := put(t, ctx, s, "k", "1")
	wctx, cancel := context.WithCancel(ctx)
	ch := s.Watch(wctx, "k", r)
	put(t, ctx, s, "k", "2")
	collect(t, c, ch, 1)
	cancel()
	if err := mustClose(t, c, ch); err != nil {
		t.Fatalf("watch ended by its context carried %v; want no error", err)
	}
	// A watch whose context has already ended closes at once.
	if err := mustClose(t, c, s.Watch(wctx, "k", r)); err != nil {
		t.Fatalf("watch with an ended context carried %v", err)
	}
	// The store is unharmed.
	ch = s.Watch(ctx, "k", r)
	collect(t, c, ch, 1)
}

// checkWatchSlowConsumer: a watcher that never reads neither blocks writes
// nor another watcher; when it reads at last it sees a gapless prefix of
// the changes, ended by an error if the store could not keep them all.
func checkWatchSlowConsumer(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	const n = 300
	r0 := put(t, ctx, s, "init", "x")
	slow := s.Watch(ctx, "s/", r0)
	fast := s.Watch(ctx, "s/", r0)
	got := make(chan []store.Event, 1)
	go func() {
		var evs []store.Event
		for resp := range fast {
			if resp.Err != nil {
				t.Errorf("fast watcher: %v after %d events", resp.Err, len(evs))
				break
			}
			evs = append(evs, resp.Events...)
			if len(evs) >= n {
				break
			}
		}
		got <- evs
	}()
	revs := make([]int64, n)
	for i := range n {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		rev, err := store.PutKey(wctx, s, fmt.Sprintf("s/%03d", i), []byte("v"))
		cancel()
		if err != nil {
			t.Fatalf("write %d with a watcher not reading: %v", i, err)
		}
		revs[i] = rev
	}
	var evs []store.Event
	select {
	case evs = <-got:
	case <-time.After(c.timeout):
		t.Fatal("the reading watcher did not get its events while another did not read")
	}
	if len(evs) != n {
		t.Fatalf("reading watcher got %d of %d events", len(evs), n)
	}
	for i, ev := range evs {
		if ev.KV.ModRevision != revs[i] {
			t.Fatalf("reading watcher's event %d at %d; want %d", i, ev.KV.ModRevision, revs[i])
		}
	}
	i := 0
	deadline := time.After(c.timeout)
	for i < n {
		select {
		case resp, ok := <-slow:
			if !ok {
				t.Fatalf("slow watcher closed after %d events without an error", i)
			}
			for _, ev := range resp.Events {
				if ev.KV.ModRevision != revs[i] {
					t.Fatalf("slow watcher's event %d at %d; want %d (a gap)", i, ev.KV.ModRevision, revs[i])
				}
				i++
			}
			if resp.Err != nil {
				if !errors.Is(resp.Err, store.ErrCompacted) {
					t.Fatalf("slow watcher ended with %v; want ErrCompacted", resp.Err)
				}
				t.Logf("slow watcher ended with %v after %d of %d events", resp.Err, i, n)
				return
			}
		case <-deadline:
			t.Fatalf("slow watcher got %d of %d events and no error", i, n)
		}
	}
}

func checkWatchClose(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	r := put(t, ctx, s, "k", "1")
	ch := s.Watch(ctx, "k", r)
	put(t, ctx, s, "k", "2")
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	err := mustClose(t, c, ch)
	if !errors.Is(err, store.ErrClosed) {
		t.Fatalf("watch of a closed store ended with %v; want ErrClosed", err)
	}
	err = mustClose(t, c, s.Watch(ctx, "k", r))
	if !errors.Is(err, store.ErrClosed) {
		t.Fatalf("watch opened after Close ended with %v; want ErrClosed", err)
	}
}

func checkLease(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	// Long enough not to expire during the test: Revoke ends it.
	id, err := s.Grant(ctx, 30*c.ttl)
	if err != nil {
		t.Fatalf("Grant: %v", err)
	}
	if id == store.NoLease {
		t.Fatal("Grant returned NoLease")
	}
	id2, err := s.Grant(ctx, 30*c.ttl)
	if err != nil || id2 == id {
		t.Fatalf("second Grant = %v, %v; want a new id besides %v", id2, err, id)
	}
	r0 := put(t, ctx, s, "l/plain", "x")
	res, err := s.Txn(ctx, nil, []store.Op{
		store.PutWithLease("l/a", []byte("a"), id), store.PutWithLease("l/b", []byte("b"), id),
		store.PutWithLease("l/other", []byte("o"), id2),
	})
	if err != nil || !res.Succeeded {
		t.Fatalf("Txn attaching keys to leases: %+v, %v", res, err)
	}
	if kv := get(t, ctx, s, "l/a"); kv.Lease != id {
		t.Fatalf("l/a attached to %v; want %v", kv.Lease, id)
	}
	if err := s.KeepAlive(ctx, id); err != nil {
		t.Fatalf("KeepAlive of a live lease: %v", err)
	}
	// A key written again without the lease leaves it.
	rMoved := put(t, ctx, s, "l/b", "b2")
	ch := s.Watch(ctx, "l/", rMoved)
	if err := s.Revoke(ctx, id); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	evs := collect(t, c, ch, 1)
	if evs[0].Type != store.EventDelete || evs[0].KV.Key != "l/a" {
		t.Fatalf("after Revoke: %s; want the delete of l/a only", eventsString(evs))
	}
	mustMissing(t, ctx, s, "l/a")
	for _, k := range []string{"l/b", "l/other", "l/plain"} {
		get(t, ctx, s, k)
	}
	if err := s.Revoke(ctx, id); err != nil {
		t.Fatalf("Revoke of a revoked lease: %v", err)
	}
	if err := s.KeepAlive(ctx, id); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("KeepAlive of a revoked lease = %v; want ErrNotFound", err)
	}
	if err := s.Revoke(ctx, id2); err != nil {
		t.Fatal(err)
	}
	mustMissing(t, ctx, s, "l/other")
	_ = r0
}

func checkLeaseExpiry(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	id, err := s.Grant(ctx, c.ttl)
	if err != nil {
		t.Fatal(err)
	}
	r0 := put(t, ctx, s, "e/plain", "x")
	ch := s.Watch(ctx, "e/", r0)
	res, err := s.Txn(ctx, nil, []store.Op{
		store.PutWithLease("e/a", []byte("a"), id), store.PutWithLease("e/b", []byte("b"), id),
	})
	if err != nil || !res.Succeeded {
		t.Fatalf("Txn: %+v, %v", res, err)
	}
	start := time.Now()
	evs := collect(t, c, ch, 4) // two puts, then two deletes when the lease expires
	took := time.Since(start)
	if evs[2].Type != store.EventDelete || evs[3].Type != store.EventDelete ||
		evs[2].KV.ModRevision <= res.Revision {
		t.Fatalf("expiry events: %s", eventsString(evs))
	}
	if took < c.ttl/2 {
		t.Fatalf("lease of %v expired after %v", c.ttl, took)
	}
	t.Logf("lease of %v expired after %v", c.ttl, took)
	mustMissing(t, ctx, s, "e/a")
	mustMissing(t, ctx, s, "e/b")
	get(t, ctx, s, "e/plain")
	if err := s.KeepAlive(ctx, id); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("KeepAlive of an expired lease = %v; want ErrNotFound", err)
	}
	if _, err := s.Txn(ctx, nil, []store.Op{store.PutWithLease("e/late", nil, id)}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("attaching to an expired lease = %v; want ErrNotFound", err)
	}
	if err := s.Revoke(ctx, id); err != nil {
		t.Fatalf("Revoke of an expired lease: %v", err)
	}
}

func checkLeaseKeepAlive(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	id, err := s.Grant(ctx, c.ttl)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Create(ctx, s, "held", []byte("x"), id); err != nil {
		t.Fatal(err)
	}
	// Renewed every quarter TTL for two TTLs, the key stays.
	end := time.Now().Add(2 * c.ttl)
	for time.Now().Before(end) {
		if err := s.KeepAlive(ctx, id); err != nil {
			t.Fatalf("KeepAlive: %v", err)
		}
		get(t, ctx, s, "held")
		time.Sleep(c.ttl / 4)
	}
	// Left alone, it goes.
	deadline := time.Now().Add(c.timeout)
	for {
		_, err := s.Get(ctx, "held")
		if errors.Is(err, errdefs.ErrNotFound) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("key of a lease not renewed still there after %v", c.timeout)
		}
		time.Sleep(c.ttl / 10)
	}
}

func checkLeaseMissing(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	const missing = store.LeaseID(0x7eadbeef)
	before := currentRev(t, ctx, s)
	_, err := s.Txn(ctx, nil, []store.Op{store.Put("plain", []byte("x")), store.PutWithLease("k", []byte("x"), missing)})
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Txn attaching to a missing lease = %v; want ErrNotFound", err)
	}
	mustMissing(t, ctx, s, "plain")
	mustMissing(t, ctx, s, "k")
	if now := currentRev(t, ctx, s); now != before {
		t.Fatalf("a refused Txn moved the revision from %d to %d", before, now)
	}
	if err := s.KeepAlive(ctx, missing); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("KeepAlive of a missing lease = %v; want ErrNotFound", err)
	}
	if err := s.Revoke(ctx, missing); err != nil {
		t.Fatalf("Revoke of a missing lease = %v; want nil", err)
	}
	if d, err := s.TimeToLive(ctx, missing); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("TimeToLive of a missing lease = %v, %v; want ErrNotFound", d, err)
	}
}

// checkLeaseTimeToLive: a live lease has (0, TTL] left, again after a
// KeepAlive; a revoked or expired one is ErrNotFound.
func checkLeaseTimeToLive(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	ttl := 30 * c.ttl
	id, err := s.Grant(ctx, ttl)
	if err != nil {
		t.Fatal(err)
	}
	inRange := func(what string) {
		t.Helper()
		left, err := s.TimeToLive(ctx, id)
		if err != nil {
			t.Fatalf("TimeToLive %s: %v", what, err)
		}
		// No check here takes half the TTL; etcd rounds down to whole
		// seconds.
		if left <= ttl/2 || left > ttl {
			t.Fatalf("TimeToLive %s = %v; want in (%v, %v]", what, left, ttl/2, ttl)
		}
	}
	inRange("of a new lease")
	if err := s.KeepAlive(ctx, id); err != nil {
		t.Fatal(err)
	}
	inRange("after KeepAlive")
	if err := s.Revoke(ctx, id); err != nil {
		t.Fatal(err)
	}
	if d, err := s.TimeToLive(ctx, id); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("TimeToLive of a revoked lease = %v, %v; want ErrNotFound", d, err)
	}

	short, err := s.Grant(ctx, c.ttl)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(c.timeout)
	for {
		left, err := s.TimeToLive(ctx, short)
		if errors.Is(err, errdefs.ErrNotFound) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if left <= 0 || left > c.ttl {
			t.Fatalf("TimeToLive of a lease of %v = %v", c.ttl, left)
		}
		if time.Now().After(deadline) {
			t.Fatalf("a lease of %v not renewed still has %v left after %v", c.ttl, left, c.timeout)
		}
		time.Sleep(c.ttl / 10)
	}
}

func checkContextCanceled(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	r := put(t, ctx, s, "k", "1")
	id, err := s.Grant(ctx, 30*c.ttl)
	if err != nil {
		t.Fatal(err)
	}
	dead, cancel := context.WithCancel(ctx)
	cancel()
	want := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a canceled context = %v; want context.Canceled", what, err)
		}
	}
	_, err = s.Get(dead, "k")
	want("Get", err)
	_, _, err = s.List(dead, "", 0)
	want("List", err)
	_, err = s.Txn(dead, nil, []store.Op{store.Put("k", []byte("2"))})
	want("Txn", err)
	_, err = s.Grant(dead, c.ttl)
	want("Grant", err)
	want("KeepAlive", s.KeepAlive(dead, id))
	want("Revoke", s.Revoke(dead, id))
	_, err = s.TimeToLive(dead, id)
	want("TimeToLive", err)
	if kv := get(t, ctx, s, "k"); string(kv.Value) != "1" || kv.ModRevision != r {
		t.Fatalf("k after a canceled Txn: %+v", kv)
	}
	if err := s.KeepAlive(ctx, id); err != nil {
		t.Fatalf("lease after a canceled Revoke: %v", err)
	}
	// An expired deadline is a deadline, not an unavailable store.
	past, cancel2 := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancel2()
	if _, err := s.Get(past, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Get past its deadline = %v; want context.DeadlineExceeded", err)
	}
}

func checkClose(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	put(t, ctx, s, "k", "1")
	id, err := s.Grant(ctx, 30*c.ttl)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	want := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, store.ErrClosed) || !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("%s after Close = %v; want ErrClosed (an ErrUnavailable)", what, err)
		}
	}
	_, err = s.Get(ctx, "k")
	want("Get", err)
	_, _, err = s.List(ctx, "", 0)
	want("List", err)
	_, err = s.Txn(ctx, nil, []store.Op{store.Put("k", []byte("2"))})
	want("Txn", err)
	_, err = s.Grant(ctx, c.ttl)
	want("Grant", err)
	want("KeepAlive", s.KeepAlive(ctx, id))
	want("Revoke", s.Revoke(ctx, id))
	_, err = s.TimeToLive(ctx, id)
	want("TimeToLive", err)
}

func checkReopen(t *testing.T, c *config, s store.Store) {
	if c.reopen == nil {
		t.Skip("the store gave no way to reopen (WithReopen)")
	}
	ctx := ctxFor(t, c)
	id, err := s.Grant(ctx, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	put(t, ctx, s, "p/a", "1")
	put(t, ctx, s, "p/b", "1")
	put(t, ctx, s, "p/a", "2")
	if _, err := store.Create(ctx, s, "p/leased", []byte("l"), id); err != nil {
		t.Fatal(err)
	}
	if err := store.DeleteKey(ctx, s, "p/b"); err != nil {
		t.Fatal(err)
	}
	before, rev, err := s.List(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	s = c.reopen(t, s)
	t.Cleanup(func() { _ = s.Close() })
	after, rev2, err := s.List(ctx, "", 0)
	if err != nil {
		t.Fatalf("List after reopen: %v", err)
	}
	if rev2 != rev {
		t.Fatalf("revision %d after reopen; was %d", rev2, rev)
	}
	if fmt.Sprintf("%+v", after) != fmt.Sprintf("%+v", before) {
		t.Fatalf("after reopen:\n%+v\nbefore:\n%+v", after, before)
	}
	if r := put(t, ctx, s, "p/c", "1"); r != rev+1 {
		t.Fatalf("first write after reopen at %d; want %d", r, rev+1)
	}
	if err := s.KeepAlive(ctx, id); err != nil {
		t.Fatalf("lease after reopen: %v", err)
	}
	id2, err := s.Grant(ctx, time.Minute)
	if err != nil || id2 == id {
		t.Fatalf("Grant after reopen = %v, %v; want a new id besides %v", id2, err, id)
	}
	if err := s.Revoke(ctx, id); err != nil {
		t.Fatal(err)
	}
	mustMissing(t, ctx, s, "p/leased")
}

// checkWatchReplay has writers race random Txns (puts, deletes, CAS,
// leased keys and a revoke) while a watcher records every change: the
// changes replayed in order rebuild exactly what List then shows, and
// revisions only grow.
func checkWatchReplay(t *testing.T, c *config, s store.Store) {
	ctx := ctxFor(t, c)
	r0 := put(t, ctx, s, "init", "x")
	ch := s.Watch(ctx, "r/", r0)
	id, err := s.Grant(ctx, 30*c.ttl)
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 6, 25
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewSource(int64(w)))
			for i := range each {
				k1 := fmt.Sprintf("r/%d", rnd.Intn(8))
				k2 := fmt.Sprintf("r/%d", 8+rnd.Intn(4))
				v := fmt.Sprintf("%d.%d", w, i)
				var err error
				switch rnd.Intn(5) {
				case 0:
					err = store.DeleteKey(ctx, s, k1)
				case 1:
					kv, gerr := s.Get(ctx, k1)
					if gerr != nil && !errors.Is(gerr, errdefs.ErrNotFound) {
						err = gerr
						break
					}
					_, err = store.CompareAndSwap(ctx, s, k1, []byte(v), kv.ModRevision)
					if store.IsConflict(err) {
						err = nil
					}
				case 2:
					_, err = s.Txn(ctx, nil, []store.Op{store.PutWithLease(k1, []byte(v), id), store.Put(k2, []byte(v))})
				default:
					_, err = s.Txn(ctx, nil, []store.Op{store.Put(k1, []byte(v)), store.Delete(k2)})
				}
				if err != nil {
					t.Errorf("writer %d: %v", w, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := s.Revoke(ctx, id); err != nil {
		t.Fatal(err)
	}
	want, rev, err := s.List(ctx, "r/", 0)
	if err != nil {
		t.Fatal(err)
	}
	state := make(map[string]store.KV)
	last := r0
	deadline := time.After(c.timeout)
	for last < rev {
		select {
		case resp, ok := <-ch:
			if !ok || resp.Err != nil {
				t.Fatalf("watch ended at revision %d of %d: %v", last, rev, resp.Err)
			}
			for _, ev := range resp.Events {
				if ev.KV.ModRevision < last {
					t.Fatalf("event at revision %d after one at %d", ev.KV.ModRevision, last)
				}
				last = ev.KV.ModRevision
				if ev.Type == store.EventDelete {
					delete(state, ev.KV.Key)
				} else {
					state[ev.KV.Key] = ev.KV
				}
			}
		case <-deadline:
			t.Fatalf("watch reached revision %d of %d", last, rev)
		}
	}
	if last != rev {
		t.Fatalf("watch passed the listed revision %d: %d", rev, last)
	}
	if len(state) != len(want) {
		t.Fatalf("replay has %d keys, List %d", len(state), len(want))
	}
	for _, kv := range want {
		got, ok := state[kv.Key]
		if !ok || !bytes.Equal(got.Value, kv.Value) || got.ModRevision != kv.ModRevision ||
			got.CreateRevision != kv.CreateRevision || got.Lease != kv.Lease {
			t.Fatalf("%s: replay %+v, List %+v", kv.Key, got, kv)
		}
	}
}
