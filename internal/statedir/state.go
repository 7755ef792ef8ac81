package statedir

import (
	"encoding/json"
	"sort"
	"time"
)

// Version is the format this package writes. Version 1 kept command ids
// with a time only; version 2 keeps a record per command.
const Version = 2

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
	// whose containers are all gone are pruned after a retention.
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

// TaskOutput is where a task's stdout and stderr went (paths or URIs).
type TaskOutput struct {
	Stdout   string `json:"stdout,omitempty"`
	Stderr   string `json:"stderr,omitempty"`
	Terminal bool   `json:"terminal,omitempty"`
}

// ExitRecord is a task exit, its reason by name (so that the file does not
// depend on anyone's numbering).
type ExitRecord struct {
	Code   uint32    `json:"code"`
	Reason string    `json:"reason"`
	Signal string    `json:"signal,omitempty"`
	At     time.Time `json:"at,omitzero"`
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
	// pending.
	RestartBegun time.Time `json:"restart_begun,omitzero"`
	// Output is where the output of the task that restart replaces went,
	// written with RestartBegun.
	Output TaskOutput `json:"output,omitzero"`
	// LastExit is the container's last exit the agent saw (or inferred).
	LastExit *ExitRecord `json:"last_exit,omitempty"`
	// Announced is set once the container's ADDED event was sent.
	Announced bool `json:"announced,omitempty"`
}

// CommandRecord is what the agent keeps of one command: written durably
// when it is accepted (before anything is done), and again with its
// outcome.
type CommandRecord struct {
	// Accepted is when the agent accepted the command.
	Accepted time.Time `json:"accepted"`
	// Deadline is the command's deadline, zero when it had none (see
	// Prune).
	Deadline time.Time `json:"deadline,omitzero"`
	// Finished is when it ended; zero while it is carried out (or when the
	// agent stopped in the middle).
	Finished time.Time `json:"finished,omitzero"`
	// Outcome is the protocol's CommandOutcome name, set with Finished.
	Outcome string `json:"outcome,omitempty"`
	// Message is the outcome's detail.
	Message string `json:"message,omitempty"`
}

// UnmarshalJSON also reads version 1's entry: the time the command was
// carried out, and nothing else.
func (r *CommandRecord) UnmarshalJSON(b []byte) error {
	var at time.Time
	if err := json.Unmarshal(b, &at); err == nil {
		*r = CommandRecord{Accepted: at, Finished: at, Outcome: "COMMAND_OUTCOME_SUCCEEDED", Message: "carried out by an earlier agent version (outcome not recorded)"}
		return nil
	}
	type plain CommandRecord
	return json.Unmarshal(b, (*plain)(r))
}

func (r *CommandRecord) last() time.Time {
	if r.Finished.After(r.Accepted) {
		return r.Finished
	}
	return r.Accepted
}

// data is the file's content.
type data struct {
	Version    int                         `json:"version"`
	Counters   map[string]*Counters        `json:"counters"`
	Containers map[string]*ContainerRecord `json:"containers"`
	Commands   map[string]*CommandRecord   `json:"commands"`
	BootID     string                      `json:"boot_id,omitempty"`
}

func newData() data {
	return data{
		Version:    Version,
		Counters:   map[string]*Counters{},
		Containers: map[string]*ContainerRecord{},
		Commands:   map[string]*CommandRecord{},
	}
}

// decode parses a state file of any known version into the current form.
// It fails on what is not a state file; a newer version is read as far as
// it is understood (newer is true).
func decode(b []byte) (d data, newer bool, err error) {
	var in data
	if err := json.Unmarshal(b, &in); err != nil {
		return data{}, false, err
	}
	if in.Version < 1 {
		return data{}, false, errVersion(in.Version)
	}
	d = newData()
	if in.Counters != nil {
		d.Counters = in.Counters
	}
	if in.Containers != nil {
		d.Containers = in.Containers
	}
	if in.Commands != nil {
		d.Commands = in.Commands
	}
	d.BootID = in.BootID
	for id, c := range d.Counters {
		if c == nil {
			delete(d.Counters, id)
			continue
		}
		if c.Exits == nil {
			c.Exits = map[ExitKey]uint64{}
		}
	}
	for k, r := range d.Containers {
		if r == nil {
			delete(d.Containers, k)
		}
	}
	for id, r := range d.Commands {
		if r == nil {
			delete(d.Commands, id)
		}
	}
	return d, in.Version > Version, nil
}
