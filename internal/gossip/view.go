package gossip

import (
	"net/netip"
	"time"
)

// State is a peer's state as one member sees it.
type State uint8

// The states, as memberlist's (NodeStateType), plus Unknown for a peer a
// report does not mention.
const (
	StateUnknown State = iota
	// StateAlive: answering gossip.
	StateAlive
	// StateSuspect: this member's own probe of the peer failed, directly
	// and through IndirectChecks others; memberlist's suspicion timer runs.
	// Only this member's suspicions are seen (memberlist exposes no event
	// for a suspicion gossiped by another member, and none for a refuted
	// one); the member pings its suspects every ProbeInterval and sees
	// one alive again when it answers (or sends new metadata, or when the
	// longest suspicion timeout passed without it being declared dead).
	StateSuspect
	// StateDead: declared dead by the protocol (its suspicion timed out).
	StateDead
	// StateLeft: left on purpose (a Member's graceful stop).
	StateLeft
)

func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateSuspect:
		return "suspect"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	}
	return "unknown"
}

// Reachable reports whether the state means the peer answers gossip.
func (s State) Reachable() bool { return s == StateAlive || s == StateSuspect }

// View is one peer as this member sees it.
type View struct {
	// Name is the peer's member name (its node name).
	Name string
	// Addr is its gossip address.
	Addr netip.AddrPort
	// State is its state, Since when this member saw it change.
	State State
	Since time.Time
	// Meta is the peer's metadata as last received. MetaErr is set when
	// the peer's metadata could not be decoded (another version); Meta is
	// then the zero value.
	Meta    Meta
	MetaErr error
}
