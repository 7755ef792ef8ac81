package gossip

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// testWriter sends log lines to t.Log (kept after the test ends quietly).
type testWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// testLogger logs warnings and errors to the test's log; VIGIL_GOSSIP_DEBUG=1
// logs everything, memberlist's chatter included.
func testLogger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("VIGIL_GOSSIP_DEBUG") != "" {
		level = slog.LevelDebug
	}
	w := &testWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// loopbackConfig is a member on 127.0.0.1, an ephemeral port, default
// tunables.
func loopbackConfig(t testing.TB, name string) Config {
	return Config{Name: name, AgentVersion: "test", BindAddr: "127.0.0.1", BindPort: -1, Logger: testLogger(t),
		JoinBackoffInitial: 100 * time.Millisecond, JoinBackoffMax: time.Second}
}

// running is a member whose Run goroutine the test owns.
type running struct {
	*Member
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// stop ends Run (a graceful leave unless crashed) and waits for it.
func (r *running) stop(t testing.TB) {
	t.Helper()
	r.once.Do(func() { r.stopOnce(t) })
}

func (r *running) stopOnce(t testing.TB) {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("%s: Run: %v", r.Name(), err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: Run did not return 30s after its context ended", r.Name())
	}
}

// start runs a member until the test ends.
func start(t testing.TB, cfg Config) *running {
	t.Helper()
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", cfg.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Member: m, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- m.Run(ctx) }()
	select {
	case <-m.Ready():
	case err := <-r.done:
		t.Fatalf("%s: Run: %v", cfg.Name, err)
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: not listening after 10s", cfg.Name)
	}
	t.Cleanup(func() { r.stop(t) })
	return r
}

// waitFor polls cond every 50ms until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	begin := time.Now()
	for !cond() {
		if time.Since(begin) > timeout {
			t.Fatalf("after %v: %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(begin)
}

func viewOf(m *Member, name string) (View, bool) {
	for _, v := range m.Views() {
		if v.Name == name {
			return v, true
		}
	}
	return View{}, false
}

func stateOf(m *Member, name string) State {
	v, _ := viewOf(m, name)
	return v.State
}

// cluster starts n members, the first one the seed of the others, and
// waits until all see all alive.
func cluster(t testing.TB, n int, mod func(*Config)) []*running {
	t.Helper()
	var ms []*running
	for i := range n {
		cfg := loopbackConfig(t, "node-"+string(rune('a'+i)))
		if i > 0 {
			cfg.Seeds = []string{ms[0].LocalAddr().String()}
		}
		if mod != nil {
			mod(&cfg)
		}
		ms = append(ms, start(t, cfg))
	}
	waitFor(t, 20*time.Second, "every member sees every other alive", func() bool {
		for _, a := range ms {
			for _, b := range ms {
				if a != b && stateOf(a.Member, b.Name()) != StateAlive {
					return false
				}
			}
		}
		return true
	})
	return ms
}

func TestClusterKillAndLeave(t *testing.T) {
	t.Parallel()
	ms := cluster(t, 4, nil)
	a, b, c, d := ms[0], ms[1], ms[2], ms[3]
	v, _ := viewOf(a.Member, b.Name())
	if v.Addr != b.LocalAddr() || v.Meta.AgentVersion != "test" || v.Since.IsZero() {
		t.Errorf("a's view of b = %+v, want address %v, agent version test, a since", v, b.LocalAddr())
	}

	// A kill: memberlist stopped without leaving.
	c.crash()
	limit := SuspicionTimeouts(DefaultTunables, 4).Max + 3*DefaultProbeInterval
	suspected := false // seen through memberlist's log line: this catches a memberlist that words it otherwise
	took := waitFor(t, limit, "a, b and d see c dead", func() bool {
		for _, o := range []*running{a, b, d} {
			suspected = suspected || stateOf(o.Member, c.Name()) == StateSuspect
		}
		return stateOf(a.Member, c.Name()) == StateDead && stateOf(b.Member, c.Name()) == StateDead && stateOf(d.Member, c.Name()) == StateDead
	})
	if !suspected {
		t.Error("no member saw the killed one suspect before dead (the timer runs at least 3 s)")
	}
	t.Logf("killed member seen dead by all in %v (timer min %v, max %v)", took,
		SuspicionTimeouts(DefaultTunables, 4).Min, SuspicionTimeouts(DefaultTunables, 4).Max)

	// A graceful stop: left, not dead.
	d.stop(t)
	waitFor(t, 10*time.Second, "a and b see d left", func() bool {
		return stateOf(a.Member, d.Name()) == StateLeft && stateOf(b.Member, d.Name()) == StateLeft
	})
	if s := stateOf(a.Member, c.Name()); s != StateDead {
		t.Errorf("a sees c %v after d left, want dead still", s)
	}
}

func TestRunTwice(t *testing.T) {
	r := start(t, loopbackConfig(t, "once"))
	if err := r.Run(context.Background()); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("second Run = %v, want ErrConflict", err)
	}
}

func TestSetLocalStateReachesPeers(t *testing.T) {
	t.Parallel()
	ms := cluster(t, 2, nil)
	a, b := ms[0], ms[1]
	for len(a.Changed()) > 0 { // drain the join's signal
		<-a.Changed()
	}
	b.SetLocalState(LocalState{StreamUp: true, Containerd: HealthOK})
	select {
	case <-a.Changed():
	case <-time.After(10 * time.Second):
		t.Fatal("a's Changed did not fire within 10s of b's new metadata")
	}
	waitFor(t, 10*time.Second, "a sees b's new metadata", func() bool {
		v, _ := viewOf(a.Member, b.Name())
		return v.Meta.StreamUp && v.Meta.Containerd == HealthOK && v.State == StateAlive
	})
}

func TestBadKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys")
	os.WriteFile(path, []byte("# gossip keys\n"+b64(key(1, 32))+"\nc2hvcnQ=\n"), 0o600)
	cfg := loopbackConfig(t, "x")
	cfg.KeyFile = path
	_, err := New(cfg)
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), path+", line 3") {
		t.Errorf("New with a 5-byte key on line 3 = %v, want ErrInvalid naming %s, line 3", err, path)
	}
	cfg.KeyFile = filepath.Join(dir, "missing")
	if _, err := New(cfg); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("New with a missing key file = %v, want ErrNotFound", err)
	}
}

func TestRestartWithNewAddressIsTheSameMember(t *testing.T) {
	t.Parallel()
	ms := cluster(t, 3, nil)
	a, b, c := ms[0], ms[1], ms[2]
	oldAddr := c.LocalAddr()
	c.crash()
	c.stop(t)
	cfg := loopbackConfig(t, c.Name()) // same name, a new ephemeral port
	cfg.Seeds = []string{a.LocalAddr().String()}
	c2 := start(t, cfg)
	if c2.LocalAddr() == oldAddr {
		t.Fatalf("the restarted member got the old address %v again", oldAddr)
	}
	took := waitFor(t, 45*time.Second, "a and b see node-c alive at its new address", func() bool {
		for _, o := range []*running{a, b} {
			v, _ := viewOf(o.Member, c.Name())
			if v.State != StateAlive || v.Addr != c2.LocalAddr() {
				return false
			}
		}
		return true
	})
	t.Logf("node-c back at %v (was %v): taken as the same member in %v", c2.LocalAddr(), oldAddr, took)
	n := 0
	for _, v := range a.Views() {
		if v.Name == c.Name() {
			n++
		}
	}
	if n != 1 {
		t.Errorf("a has %d entries named node-c, want 1", n)
	}
	waitFor(t, 20*time.Second, "node-c sees a and b alive", func() bool {
		return stateOf(c2.Member, a.Name()) == StateAlive && stateOf(c2.Member, b.Name()) == StateAlive
	})
}

// writeKeys writes a key file.
func writeKeys(t testing.TB, path string, keys ...[]byte) {
	t.Helper()
	var lines []string
	for _, k := range keys {
		lines = append(lines, b64(k))
	}
	if err := os.WriteFile(path+".tmp", []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil { // as a Secret volume update swaps it
		t.Fatal(err)
	}
}

func TestMemberWithoutTheKeyCannotJoin(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	k1, k2 := key(1, 32), key(2, 32)
	ms := cluster(t, 2, func(c *Config) {
		c.KeyFile = filepath.Join(dir, c.Name)
		writeKeys(t, c.KeyFile, k1)
	})
	a := ms[0]
	for _, tc := range []struct {
		name string
		keys [][]byte
	}{{"wrong-key", [][]byte{k2}}, {"no-key", nil}} {
		cfg := loopbackConfig(t, tc.name)
		cfg.Seeds = []string{a.LocalAddr().String()}
		cfg.JoinBackoffMax = 200 * time.Millisecond
		if tc.keys != nil {
			cfg.KeyFile = filepath.Join(dir, tc.name)
			writeKeys(t, cfg.KeyFile, tc.keys...)
		}
		x := start(t, cfg)
		waitFor(t, 20*time.Second, tc.name+" failed to join three times", func() bool { return x.stats.joinFailures.Load() >= 3 })
		if _, ok := viewOf(a.Member, tc.name); ok {
			t.Errorf("the cluster let %s in", tc.name)
		}
		if vs := x.Views(); len(vs) != 0 {
			t.Errorf("%s sees peers %v", tc.name, vs)
		}
		if x.stats.joins.Load() != 0 {
			t.Errorf("%s counted a successful join", tc.name)
		}
	}
}

func TestKeyRotationWithoutRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	k1, k2 := key(1, 32), key(2, 16)
	ms := cluster(t, 3, func(c *Config) {
		c.KeyFile = filepath.Join(dir, c.Name)
		writeKeys(t, c.KeyFile, k1)
		if c.Name == "node-c" {
			c.KeyReloadInterval = 100 * time.Millisecond // c finds the changes itself
		}
	})
	a, b, c := ms[0], ms[1], ms[2]
	reload := func(step string) {
		t.Helper()
		for _, m := range []*running{a, b} {
			if err := m.ReloadKeys(); err != nil {
				t.Fatalf("%s: %s: ReloadKeys: %v", step, m.Name(), err)
			}
		}
		waitFor(t, 10*time.Second, step+": c reloads its file itself", func() bool {
			keys, _ := ReadKeyFile(c.cfg.KeyFile)
			return bytes.Equal(c.ring.GetPrimaryKey(), keys[0]) && len(c.ring.GetKeys()) == len(keys)
		})
	}
	// A metadata change of each member reaches the others: gossip flows.
	round := 0
	flows := func(step string) {
		t.Helper()
		round++
		up := round%2 == 1
		for _, m := range ms {
			m.SetLocalState(LocalState{StreamUp: up})
		}
		waitFor(t, 15*time.Second, step+": every member sees the others' new metadata", func() bool {
			for _, x := range ms {
				for _, y := range ms {
					if v, _ := viewOf(x.Member, y.Name()); x != y && (v.State != StateAlive || v.Meta.StreamUp != up) {
						return false
					}
				}
			}
			return true
		})
	}
	for _, m := range ms {
		writeKeys(t, m.cfg.KeyFile, k1, k2)
	}
	reload("1. install k2")
	flows("1. install k2")
	writeKeys(t, a.cfg.KeyFile, k2, k1) // a encrypts with k2 first, b and c still with k1
	if err := a.ReloadKeys(); err != nil {
		t.Fatal(err)
	}
	flows("2. a alone uses k2")
	for _, m := range ms {
		writeKeys(t, m.cfg.KeyFile, k2, k1)
	}
	reload("2. all use k2")
	for _, m := range ms {
		writeKeys(t, m.cfg.KeyFile, k2)
	}
	reload("3. k1 removed")
	flows("3. k1 removed")

	// A bad file on reload changes nothing.
	os.WriteFile(b.cfg.KeyFile, []byte("garbage!\n"), 0o600)
	if err := b.ReloadKeys(); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("ReloadKeys of a bad file = %v, want ErrInvalid naming line 1", err)
	}
	if got := b.ring.GetKeys(); len(got) != 1 || !bytes.Equal(got[0], k2) {
		t.Errorf("after a bad reload b's ring has %d keys, want k2 alone", len(got))
	}
	flows("after a bad reload")

	// Who holds only k1 is out now; who holds k2 gets in.
	old := loopbackConfig(t, "old-key")
	old.Seeds = []string{a.LocalAddr().String()}
	old.KeyFile = filepath.Join(dir, "old")
	writeKeys(t, old.KeyFile, k1)
	o := start(t, old)
	waitFor(t, 20*time.Second, "a member with only the old key fails to join", func() bool { return o.stats.joinFailures.Load() >= 2 })
	fresh := loopbackConfig(t, "new-key")
	fresh.Seeds = []string{a.LocalAddr().String()}
	fresh.KeyFile = filepath.Join(dir, "new")
	writeKeys(t, fresh.KeyFile, k2)
	n := start(t, fresh)
	waitFor(t, 20*time.Second, "a member with the new key joins", func() bool { return stateOf(a.Member, n.Name()) == StateAlive })
	if _, ok := viewOf(a.Member, o.Name()); ok {
		t.Error("the member with the old key got in")
	}
}

// TestRunLeavesNoGoroutine: every goroutine a member starts (its loops,
// memberlist's, the transport's) ends when Run returns. Not parallel, so
// that no other test's goroutines are counted.
func TestRunLeavesNoGoroutine(t *testing.T) {
	opts := goleak.IgnoreCurrent()
	ms := cluster(t, 2, nil)
	ms[1].crash() // the kill path too
	ms[1].stop(t)
	ms[0].stop(t)
	// memberlist's suspicion timers and the net package's resolver may
	// take a moment to end after Shutdown.
	var err error
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if err = goleak.Find(opts); err == nil {
			return
		}
	}
	t.Error(err)
}

// TestJoinFailureSaysKeyMismatch: a join refused for the key (memberlist's
// words, as TestMemberWithoutTheKeyCannotJoin's members get them) is logged
// as a key mismatch, not as seeds that did not answer.
func TestJoinFailureSaysKeyMismatch(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{errors.New("1 error occurred:\n\t* failed to join 127.0.0.1:1: no installed keys could decrypt the message"), "gossip key"},
		{errors.New("1 error occurred:\n\t* failed to join 127.0.0.1:1: remote state is encrypted and encryption is not configured"), "gossip key"},
		{errors.New("1 error occurred:\n\t* failed to join 127.0.0.1:1: dial tcp 127.0.0.1:1: connect: connection refused"), "no seed answered"},
		{nil, "no seed answered"},
	} {
		if got := joinFailure(tc.err); !strings.Contains(got, tc.want) {
			t.Errorf("joinFailure(%v) = %q, want it to say %q", tc.err, got, tc.want)
		}
	}
}
