package network

import (
	"fmt"
	"time"

	"github.com/vigilhq/vigil/internal/container"
)

// The domain types of the network package. The agent converts them to the
// protocol once, at its edge (see proto.go).

// OperState is a link's RFC 2863 operational state (IFLA_OPERSTATE).
type OperState uint8

// The values are the kernel's (IF_OPER_*).
const (
	OperUnknown        OperState = 0
	OperNotPresent     OperState = 1
	OperDown           OperState = 2
	OperLowerLayerDown OperState = 3
	OperTesting        OperState = 4
	OperDormant        OperState = 5
	OperUp             OperState = 6
)

func (s OperState) String() string {
	switch s {
	case OperUnknown:
		return "unknown"
	case OperNotPresent:
		return "notpresent"
	case OperDown:
		return "down"
	case OperLowerLayerDown:
		return "lowerlayerdown"
	case OperTesting:
		return "testing"
	case OperDormant:
		return "dormant"
	case OperUp:
		return "up"
	}
	return fmt.Sprintf("operstate(%d)", uint8(s))
}

// Counters are a link's cumulative counters (IFLA_STATS64).
type Counters struct {
	RxBytes, TxBytes     uint64
	RxPackets, TxPackets uint64
	RxErrors, TxErrors   uint64
	RxDropped, TxDropped uint64
}

// Link is one network link as read from netlink, with the mapping to the
// other end of a veth pair filled in by the monitor.
type Link struct {
	Index int32
	Name  string
	// Kind is the rtnetlink link kind (IFLA_INFO_KIND: "veth", "bridge",
	// "vlan", "macvlan", "ipvlan", "vxlan", ...), "loopback" for the loopback
	// device and "device" for links without a kind (physical devices).
	Kind           string
	MAC            string // "" when the link has no hardware address
	MTU            uint32
	OperState      OperState
	AdminUp        bool // IFF_UP
	Carrier        bool // IFF_LOWER_UP
	CarrierChanges uint64
	Counters       Counters
	Addresses      []string // CIDR form, v4 and v6
	// LinkIndex is IFLA_LINK: for a veth its link partner's index (in the
	// partner's namespace when LinkNetNSID >= 0); for a vlan or macvlan its
	// lower device. 0 when absent.
	LinkIndex int32
	// LinkNetNSID is IFLA_LINK_NETNSID: the id, as this namespace numbers
	// it, of the namespace holding the link partner; -1 when it is local.
	LinkNetNSID int32
	// Partner is the other end of a veth pair (its link partner: for a
	// container's eth0 the host end, for a host veth the container end) when
	// the monitor found it in a namespace it reads; nil otherwise. Not to be
	// confused with gossip peers (internal/gossip), which are nodes.
	Partner *LinkPartner
}

// LinkPartner names the other end of a veth pair. On the wire (vigil.v1.
// Link) it is still spelled peer_index; only the Go names changed.
type LinkPartner struct {
	NetNSInode uint64 // namespace holding the partner
	Host       bool   // the partner is the host end
	Index      int32
	Name       string
	MTU        uint32
	// Owner is, for a host link whose partner is in a container namespace, the
	// container that names that namespace (a pod's sandbox when attached as
	// primary, else the earliest attached container). Zero otherwise.
	Owner container.Key
}

// IsDown reports whether the link is administratively or operationally down.
// OperUnknown counts as up: many virtual links report it while working.
func (l *Link) IsDown() bool {
	if !l.AdminUp {
		return true
	}
	switch l.OperState {
	case OperDown, OperLowerLayerDown, OperNotPresent:
		return true
	}
	return false
}

// ConditionType names a detected problem.
type ConditionType int

const (
	ConditionLinkDown ConditionType = iota + 1
	ConditionNoDefaultRoute
	ConditionMTUMismatch
	ConditionErrorsRising
	ConditionDropsRising
)

func (t ConditionType) String() string {
	switch t {
	case ConditionLinkDown:
		return "link_down"
	case ConditionNoDefaultRoute:
		return "no_default_route"
	case ConditionMTUMismatch:
		return "mtu_mismatch"
	case ConditionErrorsRising:
		return "errors_rising"
	case ConditionDropsRising:
		return "drops_rising"
	}
	return "unknown"
}

// Reasons carried by conditions (CamelCase, machine-readable).
const (
	ReasonAdminDown      = "AdminDown"      // IFF_UP cleared
	ReasonOperDown       = "OperDown"       // admin up, operational state down or not present
	ReasonLowerLayerDown = "LowerLayerDown" // admin up, a lower layer (the veth partner, the port) is down
	ReasonNoDefaultRoute = "NoDefaultRoute" // no IPv4 or IPv6 default route in the main table
	ReasonMTUMismatch    = "MTUMismatch"    // the two ends of a veth pair differ
	ReasonErrorsRising   = "ErrorsRising"   // rx+tx errors per second above the limit
	ReasonDropsRising    = "DropsRising"    // rx+tx drops per second above the limit
)

// Condition is a problem the monitor sees in a namespace now.
type Condition struct {
	Type    ConditionType
	Reason  string
	Message string
	Since   time.Time // first cycle that saw it; kept while it holds
	// Interface is the link concerned ("" for namespace-wide conditions).
	Interface string
	// NetNSInode is the namespace concerned (the host's inode for the host).
	NetNSInode uint64
}

// NamespaceState is one read of a network namespace.
type NamespaceState struct {
	Inode           uint64
	Host            bool
	Containers      []container.Key // attached containers, in attach order
	Links           []Link          // by index
	HasDefaultRoute bool
	Conditions      []Condition
	Time            time.Time
}

// Snapshot is the result of one read cycle: the host first, then the
// container namespaces ordered by inode.
type Snapshot struct {
	Time       time.Time
	Namespaces []NamespaceState
	// Errors holds one error per namespace that could not be read this cycle;
	// such a namespace is missing from Namespaces (a cycle never fails as a
	// whole because one namespace did).
	Errors []error
}

// Host returns the host namespace's state, nil when it could not be read.
func (s *Snapshot) Host() *NamespaceState {
	for i := range s.Namespaces {
		if s.Namespaces[i].Host {
			return &s.Namespaces[i]
		}
	}
	return nil
}

// Namespace returns the state of the namespace with this inode, nil if absent.
func (s *Snapshot) Namespace(inode uint64) *NamespaceState {
	for i := range s.Namespaces {
		if s.Namespaces[i].Inode == inode {
			return &s.Namespaces[i]
		}
	}
	return nil
}

// Link returns the link named name, nil if absent.
func (n *NamespaceState) Link(name string) *Link {
	for i := range n.Links {
		if n.Links[i].Name == name {
			return &n.Links[i]
		}
	}
	return nil
}

// EventType is what happened to a link.
type EventType int

const (
	LinkAdded EventType = iota + 1
	LinkRemoved
	LinkChanged
	// Resync: notifications for the namespace were lost (the kernel's socket
	// buffer overflowed); the next Read is exact, but changes in between
	// may not have been reported one by one. Link is zero.
	Resync
)

func (t EventType) String() string {
	switch t {
	case LinkAdded:
		return "added"
	case LinkRemoved:
		return "removed"
	case LinkChanged:
		return "changed"
	case Resync:
		return "resync"
	}
	return "unknown"
}

// Event is a link change seen on a namespace's netlink subscription. Link
// carries the state in the notification: index, name, kind, MAC, MTU, flags,
// operational state and counters (addresses and peers are not filled in).
type Event struct {
	Type       EventType
	Time       time.Time // when the notification was received
	NetNSInode uint64
	Host       bool
	Containers []container.Key // attached to the namespace when it was received
	Link       Link
}
