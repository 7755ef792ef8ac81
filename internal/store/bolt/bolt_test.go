package bolt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"

	"github.com/vigilhq/vigil/internal/errdefs"

	"github.com/vigilhq/vigil/internal/store"
	"github.com/vigilhq/vigil/internal/store/storetest"
)

func openTemp(t testing.TB, opts Options) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "store.db"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		// A history smaller than the suite's slow-consumer test writes,
		// so that its watcher that does not read falls behind.
		return openTemp(t, Options{History: 200, WatchBuffer: 16})
	},
		// Short for a fast suite, long enough that a KeepAlive every
		// quarter TTL survives fsync stalls of a loaded disk (up to
		// 170 ms seen, docs/benchmarks/store.md).
		storetest.WithTTL(time.Second),
		storetest.WithCompact(func(_ context.Context, s store.Store, rev int64) error {
			s.(*Store).Compact(rev)
			return nil
		}),
		storetest.WithReopen(func(t *testing.T, s store.Store) store.Store {
			b := s.(*Store)
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			r, err := Open(b.Path(), b.opts)
			if err != nil {
				t.Fatalf("reopen: %v", err)
			}
			return r
		}),
	)
}

func TestReopenExpiresLeasesThatRanOut(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	short, err := s.Grant(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	long, err := s.Grant(ctx, 3*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Create(ctx, s, "held/short", []byte("x"), short); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Create(ctx, s, "held/long", []byte("x"), long); err != nil {
		t.Fatal(err)
	}
	_, rev, err := s.List(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Two hours later: the one-hour lease ran out while the store was closed.
	later := func() time.Time { return time.Now().Add(2 * time.Hour) }
	s, err = Open(path, Options{Now: later})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Get(ctx, "held/short"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("key of a lease that ran out while closed: %v; want ErrNotFound", err)
	}
	if err := s.KeepAlive(ctx, short); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("KeepAlive of a lease that ran out while closed: %v", err)
	}
	kv, err := s.Get(ctx, "held/long")
	if err != nil || kv.Lease != long {
		t.Fatalf("key of a live lease after reopen: %+v, %v", kv, err)
	}
	if err := s.KeepAlive(ctx, long); err != nil {
		t.Fatalf("KeepAlive of a live lease after reopen: %v", err)
	}
	// The expiry's delete is a write of its own, and in the history: a
	// watch from before Open sees it.
	kvs, rev2, err := s.List(ctx, "", 0)
	if err != nil || rev2 != rev+1 || len(kvs) != 1 {
		t.Fatalf("after reopen: %d keys at revision %d, %v; want 1 at %d", len(kvs), rev2, err, rev+1)
	}
	resp := <-s.Watch(ctx, "", rev)
	if resp.Err != nil || len(resp.Events) != 1 || resp.Events[0].Type != store.EventDelete ||
		resp.Events[0].KV.Key != "held/short" || resp.Events[0].KV.ModRevision != rev+1 {
		t.Fatalf("watch from before Open: %+v; want the expiry's delete at %d", resp, rev+1)
	}
	resp = <-s.Watch(ctx, "", rev-1)
	if !errors.Is(resp.Err, store.ErrCompacted) {
		t.Fatalf("watch from before the last revision of the last run: %+v; want ErrCompacted", resp)
	}
}

func TestOpenDamagedFile(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.db")
	data := bytes.Repeat([]byte("not a bbolt file "), 1000)
	if err := os.WriteFile(garbage, data, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(garbage, Options{})
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), garbage) {
		t.Fatalf("Open of a garbage file = %v; want ErrInvalid naming the file", err)
	}
	t.Log(err)
	after, _ := os.ReadFile(garbage)
	if !bytes.Equal(after, data) {
		t.Fatal("Open changed the file it refused")
	}

	// A valid bbolt file that is not a store.
	other := filepath.Join(dir, "other.db")
	db, err := bbolt.Open(other, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error { _, err := tx.CreateBucket([]byte("theirs")); return err }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = Open(other, Options{})
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), other) {
		t.Fatalf("Open of another program's bbolt file = %v; want ErrInvalid naming the file", err)
	}
	t.Log(err)

	// A store whose key record is damaged: reads of it say so, others work.
	path := filepath.Join(dir, "store.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	store.PutKey(ctx, s, "fine", []byte("x"))
	s.Close()
	db, err = bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(bucketKV).Put([]byte("bad"), []byte{9, 9}) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Get(ctx, "bad"); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), `"bad"`) {
		t.Fatalf("Get of a damaged record = %v; want ErrInvalid naming the key", err)
	}
	if _, err := s.Get(ctx, "fine"); err != nil {
		t.Fatalf("Get beside a damaged record: %v", err)
	}
	if _, err := store.CompareAndSwap(ctx, s, "bad", []byte("x"), 0); !store.IsConflict(err) {
		t.Fatalf("Create over a damaged record = %v; want a conflict", err)
	}
}

func TestOpenLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	_, err = Open(path, Options{LockTimeout: 200 * time.Millisecond})
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("second Open = %v; want ErrUnavailable saying %s is locked", err, path)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("second Open took %v", took)
	}
	t.Log(err)

	// Another process: this test binary, asked to open the same file.
	cmd := exec.Command(os.Args[0], "-test.run=^TestOpenLockedChild$", "-test.v")
	cmd.Env = append(os.Environ(), "VIGIL_BOLT_CHILD_OPEN="+path)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "child: open store "+path+": the file is locked") {
		t.Fatalf("child process opening the same file: %v\n%s", err, out)
	}
}

// TestOpenLockedChild is run by TestOpenLocked in a process of its own.
func TestOpenLockedChild(t *testing.T) {
	path := os.Getenv("VIGIL_BOLT_CHILD_OPEN")
	if path == "" {
		t.Skip("run by TestOpenLocked")
	}
	_, err := Open(path, Options{LockTimeout: 200 * time.Millisecond})
	if err == nil {
		t.Fatal("child opened a file another process holds")
	}
	fmt.Println("child:", err)
}

// TestWatcherFallsBehind: a watcher that does not read while more changes
// than the history holds are written ends with ErrCompacted after a gapless
// prefix, and writes never wait for it.
func TestWatcherFallsBehind(t *testing.T) {
	ctx := context.Background()
	s := openTemp(t, Options{History: 50, WatchBuffer: 4})
	ch := s.Watch(ctx, "", 1)
	for i := range 200 {
		if _, err := store.PutKey(ctx, s, fmt.Sprintf("k%03d", i), nil); err != nil {
			t.Fatal(err)
		}
	}
	next := int64(2)
	for resp := range ch {
		for _, ev := range resp.Events {
			if ev.KV.ModRevision != next {
				t.Fatalf("event at %d; want %d", ev.KV.ModRevision, next)
			}
			next++
		}
		if resp.Err != nil {
			if !errors.Is(resp.Err, store.ErrCompacted) {
				t.Fatalf("watch ended with %v", resp.Err)
			}
			// It fell behind: it got a gapless prefix (checked above), not
			// all 200, and then the error.
			t.Logf("watcher fell behind after %d events: %v", next-2, resp.Err)
			return
		}
	}
	t.Fatal("watch closed without ErrCompacted")
}

func TestCloseStopsGoroutines(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx := context.Background()
	s, err := Open(filepath.Join(t.TempDir(), "store.db"), Options{WatchBuffer: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Grant(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	_, rev, _ := s.List(ctx, "", 0)
	unread := s.Watch(ctx, "", rev) // never read before Close
	for range 5 {
		store.PutKey(ctx, s, "k", nil)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	var last error
	for resp := range unread {
		last = resp.Err
	}
	if !errors.Is(last, store.ErrClosed) {
		t.Fatalf("unread watch ended with %v; want ErrClosed", last)
	}
}

// TestGroupCommitIsolatesRefusals: Txns committed in one batch succeed or
// fail each on its own: one refused (a missing lease) or canceled applies
// nothing and takes nothing from the others.
func TestGroupCommitIsolatesRefusals(t *testing.T) {
	ctx := context.Background()
	s := openTemp(t, Options{})
	id, err := s.Grant(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	const n = 60
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprintf("k%02d", i)
			switch i % 3 {
			case 0:
				_, errs[i] = store.Create(ctx, s, key, []byte("x"), id)
			case 1:
				_, errs[i] = store.Create(ctx, s, key, []byte("x"), id+1000) // no such lease
			case 2:
				_, errs[i] = store.Create(canceled, s, key, []byte("x"), store.NoLease)
			}
		}()
	}
	wg.Wait()
	kvs, rev, err := s.List(ctx, "k", 0)
	if err != nil {
		t.Fatal(err)
	}
	for i, err := range errs {
		switch i % 3 {
		case 0:
			if err != nil {
				t.Errorf("k%02d: %v", i, err)
			}
		case 1:
			if !errors.Is(err, errdefs.ErrNotFound) {
				t.Errorf("k%02d with a missing lease: %v; want ErrNotFound", i, err)
			}
		case 2:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("k%02d with a canceled context: %v", i, err)
			}
		}
	}
	if len(kvs) != n/3 {
		t.Fatalf("%d keys; want %d: %v", len(kvs), n/3, kvs)
	}
	// Revisions are dense: one per applied Txn, after the Grant's 1.
	if rev != 1+n/3 {
		t.Fatalf("revision %d after %d creates", rev, n/3)
	}
}

// TestQueuedTxnHonoursContext: a Txn queued behind a commit that does not
// finish returns when its context ends, and is not applied later.
func TestQueuedTxnHonoursContext(t *testing.T) {
	ctx := context.Background()
	s := openTemp(t, Options{})
	s.mu.Lock() // stands for a commit stuck in fsync
	first := make(chan error, 1)
	go func() { _, err := store.PutKey(ctx, s, "first", nil); first <- err }()
	// Wait until the first Txn is committing (it leads, and blocks on mu).
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.pmu.Lock()
		leading := s.committing && len(s.pending) == 0
		s.pmu.Unlock()
		if leading {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("first Txn never started its commit")
		}
		time.Sleep(time.Millisecond)
	}
	qctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := store.PutKey(qctx, s, "queued", nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("queued Txn past its deadline = %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("queued Txn returned after %v", took)
	}
	s.mu.Unlock()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "queued"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Txn that gave up while queued was applied: %v", err)
	}
	// The queue still works.
	if _, err := store.PutKey(ctx, s, "after", nil); err != nil {
		t.Fatal(err)
	}
}

// TestFaultyConforms: storetest.Faulty without a fault is the store it
// wraps (the suite passes through it), and an injected fault fails exactly
// the calls it matches, applying nothing.
func TestFaultyConforms(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return storetest.NewFaulty(openTemp(t, Options{History: 200, WatchBuffer: 16}))
	}, storetest.WithTTL(time.Second))

	ctx := context.Background()
	f := storetest.NewFaulty(openTemp(t, Options{}))
	diskGone := fmt.Errorf("disk gone: %w", errdefs.ErrUnavailable)
	f.Inject(func(c storetest.Call) error {
		if c.Method == "Txn" && strings.HasPrefix(c.Keys[0], "journal/") {
			return diskGone
		}
		return nil
	})
	if _, err := store.Create(ctx, f, "journal/1", nil, store.NoLease); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("Create under an injected fault = %v", err)
	}
	if _, err := store.Create(ctx, f, "other/1", nil, store.NoLease); err != nil {
		t.Fatalf("Create the fault does not match: %v", err)
	}
	f.Inject(nil)
	if _, err := f.Get(ctx, "journal/1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("a refused Create was applied: %v", err)
	}
	if _, err := store.Create(ctx, f, "journal/1", nil, store.NoLease); err != nil {
		t.Fatalf("Create once the fault is cleared: %v", err)
	}
}
