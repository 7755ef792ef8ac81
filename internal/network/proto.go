package network

import (
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Conversions to the protocol, for the agent's edge.

// Proto converts the namespace's read. The protocol numbers the host's links
// and conditions with netns inode 0; the namespace itself keeps its inode.
func (n *NamespaceState) Proto() *vigilv1.NetworkNamespace {
	out := &vigilv1.NetworkNamespace{
		Inode:           n.Inode,
		Host:            n.Host,
		HasDefaultRoute: n.HasDefaultRoute,
		Timestamp:       timestamppb.New(n.Time),
	}
	inode := n.Inode
	if n.Host {
		inode = 0
	}
	for _, c := range n.Containers {
		out.Containers = append(out.Containers, &vigilv1.ContainerRef{Namespace: c.Namespace, Id: c.ID})
	}
	out.Interfaces = make([]*vigilv1.Interface, len(n.Links))
	for i := range n.Links {
		out.Interfaces[i] = n.Links[i].Proto(inode)
	}
	for i := range n.Conditions {
		c := n.Conditions[i].Proto()
		if n.Host {
			c.NetnsInode = 0
		}
		out.Conditions = append(out.Conditions, c)
	}
	return out
}

// Proto converts the link; netnsInode is the protocol's namespace number for
// it (0 for the host).
func (l *Link) Proto(netnsInode uint64) *vigilv1.Interface {
	out := &vigilv1.Interface{
		Name:           l.Name,
		Index:          l.Index,
		Kind:           l.Kind,
		Mac:            l.MAC,
		Mtu:            l.MTU,
		OperState:      l.OperState.Proto(),
		AdminUp:        l.AdminUp,
		Carrier:        l.Carrier,
		CarrierChanges: l.CarrierChanges,
		RxBytes:        l.Counters.RxBytes,
		TxBytes:        l.Counters.TxBytes,
		RxPackets:      l.Counters.RxPackets,
		TxPackets:      l.Counters.TxPackets,
		RxErrors:       l.Counters.RxErrors,
		TxErrors:       l.Counters.TxErrors,
		RxDropped:      l.Counters.RxDropped,
		TxDropped:      l.Counters.TxDropped,
		NetnsInode:     netnsInode,
		Addresses:      l.Addresses,
	}
	if l.Kind == "veth" {
		out.PeerIndex = l.LinkIndex
	}
	if l.Partner != nil {
		out.PeerIndex = l.Partner.Index
		out.OwnerNamespace = l.Partner.Owner.Namespace
		out.OwnerContainerId = l.Partner.Owner.ID
	}
	return out
}

// Proto converts the operational state.
func (s OperState) Proto() vigilv1.LinkOperState {
	switch s {
	case OperUnknown:
		return vigilv1.LinkOperState_LINK_OPER_STATE_UNKNOWN
	case OperNotPresent:
		return vigilv1.LinkOperState_LINK_OPER_STATE_NOT_PRESENT
	case OperDown:
		return vigilv1.LinkOperState_LINK_OPER_STATE_DOWN
	case OperLowerLayerDown:
		return vigilv1.LinkOperState_LINK_OPER_STATE_LOWER_LAYER_DOWN
	case OperTesting:
		return vigilv1.LinkOperState_LINK_OPER_STATE_TESTING
	case OperDormant:
		return vigilv1.LinkOperState_LINK_OPER_STATE_DORMANT
	case OperUp:
		return vigilv1.LinkOperState_LINK_OPER_STATE_UP
	}
	return vigilv1.LinkOperState_LINK_OPER_STATE_UNSPECIFIED
}

// Proto converts the condition type.
func (t ConditionType) Proto() vigilv1.ConditionType {
	switch t {
	case ConditionLinkDown:
		return vigilv1.ConditionType_CONDITION_TYPE_LINK_DOWN
	case ConditionNoDefaultRoute:
		return vigilv1.ConditionType_CONDITION_TYPE_NO_DEFAULT_ROUTE
	case ConditionMTUMismatch:
		return vigilv1.ConditionType_CONDITION_TYPE_MTU_MISMATCH
	case ConditionErrorsRising:
		return vigilv1.ConditionType_CONDITION_TYPE_ERRORS_RISING
	case ConditionDropsRising:
		return vigilv1.ConditionType_CONDITION_TYPE_DROPS_RISING
	}
	return vigilv1.ConditionType_CONDITION_TYPE_UNSPECIFIED
}

// Proto converts the condition (its NetNSInode as is; NamespaceState.Proto
// zeroes it for the host).
func (c *Condition) Proto() *vigilv1.Condition {
	return &vigilv1.Condition{
		Type:       c.Type.Proto(),
		Reason:     c.Reason,
		Message:    c.Message,
		Since:      timestamppb.New(c.Since),
		Interface:  c.Interface,
		NetnsInode: c.NetNSInode,
	}
}
