package statedir

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
)

func open(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestStoreSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	now := time.Now().UTC().Truncate(time.Second)
	if err := s.Update(func(tx Tx) error {
		c := tx.Counters("default//web")
		c.Exits[ExitKey{"error", 3}] += 2
		c.Exits[ExitKey{"signal", 137}]++
		c.Restarts = 4
		c.LastSeen = now
		r := tx.Container("default/web")
		r.Restart = json.RawMessage(`{"restart_count":4}`)
		r.LastExitSeen = now
		r.RestartBegun = now.Add(time.Second)
		r.LastExit = &ExitRecord{Code: 3, Reason: "error", At: now}
		tx.AcceptCommand("cmd-1", now, time.Time{}).Finished = now
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s.SetBootID("boot-1") // in memory: Close writes it
	s.Close()

	s2 := open(t, dir)
	s2.View(func(tx Tx) {
		c, _ := tx.LookupCounters("default//web")
		if c.Exits[ExitKey{"error", 3}] != 2 || c.Exits[ExitKey{"signal", 137}] != 1 || c.Restarts != 4 || !c.LastSeen.Equal(now) {
			t.Errorf("counters after reopen = %+v", c)
		}
		r, _ := tx.LookupContainer("default/web")
		if string(r.Restart) != `{"restart_count":4}` || !r.LastExitSeen.Equal(now) || !r.RestartBegun.Equal(now.Add(time.Second)) || r.LastExit.Code != 3 {
			t.Errorf("record after reopen = %+v", r)
		}
		if tx.Command("cmd-1") == nil || tx.Command("cmd-2") != nil {
			t.Error("command records not kept")
		}
	})
	if got := s2.BootID(); got != "boot-1" {
		t.Errorf("BootID after reopen = %q, want boot-1", got)
	}
}

// TestSecondOpenRefused: one agent at a time; the second names the pid.
func TestSecondOpenRefused(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	_, err := Open(Config{Dir: dir})
	if !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Fatalf("second Open: %v; want ErrConflict naming pid %d", err, os.Getpid())
	}
	s.Close()
	s.Close() // safe twice
	s2, err := Open(Config{Dir: dir})
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	s2.Close()
}

func addExit(t *testing.T, s *Store) {
	t.Helper()
	if err := s.Update(func(tx Tx) error {
		tx.Counters("id").Exits[ExitKey{"error", 1}]++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func exits(s *Store) uint64 {
	var n uint64
	s.View(func(tx Tx) {
		if c, ok := tx.LookupCounters("id"); ok {
			n = c.Exits[ExitKey{"error", 1}]
		}
	})
	return n
}

// TestCorruptFileFallsBackToLastGood: a corrupt state file is set aside
// and the store starts from the last good copy, which every write keeps
// with the same content: nothing is lost (with a copy one write behind, the
// fifth exit was); Stats say so.
func TestCorruptFileFallsBackToLastGood(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	for range 5 {
		addExit(t, s)
	}
	s.Close()
	if err := os.WriteFile(filepath.Join(dir, FileName), []byte(`{"version":2,"counters":{"id":{"exits":[{"reason":"error","code":1,"cou`), 0o600); err != nil {
		t.Fatal(err)
	}
	s2 := open(t, dir)
	if n := exits(s2); n != 5 {
		t.Errorf("exits after a corrupt file = %d, want 5 (the last good copy, as new as the file)", n)
	}
	st := s2.Stats()
	if st.Recovered != "last-good" || st.SetAside == "" {
		t.Errorf("stats %+v: want recovered from last-good and the file set aside", st)
	}
	if b, err := os.ReadFile(st.SetAside); err != nil || !strings.Contains(string(b), `"cou`) {
		t.Errorf("the corrupt file was not kept aside: %v", err)
	}
	// It goes on from there, and the next open reads the new file.
	addExit(t, s2)
	s2.Close()
	if n := exits(open(t, dir)); n != 6 {
		t.Errorf("exits after reopen = %d, want 6", n)
	}
}

// TestMissingFileFallsBackToLastGood: a state file gone (removed by hand)
// leaves the last good copy, as new as it.
func TestMissingFileFallsBackToLastGood(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	addExit(t, s)
	addExit(t, s)
	s.Close()
	if err := os.Remove(filepath.Join(dir, FileName)); err != nil {
		t.Fatal(err)
	}
	s2 := open(t, dir)
	if n := exits(s2); n != 2 || s2.Stats().Recovered != "last-good" {
		t.Errorf("exits %d, recovered %q; want 2 from last-good", n, s2.Stats().Recovered)
	}
}

func TestBothCorruptStartsEmpty(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{FileName, LastGoodName} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("{not json"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s := open(t, dir)
	if st := s.Stats(); st.Recovered != "empty" || exits(s) != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestVersion1Migrated: version 1 kept command ids with a time.
func TestVersion1Migrated(t *testing.T) {
	dir := t.TempDir()
	v1 := `{"version":1,"counters":{"id":{"exits":[{"reason":"error","code":1,"count":7}],"restarts":2,"oom_events":0,"probe_failures":0,"last_seen":"2026-11-23T01:00:00Z"}},` +
		`"containers":{"default/web":{"restart":{"restart_count":2},"last_exit_seen":"2026-11-23T01:00:00Z"}},"commands":{"cmd-1":"2026-11-23T01:00:00Z"},"boot_id":"b1"}`
	if err := os.WriteFile(filepath.Join(dir, FileName), []byte(v1), 0o600); err != nil {
		t.Fatal(err)
	}
	s := open(t, dir)
	if n := exits(s); n != 7 {
		t.Errorf("exits = %d, want 7", n)
	}
	s.View(func(tx Tx) {
		r := tx.Command("cmd-1")
		if r == nil || r.Finished.IsZero() || r.Outcome == "" {
			t.Errorf("version 1 command read as %+v", r)
		}
	})
	if s.Stats().Migrated != 1 || s.BootID() != "b1" {
		t.Errorf("stats %+v, boot id %q", s.Stats(), s.BootID())
	}
	if err := s.Update(func(Tx) error { return nil }); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, FileName))
	if !strings.Contains(string(b), `"version":2`) {
		t.Errorf("written back as %s", b)
	}
}

// TestFailedWriteRetried: a write that fails keeps the change in memory,
// counts the failure, and the next Flush writes it.
func TestFailedWriteRetried(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	// The temporary file's name taken by a directory: the write fails.
	tmp := filepath.Join(dir, FileName+".tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	err := s.Update(func(tx Tx) error {
		tx.Counters("id").Exits[ExitKey{"error", 1}]++
		return nil
	})
	if err == nil {
		t.Fatal("write into a blocked temporary file succeeded")
	}
	if st := s.Stats(); st.WriteFailures != 1 || !st.Dirty || exits(s) != 1 {
		t.Fatalf("after a failed write: %+v, exits %d", st, exits(s))
	}
	if err := os.Remove(tmp); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Dirty {
		t.Fatalf("still dirty after Flush: %+v", st)
	}
	s.Close()
	if n := exits(open(t, dir)); n != 1 {
		t.Errorf("exits after reopen = %d, want 1", n)
	}
}

func TestUpdateIfWritesOnlyWhenAsked(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	path := filepath.Join(dir, FileName)
	before, _ := os.ReadFile(path)
	seen := time.Date(2026, 11, 23, 1, 0, 0, 0, time.UTC)
	_ = s.UpdateIf(func(tx Tx) bool {
		tx.Counters("web").LastSeen = seen
		return false
	})
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Fatal("UpdateIf wrote although fn asked for no write")
	}
	if !s.Stats().Dirty {
		t.Fatal("an unwritten change is not marked dirty")
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	open(t, dir).View(func(tx Tx) {
		if c, ok := tx.LookupCounters("web"); !ok || !c.LastSeen.Equal(seen) {
			t.Errorf("flushed change lost: %+v", c)
		}
	})
}

func TestPrune(t *testing.T) {
	s := open(t, t.TempDir())
	old := time.Now().Add(-48 * time.Hour)
	_ = s.Update(func(tx Tx) error {
		tx.Counters("gone").LastSeen = old
		tx.Counters("live").LastSeen = old
		tx.Counters("recent").LastSeen = time.Now()
		tx.Container("ns/gone")
		tx.Container("ns/live")
		tx.AcceptCommand("old", old, old.Add(time.Minute)).Finished = old
		tx.AcceptCommand("running", old, time.Time{})
		tx.AcceptCommand("new", time.Now(), time.Now().Add(time.Minute)).Finished = time.Now()
		// Without a deadline the aggregator may deliver it again: kept
		// past the cutoff, until NoDeadlineRetention.
		tx.AcceptCommand("no-deadline", old, time.Time{}).Finished = old
		tx.AcceptCommand("no-deadline-ancient", old.Add(-NoDeadlineRetention), time.Time{}).Finished = old.Add(-NoDeadlineRetention)
		// Its deadline not yet past the cutoff: kept.
		tx.AcceptCommand("late-deadline", old, time.Now()).Finished = old
		return nil
	})
	base := s.Stats()
	s.Prune(map[string]bool{"live": true}, map[string]bool{"ns/live": true}, time.Now().Add(-24*time.Hour))
	if st := s.Stats(); st.Writes != base.Writes || !st.Dirty {
		t.Errorf("Prune wrote (%d writes, dirty %v): it changes memory only, for the flusher", st.Writes-base.Writes, st.Dirty)
	}
	s.View(func(tx Tx) {
		if _, ok := tx.LookupCounters("gone"); ok {
			t.Error("old counters of a gone identity kept")
		}
		for _, id := range []string{"live", "recent"} {
			if _, ok := tx.LookupCounters(id); !ok {
				t.Errorf("counters %q pruned", id)
			}
		}
		if _, ok := tx.LookupContainer("ns/gone"); ok {
			t.Error("record of a gone container kept")
		}
		if tx.Command("old") != nil || tx.Command("new") == nil || tx.Command("running") == nil {
			t.Error("command records pruned wrongly")
		}
		if tx.Command("no-deadline") == nil || tx.Command("late-deadline") == nil {
			t.Error("a finished command without a deadline, or with one not yet past, pruned at 24 h")
		}
		if tx.Command("no-deadline-ancient") != nil {
			t.Error("a command without a deadline kept past NoDeadlineRetention")
		}
	})
}

// TestGroupCommit: changes kept in memory are written together by one
// Flush; a Flush with nothing new writes nothing; concurrent Updates are
// all durable when they return, with no more writes than Updates.
func TestGroupCommit(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	base := s.Stats()
	for i := range 10 {
		_ = s.UpdateIf(func(tx Tx) bool {
			tx.Counters(fmt.Sprint("id", i)).Restarts++
			return false
		})
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if w, f := st.Writes-base.Writes, st.Fsyncs-base.Fsyncs; w != 1 || f != 3 {
		t.Fatalf("10 changes and two flushes: %d writes, %d fsyncs; want 1 and 3 (the file, its copy, the directory)", w, f)
	}
	// A write held in the middle: 50 Updates made meanwhile wait for it,
	// and the first to write after it carries them all. Without group
	// commit it would be 51 writes.
	hold, held := make(chan struct{}), make(chan struct{})
	var once sync.Once
	s.writeHook = func() { once.Do(func() { close(held); <-hold }) }
	var first sync.WaitGroup
	first.Go(func() {
		if err := s.Update(func(tx Tx) error { tx.Counters("first").Restarts++; return nil }); err != nil {
			t.Error(err)
		}
	})
	<-held
	var wg sync.WaitGroup
	var started sync.WaitGroup
	for i := range 50 {
		started.Add(1)
		wg.Go(func() {
			if err := s.Update(func(tx Tx) error {
				tx.Counters(fmt.Sprint("c", i)).Restarts++
				started.Done()
				return nil
			}); err != nil {
				t.Error(err)
			}
		})
	}
	started.Wait() // every change is made; each Update now waits to write
	close(hold)
	first.Wait()
	wg.Wait()
	s.writeHook = nil
	t.Logf("50 updates during a write: %d writes", s.Stats().Writes-st.Writes)
	if w := s.Stats().Writes - st.Writes; w != 2 {
		t.Fatalf("one write held and 50 updates made meanwhile: %d writes, want 2 (the held one, and one carrying the 50)", w)
	}
	s.Close()
	s2 := open(t, dir)
	s2.View(func(tx Tx) {
		for i := range 50 {
			if c, ok := tx.LookupCounters(fmt.Sprint("c", i)); !ok || c.Restarts != 1 {
				t.Errorf("update %d not durable", i)
			}
		}
	})
}

// TestUpdateUnsynced: the change is in the file at once (a new Open reads
// it) without an fsync; the next Flush makes it durable with one.
func TestUpdateUnsynced(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	base := s.Stats()
	if err := s.UpdateUnsynced(func(tx Tx) bool {
		tx.Container("ns/c").RestartBegun = time.Unix(100, 0)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.Fsyncs != base.Fsyncs || st.Writes != base.Writes+1 || !st.Dirty {
		t.Fatalf("after an unsynced update: %+v (before %+v); want one write, no fsync, still dirty", st, base)
	}
	b, _ := os.ReadFile(filepath.Join(dir, FileName))
	if !strings.Contains(string(b), "restart_begun") {
		t.Fatalf("the unsynced change is not in the file: %s", b)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Fsyncs != base.Fsyncs+3 || st.Dirty {
		t.Fatalf("after Flush: %+v", st)
	}
}

// TestUnsyncedWriteLeavesLastGoodDurable: a write without fsync replaces
// the state file only; the last-good copy stays the last durable state, so
// that a power loss that empties the unsynced file cannot take both.
func TestUnsyncedWriteLeavesLastGoodDurable(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	defer s.Close()
	addExit(t, s)
	durable, err := os.ReadFile(filepath.Join(dir, LastGoodName))
	if err != nil {
		t.Fatal(err)
	}
	markBegun(t, s)
	file, err := os.ReadFile(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	copyNow, err := os.ReadFile(filepath.Join(dir, LastGoodName))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(file), "restart_begun") {
		t.Fatalf("the unsynced mark is not in the state file:\n%s", file)
	}
	if string(copyNow) != string(durable) {
		t.Errorf("the unsynced write replaced the last-good copy:\n%s", copyNow)
	}
}

// TestUnsyncedWriteAfterPendingChange: a change kept in memory for the
// group commit, then an unsynced mark: the mark's write must not leave the
// file ahead of the last-good copy in that change. The copy, opened as the
// state (the file found corrupt), still has the exit.
func TestUnsyncedWriteAfterPendingChange(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	defer s.Close()
	if err := s.UpdateIf(func(tx Tx) bool {
		tx.Counters("id").Exits[ExitKey{"error", 1}]++
		return false // kept for the flusher's commit
	}); err != nil {
		t.Fatal(err)
	}
	markBegun(t, s)
	// The agent is killed now: no flush. The file is found corrupt; the
	// next agent starts from the copy.
	s2 := openFromLastGood(t, dir)
	defer s2.Close()
	if n := exits(s2); n != 1 {
		t.Errorf("exits from the last-good copy = %d, want 1: the unsynced write left the copy behind the file in a counted exit", n)
	}
}

// TestUnsyncedWriteChangeDuringCatchUp: a change made while
// UpdateUnsynced commits the pending changes before its mark (the loop
// counting another exit meanwhile) is committed too before the mark's
// unsynced write: the copy lags the file by the mark only.
func TestUnsyncedWriteChangeDuringCatchUp(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	defer s.Close()
	count := func() {
		if err := s.UpdateIf(func(tx Tx) bool {
			tx.Counters("id").Exits[ExitKey{"error", 1}]++
			return false
		}); err != nil {
			t.Error(err)
		}
	}
	count()
	catchUps := 0
	s.writeHook = func() {
		catchUps++
		if catchUps == 1 { // the first catch-up commit is being written
			count() // UpdateIf takes mu only: it gets in now
		}
	}
	markBegun(t, s)
	s.writeHook = nil
	if catchUps != 3 {
		t.Errorf("writes = %d, want 3: a catch-up commit, another for the change made during it, the mark", catchUps)
	}
	s2 := openFromLastGood(t, dir)
	defer s2.Close()
	if n := exits(s2); n != 2 {
		t.Errorf("exits from the last-good copy = %d, want 2: the exit counted during the catch-up commit is missing", n)
	}
	s2.View(func(tx Tx) {
		if c, ok := tx.LookupContainer("ns/c"); ok && !c.RestartBegun.IsZero() {
			t.Error("the copy has the unsynced mark")
		}
	})
}

// TestUnsyncedWriteOnAFailingDisk: when the catch-up commit before an
// unsynced mark fails, the mark is made all the same (in memory, for the
// next write: the agent goes on with the restart), the failure is
// returned, and the next Flush writes both the pending change and the mark.
func TestUnsyncedWriteOnAFailingDisk(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	defer s.Close()
	if err := s.UpdateIf(func(tx Tx) bool {
		tx.Counters("id").Exits[ExitKey{"error", 1}]++
		return false
	}); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, FileName+".tmp") // its name taken: writes fail
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	err := s.UpdateUnsynced(func(tx Tx) bool {
		tx.Container("ns/c").RestartBegun = time.Unix(1e9, 0)
		return true
	})
	if err == nil {
		t.Fatal("UpdateUnsynced on a disk that refuses writes returned nil")
	}
	begun := func(s *Store) (b bool) {
		s.View(func(tx Tx) {
			c, ok := tx.LookupContainer("ns/c")
			b = ok && !c.RestartBegun.IsZero()
		})
		return b
	}
	if !begun(s) {
		t.Fatal("the mark is not in memory after the failed write")
	}
	if err := os.Remove(tmp); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2 := open(t, dir)
	defer s2.Close()
	if !begun(s2) || exits(s2) != 1 {
		t.Errorf("after the disk recovered and a flush: mark %v, exits %d; want the mark and 1", begun(s2), exits(s2))
	}
}

// openFromLastGood opens, in a directory of its own, dir's last-good copy
// beside a corrupt state file: what the next agent starts from when the
// file is found corrupt after a kill.
func openFromLastGood(t *testing.T, dir string) *Store {
	t.Helper()
	copyNow, err := os.ReadFile(filepath.Join(dir, LastGoodName))
	if err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	if err := os.WriteFile(filepath.Join(other, LastGoodName), copyNow, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(other, FileName), []byte(`{"version":2,"coun`), 0o600); err != nil {
		t.Fatal(err)
	}
	return open(t, other)
}

// markBegun writes a restart's begun mark for ns/c without fsync, as the
// agent does before it touches the old task.
func markBegun(t *testing.T, s *Store) {
	t.Helper()
	if err := s.UpdateUnsynced(func(tx Tx) bool {
		tx.Container("ns/c").RestartBegun = time.Unix(1e9, 0)
		return true
	}); err != nil {
		t.Fatal(err)
	}
}
