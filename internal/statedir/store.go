package statedir

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// File names inside the directory.
const (
	// FileName is the state.
	FileName = "state.json"
	// LastGoodName is a second copy of the state, written after FileName
	// by every write: read when FileName is missing or corrupt.
	LastGoodName = "state.json.last-good"
	// LockName is the file whose exclusive lock the agent holds, with its
	// pid inside.
	LockName = "lock"
)

func errVersion(v int) error {
	return fmt.Errorf("state file version %d is not one this agent knows: %w", v, errdefs.ErrInvalid)
}

// Config configures Open.
type Config struct {
	// Dir is the state directory, created (0700) when missing. Required.
	Dir string
	// Logger receives what the store recovered from; nil: slog.Default().
	Logger *slog.Logger
	// Now is the clock (tests); nil: time.Now.
	Now func() time.Time
}

// Stats are the store's counts since Open, for self-metrics.
type Stats struct {
	// Writes counts successful writes of the state file.
	Writes uint64
	// WriteFailures counts writes that failed (each kept in memory and
	// retried by the next write or Flush).
	WriteFailures uint64
	// Fsyncs counts fsync calls (the file's and the directory's).
	Fsyncs uint64
	// Dirty is true while the memory holds changes not yet on disk.
	Dirty bool
	// Recovered says where the state came from at Open when it was not the
	// state file: "last-good" (the file was corrupt or missing), "empty"
	// (neither was readable); "" otherwise.
	Recovered string
	// SetAside is the path a corrupt state file was moved to at Open, "".
	SetAside string
	// Migrated is the version the file had when it was older than Version,
	// 0 otherwise.
	Migrated int
}

// Store is the agent's durable state. Every Update is written to disk
// (atomically, with fsync of the file and the directory) before it returns;
// a failed write leaves the change in memory (never lost while the agent
// runs), is counted, and is retried by the next write or Flush.
//
// Writes are group commits: the state is encoded under the store's lock,
// and written (the fsyncs) outside it, one write at a time; an Update or
// Flush whose changes a write that began after them has already made
// durable returns without writing again. So concurrent Updates share
// fsyncs, and readers (View) never wait for a disk.
//
// Store is safe for concurrent use. Close releases the directory's lock.
type Store struct {
	dir  string
	path string
	log  *slog.Logger
	now  func() time.Time
	lock *os.File

	wmu sync.Mutex // one write at a time; taken before mu

	mu     sync.Mutex
	d      data
	stats  Stats
	closed bool
	// gen counts changes to d; durable is the gen of the last successful
	// write (every change up to it is on disk).
	gen, durable uint64
	// writeHook, when set (tests), runs before each write, outside mu.
	writeHook func()
}

// Open locks the directory and loads the state: the state file, or its
// last-good copy when the file is missing or corrupt (the corrupt file is
// set aside, never deleted), or an empty state when neither is readable.
// It fails with an error wrapping errdefs.ErrConflict, naming the pid, when
// another process holds the directory.
func Open(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, fmt.Errorf("state dir is empty: %w", errdefs.ErrInvalid)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	s := &Store{dir: cfg.Dir, path: filepath.Join(cfg.Dir, FileName), log: cfg.Logger, now: cfg.Now}
	lock, err := lockDir(cfg.Dir)
	if err != nil {
		return nil, err
	}
	s.lock = lock
	if err := s.load(); err != nil {
		s.unlock()
		return nil, err
	}
	return s, nil
}

// lockDir takes the exclusive lock of dir and writes this process's pid
// into the lock file. The kernel releases the lock when the process dies,
// however it dies.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, LockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open state dir lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		holder := strings.TrimSpace(string(b))
		if errors.Is(err, syscall.EWOULDBLOCK) {
			if _, perr := strconv.Atoi(holder); perr != nil {
				holder = "unknown"
			}
			return nil, fmt.Errorf("state dir %s is in use by another agent (pid %s): %w", dir, holder, errdefs.ErrConflict)
		}
		return nil, fmt.Errorf("lock state dir %s: %w", dir, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

func (s *Store) unlock() {
	if s.lock != nil {
		_ = syscall.Flock(int(s.lock.Fd()), syscall.LOCK_UN)
		s.lock.Close()
		s.lock = nil
	}
}

// load reads the state (see Open).
func (s *Store) load() error {
	s.d = newData()
	b, err := os.ReadFile(s.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		// A new directory, or a file removed by hand: the last good copy,
		// written with it, is the state.
		if lg, ok := s.readLastGood(); ok {
			s.d = lg
			s.stats.Recovered = "last-good"
			s.log.Warn("state file missing; started from its last good copy (every write keeps it as new as the file)", "state_dir", s.dir)
		}
		return s.flush(true)
	case err != nil:
		return fmt.Errorf("read state: %w", err)
	}
	d, newer, derr := decode(b)
	if derr == nil {
		s.d = d
		s.noteVersion(b, newer)
		return nil
	}
	// Corrupt: kept aside for the operator, never deleted; the last good
	// copy, written with the file, is the state.
	aside := s.path + ".corrupt-" + s.now().UTC().Format("20060102T150405.000000000")
	if err := os.Rename(s.path, aside); err != nil {
		return fmt.Errorf("state file %s is corrupt (%v) and cannot be set aside: %w", s.path, derr, err)
	}
	s.stats.SetAside = aside
	if lg, ok := s.readLastGood(); ok {
		s.d = lg
		s.stats.Recovered = "last-good"
		s.log.Error("state file corrupt: set aside, started from its last good copy (every write keeps it as new as the file)",
			"set_aside", aside, "err", derr)
	} else {
		s.stats.Recovered = "empty"
		s.log.Error("state file corrupt and no readable last good copy: set aside, counters start from zero",
			"set_aside", aside, "err", derr)
	}
	return s.flush(true)
}

func (s *Store) readLastGood() (data, bool) {
	b, err := os.ReadFile(filepath.Join(s.dir, LastGoodName))
	if err != nil {
		return data{}, false
	}
	d, _, err := decode(b)
	if err != nil {
		s.log.Warn("last good copy of the state is unreadable too", "err", err)
		return data{}, false
	}
	return d, true
}

func (s *Store) noteVersion(b []byte, newer bool) {
	var v struct {
		Version int `json:"version"`
	}
	_ = json.Unmarshal(b, &v)
	switch {
	case newer:
		s.log.Warn("state file was written by a newer agent: read what this one understands; fields it does not know are lost at its next write",
			"file_version", v.Version, "version", Version)
	case v.Version < Version:
		s.stats.Migrated = v.Version
		s.log.Info("state file migrated from an older format", "from_version", v.Version, "to_version", Version)
	}
}

// Close releases the directory (its lock). The state is flushed first when
// it holds unwritten changes. Safe to call twice.
func (s *Store) Close() error {
	err := s.Flush()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.unlock()
	return err
}

// Stats returns the store's counts.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Update runs fn on the state and writes the result durably. If fn returns
// an error nothing is written (but in-memory changes fn made stay: fn should
// validate before mutating). A failed write returns its error; the change
// stays in memory and is written by the next write or Flush.
func (s *Store) Update(fn func(Tx) error) error {
	s.mu.Lock()
	if err := fn(Tx{&s.d}); err != nil {
		s.mu.Unlock()
		return err
	}
	s.gen++
	s.stats.Dirty = true
	s.mu.Unlock()
	return s.flush(false)
}

// UpdateIf runs fn on the state and writes it only when fn reports a change
// that must survive a crash before UpdateIf returns. Changes fn makes
// without reporting them stay in memory and reach the disk with the next
// write (or Flush).
func (s *Store) UpdateIf(fn func(Tx) bool) error {
	s.mu.Lock()
	write := fn(Tx{&s.d})
	s.gen++
	s.stats.Dirty = true
	s.mu.Unlock()
	if !write {
		return nil
	}
	return s.flush(false)
}

// UpdateUnsynced runs fn on the state and, when fn reports a change, writes
// the state file (atomically, by rename) without fsync: the change survives
// the agent's death, not the node's, and the next Flush makes it durable.
// It is for marks that only an agent restarted on the same boot needs (a
// node that restarted has lost every task anyway), and that must be in the
// file before the agent acts, without paying for a disk flush on that path.
//
// Changes made before it and not yet durable (kept in memory for the next
// group commit) are made durable first, with the last-good copy: the
// unsynced write puts the whole state in the file, and the copy must not
// fall behind the file in anything but fn's change. Otherwise an exit
// counted 10 ms before a restart's begun mark was in the file only; the
// agent killed before the flusher's commit and the file found corrupt
// later, the next agent started from a copy without that exit, whose task
// the restart had deleted: an exit lost (test/crash, once on a loaded CI
// machine). When the restart comes after the commit, as it does after a
// backoff, this costs nothing.
func (s *Store) UpdateUnsynced(fn func(Tx) bool) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	for tries := 0; ; tries++ {
		s.mu.Lock()
		// Nothing pending (or the loop keeps changing the state faster than
		// three commits: go on, the flusher follows): fn's change and the
		// encoding under this hold of mu, so no other change slips in.
		if s.durable >= s.gen || tries == 3 {
			return s.applyUnsyncedLocked(fn)
		}
		s.mu.Unlock()
		if err := s.commitLocked(true, false, s.Mark()); err != nil {
			// The disk refuses: fn's change is made all the same (kept in
			// memory for the next write, as any failed write's is), and
			// the unsynced write tried; the caller hears of the failure.
			s.mu.Lock()
			return errors.Join(err, s.applyUnsyncedLocked(fn))
		}
	}
}

// applyUnsyncedLocked applies fn and, when fn asks, writes the state
// without fsync. Called with wmu and mu held; it releases mu.
func (s *Store) applyUnsyncedLocked(fn func(Tx) bool) error {
	write := fn(Tx{&s.d})
	s.gen++
	s.stats.Dirty = true
	if !write {
		s.mu.Unlock()
		return nil
	}
	gen, b, err := s.encodeLocked()
	s.mu.Unlock()
	return s.writeEncoded(b, err, false, gen)
}

// Flush writes the state when the memory holds changes not on disk (kept by
// UpdateIf, or by a write that failed). It is how a failed write is retried,
// and how changes kept in memory are committed in a group.
func (s *Store) Flush() error {
	return s.flush(false)
}

// flush writes the state durably unless every change made before it was
// called is already durable (force: write anyway). See Store on group
// commits.
func (s *Store) flush(force bool) error { return s.commit(true, force) }

// commit encodes the state under mu and writes it outside mu, one write at a
// time (wmu). A durable commit (sync) returns at once when a write that
// began after the caller's changes carried them (unless force); an
// unsynced one always writes, and leaves the state dirty until a durable
// write.
func (s *Store) commit(sync, force bool) error {
	want := s.Mark()
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.commitLocked(sync, force, want)
}

// commitLocked is commit with wmu held; want is the change count the
// caller's changes reached.
func (s *Store) commitLocked(sync, force bool, want uint64) error {
	s.mu.Lock()
	if sync && !force && s.durable >= want {
		s.mu.Unlock()
		return nil // a write that began after our changes carried them
	}
	gen, b, err := s.encodeLocked()
	s.mu.Unlock()
	return s.writeEncoded(b, err, sync, gen)
}

// encodeLocked encodes the state (mu held) and says which change count the
// encoding carries.
func (s *Store) encodeLocked() (uint64, []byte, error) {
	s.d.Version = Version
	b, err := json.Marshal(&s.d)
	if err != nil {
		return s.gen, nil, fmt.Errorf("encode state: %w", err)
	}
	return s.gen, b, nil
}

// writeEncoded writes b (wmu held, mu not) unless encoding it failed
// (encErr), and records the outcome: a durable write (sync) makes every
// change up to gen durable.
func (s *Store) writeEncoded(b []byte, encErr error, sync bool, gen uint64) error {
	err := encErr
	if err == nil {
		if s.writeHook != nil {
			s.writeHook()
		}
		err = s.write(b, sync)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.stats.WriteFailures++
		s.stats.Dirty = true
		return err
	}
	s.stats.Writes++
	if sync {
		s.durable = gen
		s.stats.Dirty = s.gen != gen
	}
	return nil
}

// Mark is the state's change count now: every change made so far is durable
// once Durable(mark) says so.
func (s *Store) Mark() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen
}

// Durable reports whether every change made up to mark (Mark) is on disk.
func (s *Store) Durable(mark uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.durable >= mark
}

// View runs fn on the state without writing. fn must not modify it.
func (s *Store) View(fn func(Tx)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn(Tx{&s.d})
}

// BootID returns the boot id last recorded with SetBootID.
func (s *Store) BootID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.d.BootID
}

// SetBootID records the kernel's boot id in memory: the next write (Flush)
// carries it, with every change made before it.
func (s *Store) SetBootID(id string) {
	_ = s.UpdateIf(func(tx Tx) bool {
		tx.d.BootID = id
		return false
	})
}

// NoDeadlineRetention is how long the record of a finished command that had
// no deadline is kept: the aggregator may deliver such a command again
// until it has the result, and a command whose record is gone would be
// carried out again. A command with a deadline cannot be carried out after
// it (it is answered EXPIRED), so its record goes once the deadline is
// older than Prune's cutoff.
const NoDeadlineRetention = 30 * 24 * time.Hour

// Prune forgets, in memory (the next Flush writes it), counters not seen
// since before cutoff whose identity is not in live, container records not
// in liveContainers, and the records of finished commands: with a deadline,
// once the command finished and its deadline passed before cutoff; without
// one, once it finished NoDeadlineRetention before cutoff (cutoff is a day
// ago in the agent: 31 days after it finished). A command not finished is
// never forgotten.
func (s *Store) Prune(live map[string]bool, liveContainers map[string]bool, cutoff time.Time) {
	_ = s.UpdateIf(func(tx Tx) bool {
		for id, c := range tx.d.Counters {
			if !live[id] && c.LastSeen.Before(cutoff) {
				delete(tx.d.Counters, id)
			}
		}
		for k := range tx.d.Containers {
			if !liveContainers[k] {
				delete(tx.d.Containers, k)
			}
		}
		for id, r := range tx.d.Commands {
			if r.Finished.IsZero() {
				continue
			}
			if r.Deadline.IsZero() {
				if r.last().Before(cutoff.Add(-NoDeadlineRetention)) {
					delete(tx.d.Commands, id)
				}
				continue
			}
			if r.last().Before(cutoff) && r.Deadline.Before(cutoff) {
				delete(tx.d.Commands, id)
			}
		}
		return false
	})
}

// write writes b as the state atomically, twice: the state file and its
// last-good copy each get b through a temporary file, fsync and rename,
// then the directory is fsynced. A crash at any point leaves at least one
// of the two whole and no older than the write before; a state file
// corrupted later (a disk, an operator's editor) leaves its copy, with the
// same content: Open starts from it and loses no change (with the copy one
// write behind, an exit counted by the last write and whose task a restart
// had replaced was lost, and counted again as unknown). Without sync (see
// UpdateUnsynced) only the state file is replaced, without fsync: the
// last-good copy stays the last durable state, so that a power loss that
// empties the unsynced file (XFS, ext4 with noauto_da_alloc) leaves the
// copy whole. Called with wmu held.
func (s *Store) write(b []byte, sync bool) error {
	if err := s.writeFile(s.path, b, sync); err != nil {
		return err
	}
	if !sync {
		return nil
	}
	if err := s.writeFile(filepath.Join(s.dir, LastGoodName), b, sync); err != nil {
		return fmt.Errorf("keep last good state: %w", err)
	}
	d, err := os.Open(s.dir)
	if err != nil {
		return fmt.Errorf("sync state dir: %w", err)
	}
	defer d.Close()
	s.countFsync()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync state dir: %w", err)
	}
	return nil
}

// writeFile replaces path with b atomically: a temporary file, its fsync
// (sync), a rename.
func (s *Store) writeFile(path string, b []byte, sync bool) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write state: %w", err)
	}
	if sync {
		s.countFsync()
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("sync state: %w", err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replace state: %w", err)
	}
	return nil
}

func (s *Store) countFsync() {
	s.mu.Lock()
	s.stats.Fsyncs++
	s.mu.Unlock()
}

// Tx is the view of the state inside Update, UpdateIf and View. Records it
// returns may be modified inside Update and UpdateIf only, and must not be
// kept past fn.
type Tx struct{ d *data }

// Counters returns the counters of a workload identity, creating them.
func (tx Tx) Counters(identity string) *Counters {
	c := tx.d.Counters[identity]
	if c == nil {
		c = &Counters{Exits: map[ExitKey]uint64{}}
		tx.d.Counters[identity] = c
	}
	return c
}

// LookupCounters returns the counters of a workload identity, if any.
func (tx Tx) LookupCounters(identity string) (*Counters, bool) {
	c, ok := tx.d.Counters[identity]
	return c, ok
}

// Container returns the record of a container key (container.Key's
// String: "namespace/id"), creating it.
func (tx Tx) Container(key string) *ContainerRecord {
	r := tx.d.Containers[key]
	if r == nil {
		r = &ContainerRecord{}
		tx.d.Containers[key] = r
	}
	return r
}

// LookupContainer returns the record of a container key, if any.
func (tx Tx) LookupContainer(key string) (*ContainerRecord, bool) {
	r, ok := tx.d.Containers[key]
	return r, ok
}

// DeleteContainer forgets a container's record.
func (tx Tx) DeleteContainer(key string) { delete(tx.d.Containers, key) }

// Command returns the record of command id, nil when it was never accepted.
func (tx Tx) Command(id string) *CommandRecord { return tx.d.Commands[id] }

// AcceptCommand records command id, whose deadline is deadline (zero: none),
// as accepted at at and returns its record.
func (tx Tx) AcceptCommand(id string, at, deadline time.Time) *CommandRecord {
	r := &CommandRecord{Accepted: at, Deadline: deadline}
	tx.d.Commands[id] = r
	return r
}

// Commands calls fn for every command record.
func (tx Tx) Commands(fn func(id string, r *CommandRecord)) {
	for id, r := range tx.d.Commands {
		fn(id, r)
	}
}
