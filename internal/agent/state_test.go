package agent

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
)

func TestStoreSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
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
		tx.AcceptCommand("cmd-1", now).Finished = now
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetBootID("boot-1"); err != nil {
		t.Fatal(err)
	}

	s2, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	s2.View(func(tx Tx) {
		c := tx.Counters("default//web")
		if c.Exits[ExitKey{"error", 3}] != 2 || c.Exits[ExitKey{"signal", 137}] != 1 || c.Restarts != 4 {
			t.Errorf("counters after reopen = %+v", c)
		}
		if !c.LastSeen.Equal(now) {
			t.Errorf("LastSeen = %v, want %v", c.LastSeen, now)
		}
		r := tx.Container("default/web")
		if string(r.Restart) != `{"restart_count":4}` || !r.LastExitSeen.Equal(now) || !r.RestartBegun.Equal(now.Add(time.Second)) {
			t.Errorf("record after reopen = %+v", r)
		}
		if tx.Command("cmd-1") == nil || tx.Command("cmd-2") != nil {
			t.Error("command ids not kept")
		}
	})
	if got := s2.BootID(); got != "boot-1" {
		t.Errorf("BootID after reopen = %q, want boot-1", got)
	}
}

func TestStoreUpdateErrorWritesNothing(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, stateFileName))
	boom := errors.New("boom")
	if err := s.Update(func(tx Tx) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, stateFileName))
	if string(before) != string(after) {
		t.Fatal("a failed update changed the file")
	}
}

func TestStoreUpdateIfWritesOnlyWhenAsked(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, stateFileName)
	before, _ := os.ReadFile(path)
	seen := time.Date(2026, 11, 23, 1, 0, 0, 0, time.UTC)
	if err := s.UpdateIf(func(tx Tx) bool {
		tx.Counters("default//web").LastSeen = seen
		return false
	}); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Fatal("UpdateIf wrote although fn asked for no write")
	}
	// The change stays in memory...
	s.View(func(tx Tx) {
		if !tx.Counters("default//web").LastSeen.Equal(seen) {
			t.Error("an unwritten change was lost from memory")
		}
	})
	// ...and reaches the disk with the next write.
	if err := s.UpdateIf(func(tx Tx) bool {
		tx.Counters("default//web").Restarts = 2
		return true
	}); err != nil {
		t.Fatal(err)
	}
	s2, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	s2.View(func(tx Tx) {
		c := tx.Counters("default//web")
		if c.Restarts != 2 || !c.LastSeen.Equal(seen) {
			t.Errorf("after reopen: restarts %d, last seen %v; want 2, %v", c.Restarts, c.LastSeen, seen)
		}
	})
}

func TestStoreCorruptFileIsKeptAside(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, stateFileName), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := OpenStore(dir)
	if !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	matches, _ := filepath.Glob(filepath.Join(dir, stateFileName+".corrupt-*"))
	if len(matches) != 1 {
		t.Fatalf("corrupt file not kept aside: %v", matches)
	}
	if _, err := OpenStore(dir); err != nil {
		t.Fatalf("reopen after a corrupt file: %v", err)
	}
}

func TestStorePrune(t *testing.T) {
	s, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-48 * time.Hour)
	_ = s.Update(func(tx Tx) error {
		tx.Counters("gone").LastSeen = old
		tx.Counters("live").LastSeen = old
		tx.Counters("recent").LastSeen = time.Now()
		tx.Container("ns/gone")
		tx.Container("ns/live")
		r := tx.AcceptCommand("old", old)
		r.Finished = old
		tx.AcceptCommand("new", time.Now()).Finished = time.Now()
		return nil
	})
	if err := s.Prune(map[string]bool{"live": true}, map[string]bool{"ns/live": true}, time.Now().Add(-24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	s.View(func(tx Tx) {
		if _, ok := tx.d.Counters["gone"]; ok {
			t.Error("old counters of a gone identity kept")
		}
		for _, id := range []string{"live", "recent"} {
			if _, ok := tx.d.Counters[id]; !ok {
				t.Errorf("counters %q pruned", id)
			}
		}
		if _, ok := tx.d.Containers["ns/gone"]; ok {
			t.Error("record of a gone container kept")
		}
		if tx.Command("old") != nil || tx.Command("new") == nil {
			t.Error("command ids pruned wrongly")
		}
	})
}
