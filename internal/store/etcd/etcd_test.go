package etcd

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/pki"
	"github.com/vigilhq/vigil/internal/store"
	"github.com/vigilhq/vigil/internal/store/etcd/etcdtest"
	"github.com/vigilhq/vigil/internal/store/storetest"
)

var prefixes atomic.Int64

// newStore opens a store on the cluster under a prefix of its own.
func newStore(t testing.TB, c *etcdtest.Cluster, cfg Config) *Store {
	t.Helper()
	cfg.Endpoints = c.Endpoints()
	if cfg.Prefix == "" {
		cfg.Prefix = fmt.Sprintf("/test/%s/%d/", t.Name(), prefixes.Add(1))
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	c := etcdtest.StartCluster(t, 1)
	storetest.Run(t, func(t *testing.T) store.Store { return newStore(t, c, Config{}) },
		// etcd's minimum with etcdtest's timing is 1 s; 2 s leaves a
		// KeepAlive every quarter TTL room for a loaded machine.
		storetest.WithTTL(2*time.Second),
		storetest.WithCompact(func(ctx context.Context, s store.Store, rev int64) error {
			return s.(*Store).Compact(ctx, rev)
		}),
		storetest.WithReopen(func(t *testing.T, s store.Store) store.Store {
			e := s.(*Store)
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			return newStore(t, c, e.cfg)
		}),
	)
}

// TestPrefixIsolates: two stores under different prefixes of one cluster
// see only their own keys, and keys come back without the prefix.
func TestPrefixIsolates(t *testing.T) {
	c := etcdtest.StartCluster(t, 1)
	ctx := context.Background()
	a := newStore(t, c, Config{Prefix: "/a/"})
	b := newStore(t, c, Config{Prefix: "/a/b/"})
	rev, err := store.PutKey(ctx, a, "k", []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.PutKey(ctx, b, "k", []byte("b")); err != nil {
		t.Fatal(err)
	}
	kvs, _, err := b.List(ctx, "", 0)
	if err != nil || len(kvs) != 1 || kvs[0].Key != "k" || string(kvs[0].Value) != "b" {
		t.Fatalf("b's list: %+v, %v", kvs, err)
	}
	// a's keyspace includes b's (it is under /a/): the prefix is the
	// operator's to choose disjoint.
	kvs, _, err = a.List(ctx, "", 0)
	if err != nil || len(kvs) != 2 || kvs[0].Key != "b/k" || kvs[1].Key != "k" {
		t.Fatalf("a's list: %+v, %v", kvs, err)
	}
	resp := <-a.Watch(ctx, "k", rev-1)
	if resp.Err != nil || len(resp.Events) != 1 || resp.Events[0].KV.Key != "k" {
		t.Fatalf("a's watch: %+v", resp)
	}
}

func TestNoEndpointAnswers(t *testing.T) {
	s, err := New(Config{Endpoints: []string{"127.0.0.1:1"}, RequestTimeout: 500 * time.Millisecond, DialTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	_, err = s.Get(context.Background(), "k")
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("Get with no etcd = %v; want ErrUnavailable", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Get with no etcd took %v; the request timeout is 500ms", took)
	}
	// The caller's own deadline, shorter than the request timeout, stays a
	// deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := store.PutKey(ctx, s, "k", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Put past the caller's deadline = %v; want context.DeadlineExceeded", err)
	}
	if _, err := New(Config{}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("New without endpoints = %v; want ErrInvalid", err)
	}
}

// TestQuorum: on three members, writes go on with one killed; with two
// killed, calls fail with ErrUnavailable within the request timeout; once
// they are back, everything works again and nothing was lost.
func TestQuorum(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	const reqTimeout = 2 * time.Second
	s := newStore(t, c, Config{RequestTimeout: reqTimeout, DialTimeout: time.Second})
	ctx := context.Background()
	written := 0
	write := func() error {
		_, err := store.Create(ctx, s, fmt.Sprintf("w/%04d", written), []byte("x"), store.NoLease)
		if err == nil {
			written++
		}
		return err
	}
	// eventually retries write until it works, then wants 20 more in a row.
	eventually := func(what string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		var err error
		for err = write(); err != nil; err = write() {
			if !errors.Is(err, errdefs.ErrUnavailable) {
				t.Fatalf("%s: write: %v; want success or ErrUnavailable", what, err)
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: writes fail for 30 s: %v", what, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		for range 20 {
			if err := write(); err != nil {
				t.Fatalf("%s: write after one succeeded: %v", what, err)
			}
		}
	}
	eventually("3 members")
	_, rev, err := s.List(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	watch := s.Watch(ctx, "w/", rev)

	c.Kill(0)
	eventually("member 0 killed")

	c.Kill(1)
	// Give the survivor time to notice it has no leader; a call before
	// that waits for the request timeout instead, also ErrUnavailable.
	for _, call := range []struct {
		name string
		fn   func(context.Context) error
	}{
		{"Txn", func(ctx context.Context) error {
			_, err := store.Create(ctx, s, "lost", []byte("x"), store.NoLease)
			return err
		}},
		{"Get", func(ctx context.Context) error { _, err := s.Get(ctx, "w/0000"); return err }},
		{"List", func(ctx context.Context) error { _, _, err := s.List(ctx, "w/", 0); return err }},
		{"Grant", func(ctx context.Context) error { _, err := s.Grant(ctx, time.Minute); return err }},
	} {
		start := time.Now()
		err := call.fn(ctx)
		took := time.Since(start)
		if !errors.Is(err, errdefs.ErrUnavailable) {
			t.Fatalf("%s without quorum = %v; want ErrUnavailable", call.name, err)
		}
		if took > reqTimeout+3*time.Second {
			t.Fatalf("%s without quorum took %v; the request timeout is %v", call.name, took, reqTimeout)
		}
		t.Logf("%s without quorum: %v after %v", call.name, err, took.Round(time.Millisecond))
		// A caller's deadline shorter than the request timeout is kept.
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		err = call.fn(short)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, errdefs.ErrUnavailable) {
			t.Fatalf("%s without quorum, 300 ms deadline = %v", call.name, err)
		}
	}
	// The watch either ended ErrUnavailable (its member lost its leader)
	// or is still open; it never ends silently.
	var seen int
	func() {
		for {
			select {
			case resp, ok := <-watch:
				if !ok {
					t.Fatal("watch closed without an error when quorum was lost")
				}
				seen += len(resp.Events)
				if resp.Err != nil {
					if !errors.Is(resp.Err, errdefs.ErrUnavailable) {
						t.Fatalf("watch without quorum ended with %v; want ErrUnavailable", resp.Err)
					}
					t.Logf("watch without quorum: %v after %d events", resp.Err, seen)
					watch = nil
					return
				}
			case <-time.After(3 * time.Second):
				return
			}
		}
	}()

	c.Restart(0)
	c.Restart(1)
	eventually("members 0 and 1 back")
	kvs, _, err := s.List(ctx, "w/", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(kvs) != written {
		t.Fatalf("%d keys after recovery; %d writes succeeded", len(kvs), written)
	}
	if _, err := s.Get(ctx, "lost"); err == nil {
		t.Log("the Txn without quorum was applied after all (its answer was lost, not its write)")
	}
	for i := range c.Size() {
		c.WaitServing(i)
	}
}

// TestTLS: a cluster that serves clients over TLS and requires client
// certificates answers a store with the right certificate, and refuses
// one without TLS or with a certificate from another CA.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("etcd test CA")
	if err != nil {
		t.Fatal(err)
	}
	server, err := ca.WriteFiles(filepath.Join(dir, "server"), "server", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	clientFiles, err := ca.WriteFiles(filepath.Join(dir, "client"), "client", "vigil-aggregator")
	if err != nil {
		t.Fatal(err)
	}
	clientTLS, err := pki.ClientConfig(clientFiles, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	c := etcdtest.StartCluster(t, 1, etcdtest.WithClientTLS(server, clientTLS))
	ctx := context.Background()
	s := newStore(t, c, Config{TLS: clientTLS})
	if _, err := store.Create(ctx, s, "k", []byte("x"), store.NoLease); err != nil {
		t.Fatalf("Create over TLS: %v", err)
	}

	plain := Config{RequestTimeout: time.Second, Endpoints: []string{strings.Replace(c.Endpoint(0), "https://", "http://", 1)}}
	other, err := pki.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	strangerFiles, err := other.WriteFiles(filepath.Join(dir, "stranger"), "stranger", "stranger")
	if err != nil {
		t.Fatal(err)
	}
	strangerFiles.CA = clientFiles.CA // it trusts the server, the server does not trust it
	strangerTLS, err := pki.ClientConfig(strangerFiles, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]Config{
		"plain":                     plain,
		"certificate of another CA": {RequestTimeout: time.Second, Endpoints: c.Endpoints(), TLS: strangerTLS},
	} {
		bad, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		_, err = bad.Get(ctx, "k")
		bad.Close()
		if !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("%s: Get = %v; want ErrUnavailable", name, err)
		}
	}
}

// TestCloseStopsGoroutines: Close ends the store's watches, read or not,
// with ErrClosed, and leaves no goroutine of the store or its client.
func TestCloseStopsGoroutines(t *testing.T) {
	c := etcdtest.StartCluster(t, 1)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx := context.Background()
	s, err := New(Config{Endpoints: c.Endpoints(), Prefix: "/leak/", WatchBuffer: 1})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := store.PutKey(ctx, s, "k", nil)
	if err != nil {
		t.Fatal(err)
	}
	unread := s.Watch(ctx, "", rev) // never read before Close
	for range 5 {
		if _, err := store.PutKey(ctx, s, "k", nil); err != nil {
			t.Fatal(err)
		}
	}
	// Wait until the watch has filled its buffer of one.
	deadline := time.Now().Add(10 * time.Second)
	for len(unread) < cap(unread) {
		if time.Now().After(deadline) {
			t.Fatal("watch never delivered")
		}
		time.Sleep(10 * time.Millisecond)
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
