package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/runtime"
)

// stateFileName is the agent's durable state inside its state dir.
const stateFileName = "state.json"

// stateVersion is bumped when the file's meaning changes incompatibly.
const stateVersion = 1

// ExitKey is a (reason, exit code) pair of the exits counter.
type ExitKey struct {
	Reason string `json:"reason"`
	Code   uint32 `json:"code"`
}

// Counters are the lifetime counts of one workload identity. They are
// cumulative at the source: they only grow, survive agent restarts, and the
// aggregator exposes them as they are.
type Counters struct {
	Exits         map[ExitKey]uint64 `json:"-"`
	Restarts      uint64             `json:"restarts"`
	OOMEvents     uint64             `json:"oom_events"`
	ProbeFailures uint64             `json:"probe_failures"`
	// KubeletRestartsSeen is the kubelet's restart count last folded into
	// Restarts (kubelet-managed identities only).
	KubeletRestartsSeen uint32 `json:"kubelet_restarts_seen,omitempty"`
	// LastSeen is when a container with this identity last existed; entries
	// whose containers are all gone are pruned after countersRetention.
	LastSeen time.Time `json:"last_seen"`
}

type exitCountJSON struct {
	ExitKey
	Count uint64 `json:"count"`
}

// MarshalJSON writes the exits map as a sorted list (JSON objects cannot
// have struct keys).
func (c Counters) MarshalJSON() ([]byte, error) {
	exits := make([]exitCountJSON, 0, len(c.Exits))
	for k, n := range c.Exits {
		exits = append(exits, exitCountJSON{ExitKey: k, Count: n})
	}
	sort.Slice(exits, func(i, j int) bool {
		if exits[i].Reason != exits[j].Reason {
			return exits[i].Reason < exits[j].Reason
		}
		return exits[i].Code < exits[j].Code
	})
	type plain Counters // no MarshalJSON: avoids recursion
	return json.Marshal(struct {
		Exits []exitCountJSON `json:"exits"`
		plain
	}{exits, plain(c)})
}

// UnmarshalJSON reads what MarshalJSON wrote.
func (c *Counters) UnmarshalJSON(b []byte) error {
	type plain Counters
	var in struct {
		Exits []exitCountJSON `json:"exits"`
		plain
	}
	if err := json.Unmarshal(b, &in); err != nil {
		return err
	}
	*c = Counters(in.plain)
	c.Exits = make(map[ExitKey]uint64, len(in.Exits))
	for _, e := range in.Exits {
		c.Exits[e.ExitKey] += e.Count
	}
	return nil
}

// ContainerRecord is what the agent keeps about one container across its own
// restarts.
type ContainerRecord struct {
	// Restart is the restart tracker's state (restart count, backoff,
	// explicit stop), opaque to the store.
	Restart json.RawMessage `json:"restart,omitempty"`
	// LastExitSeen is the exit time of the last exit already counted, so that
	// an exit re-reported after a reconnect or an agent restart is counted
	// once.
	LastExitSeen time.Time `json:"last_exit_seen"`
	// RestartBegun is when the agent began carrying out the pending restart
	// (written before it touches the old task), zero when no restart is
	// pending. An agent that finds it set at start-up, and the container
	// without a running task, was interrupted in that restart and finishes
	// it; without it, a missing task is someone else's doing.
	RestartBegun time.Time `json:"restart_begun,omitzero"`
	// Output is where the output of the task that restart replaces went,
	// written with RestartBegun: the agent that finishes the restart sends
	// the new task's output there too (the old task, which said so, may be
	// gone).
	Output runtime.TaskOutput `json:"output,omitzero"`
	// LastExit is the container's last exit the agent saw (or inferred): the
	// next agent reports it, and the container as stopped, when containerd
	// no longer has the task that exited.
	LastExit *ExitRecord `json:"last_exit,omitempty"`
	// Announced is set once the container's ADDED event was sent: the next
	// agent does not announce it again.
	Announced bool `json:"announced,omitempty"`
}

// ExitRecord is a task exit as the state file keeps it (the reason by
// name, so that the file does not depend on the runtime's numbering).
type ExitRecord struct {
	Code   uint32    `json:"code"`
	Reason string    `json:"reason"`
	Signal string    `json:"signal,omitempty"`
	At     time.Time `json:"at,omitzero"`
}

// exitRecord converts an exit for the state file.
func exitRecord(e runtime.Exit) *ExitRecord {
	return &ExitRecord{Code: e.Code, Reason: e.Reason.String(), Signal: e.Signal, At: e.At}
}

// Exit converts the record back; an unknown reason name is ExitUnknown.
func (r *ExitRecord) Exit() runtime.Exit {
	e := runtime.Exit{Code: r.Code, Reason: runtime.ExitUnknown, Signal: r.Signal, At: r.At}
	for _, x := range []runtime.ExitReason{runtime.ExitCompleted, runtime.ExitError, runtime.ExitSignal, runtime.ExitOOMKilled, runtime.ExitUnknown} {
		if x.String() == r.Reason {
			e.Reason = x
		}
	}
	return e
}

// stateData is the file's content.
type stateData struct {
	Version    int                         `json:"version"`
	Counters   map[string]*Counters        `json:"counters"`
	Containers map[string]*ContainerRecord `json:"containers"`
	// Commands holds the commands the agent accepted, by id, so that a
	// command delivered twice (or replayed after a crash of either side)
	// runs at most once and its result can be reported again.
	Commands map[string]*CommandRecord `json:"commands"`
	// BootID is the kernel's boot id when the agent last started and had
	// looked at every container: a different one at the next start means
	// the node restarted in between.
	BootID string `json:"boot_id,omitempty"`
}

// Store is the agent's durable state: lifetime counters by workload
// identity, per-container restart state, and executed command ids. Every
// mutation through Update is written to disk (fsync, atomic rename) before
// Update returns, so that a counted exit survives a crash of the agent.
//
// Store is safe for concurrent use.
type Store struct {
	path string
	mu   sync.Mutex
	data stateData
}

// OpenStore loads (or creates) the state in dir.
func OpenStore(dir string) (*Store, error) {
	if dir == "" {
		return nil, fmt.Errorf("state dir is empty: %w", errdefs.ErrInvalid)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	s := &Store{path: filepath.Join(dir, stateFileName)}
	s.data = stateData{
		Version:    stateVersion,
		Counters:   map[string]*Counters{},
		Containers: map[string]*ContainerRecord{},
		Commands:   map[string]*CommandRecord{},
	}
	b, err := os.ReadFile(s.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return s, s.writeLocked()
	case err != nil:
		return nil, fmt.Errorf("read state: %w", err)
	}
	var d stateData
	if err := json.Unmarshal(b, &d); err != nil {
		// A corrupt state file must not keep the agent down, but must not be
		// silently thrown away either: keep it aside for the operator.
		aside := s.path + ".corrupt-" + time.Now().UTC().Format("20060102T150405")
		_ = os.Rename(s.path, aside)
		return nil, fmt.Errorf("state file %s is corrupt (moved to %s; counters restart from zero on next start): %v: %w", s.path, aside, err, errdefs.ErrInvalid)
	}
	if d.Version != stateVersion {
		return nil, fmt.Errorf("state file %s has version %d, this agent understands %d: %w", s.path, d.Version, stateVersion, errdefs.ErrInvalid)
	}
	if d.Counters != nil {
		s.data.Counters = d.Counters
	}
	if d.Containers != nil {
		s.data.Containers = d.Containers
	}
	if d.Commands != nil {
		s.data.Commands = d.Commands
	}
	s.data.BootID = d.BootID
	for _, c := range s.data.Counters {
		if c.Exits == nil {
			c.Exits = map[ExitKey]uint64{}
		}
	}
	return s, nil
}

// Tx is the view of the state inside Update.
type Tx struct{ d *stateData }

// Counters returns the counters of a workload identity, creating them.
func (tx Tx) Counters(identity string) *Counters {
	c := tx.d.Counters[identity]
	if c == nil {
		c = &Counters{Exits: map[ExitKey]uint64{}}
		tx.d.Counters[identity] = c
	}
	return c
}

// Container returns the record of a container key ("namespace/id"),
// creating it.
func (tx Tx) Container(key string) *ContainerRecord {
	r := tx.d.Containers[key]
	if r == nil {
		r = &ContainerRecord{}
		tx.d.Containers[key] = r
	}
	return r
}

// DeleteContainer forgets a container's record.
func (tx Tx) DeleteContainer(key string) { delete(tx.d.Containers, key) }

// Command returns the record of command id, nil when the agent never
// accepted it. The record may be modified inside Update.
func (tx Tx) Command(id string) *CommandRecord { return tx.d.Commands[id] }

// AcceptCommand records command id as accepted at at, before it is carried
// out, and returns its record.
func (tx Tx) AcceptCommand(id string, at time.Time) *CommandRecord {
	r := &CommandRecord{Accepted: at}
	tx.d.Commands[id] = r
	return r
}

// Commands calls fn for every command record.
func (tx Tx) Commands(fn func(id string, r *CommandRecord)) {
	for id, r := range tx.d.Commands {
		fn(id, r)
	}
}

// CommandRecord is what the agent keeps of one command: written durably
// when it is accepted (before anything is done), and again with its
// outcome.
type CommandRecord struct {
	// Accepted is when the agent accepted the command.
	Accepted time.Time `json:"accepted"`
	// Finished is when it ended; zero while it is carried out (or when the
	// agent stopped in the middle).
	Finished time.Time `json:"finished,omitzero"`
	// Outcome is the protocol's CommandOutcome name
	// ("COMMAND_OUTCOME_SUCCEEDED"), set with Finished.
	Outcome string `json:"outcome,omitempty"`
	// Message is the outcome's detail.
	Message string `json:"message,omitempty"`
}

// UnmarshalJSON also reads the format of state files before commands had
// records: the time the command was carried out, and nothing else.
func (r *CommandRecord) UnmarshalJSON(b []byte) error {
	var at time.Time
	if err := json.Unmarshal(b, &at); err == nil {
		*r = CommandRecord{Accepted: at, Finished: at, Outcome: "COMMAND_OUTCOME_SUCCEEDED", Message: "carried out by an earlier agent version (outcome not recorded)"}
		return nil
	}
	type plain CommandRecord
	return json.Unmarshal(b, (*plain)(r))
}

// last is the record's latest time.
func (r *CommandRecord) last() time.Time {
	if r.Finished.After(r.Accepted) {
		return r.Finished
	}
	return r.Accepted
}

// Update runs fn on the state and writes the result durably. If fn returns
// an error nothing is written (but in-memory changes fn made stay: fn should
// validate before mutating).
func (s *Store) Update(fn func(Tx) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := fn(Tx{&s.data}); err != nil {
		return err
	}
	return s.writeLocked()
}

// UpdateIf runs fn on the state and writes it only when fn reports a change
// that must survive a crash. Changes fn makes without reporting them (a
// LastSeen refresh) stay in memory and reach the disk with the next write.
func (s *Store) UpdateIf(fn func(Tx) bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !fn(Tx{&s.data}) {
		return nil
	}
	return s.writeLocked()
}

// BootID returns the boot id last recorded with SetBootID.
func (s *Store) BootID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.data.BootID
}

// SetBootID records the kernel's boot id, durably when it changed.
func (s *Store) SetBootID(id string) error {
	return s.UpdateIf(func(tx Tx) bool {
		changed := tx.d.BootID != id
		tx.d.BootID = id
		return changed
	})
}

// View runs fn on the state without writing.
func (s *Store) View(fn func(Tx)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn(Tx{&s.data})
}

// Prune forgets counters not seen since before cutoff whose identity is not
// in live, container records not in live, and command ids older than
// cutoff, then writes.
func (s *Store) Prune(live map[string]bool, liveContainers map[string]bool, cutoff time.Time) error {
	return s.Update(func(tx Tx) error {
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
			if !r.Finished.IsZero() && r.last().Before(cutoff) {
				delete(tx.d.Commands, id)
			}
		}
		return nil
	})
}

func (s *Store) writeLocked() error {
	b, err := json.Marshal(&s.data)
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	tmp := s.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write state: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync state: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close state: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("replace state: %w", err)
	}
	return nil
}
