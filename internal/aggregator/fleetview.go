package aggregator

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/remediation"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// fleetView is the remediation engine's read-only view of the fleet, in
// domain types, over the read model the agents' streams keep. It takes one
// node's lock at a time and never blocks on I/O.
type fleetView struct {
	f *Fleet
	// size caches Size for sizeFor: a count walks every container of the
	// fleet, and each webhook group and each engine tick asks for it.
	size atomic.Pointer[cachedSize]
}

type cachedSize struct {
	s  remediation.FleetSize
	at time.Time
}

const sizeFor = time.Second

var _ remediation.FleetView = (*fleetView)(nil)

// Size implements remediation.FleetView: nodes known and their containers
// (sandboxes left out: the storm guard counts workloads), at most sizeFor
// old.
func (v *fleetView) Size() remediation.FleetSize {
	now := time.Now()
	if c := v.size.Load(); c != nil && now.Sub(c.at) < sizeFor {
		return c.s
	}
	s := v.count()
	v.size.Store(&cachedSize{s, now})
	return s
}

func (v *fleetView) count() remediation.FleetSize {
	var s remediation.FleetSize
	for _, n := range v.f.list() {
		s.Nodes++
		n.mu.Lock()
		for _, c := range n.containers {
			if !c.GetPod().GetSandbox() {
				s.Targets++
			}
		}
		n.mu.Unlock()
	}
	return s
}

// Lookup implements remediation.FleetView.
func (v *fleetView) Lookup(ref remediation.TargetRef) (remediation.TargetState, error) {
	n := v.f.get(ref.Node)
	if n == nil {
		return remediation.TargetState{}, fmt.Errorf("no node %q in the fleet: %w", ref.Node, errdefs.ErrNotFound)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	// A node that is down would hold a command in its outbox until the
	// deadline; stale still has its stream.
	up := n.state != vigilv1.NodeState_NODE_STATE_DOWN
	if ref.Container == "" {
		if ref.Interface == "" {
			return remediation.TargetState{}, fmt.Errorf("target %s names no container or interface: %w", ref, errdefs.ErrInvalid)
		}
		if n.hasInterface(0, ref.Interface) {
			return remediation.TargetState{Target: remediation.Target{Node: ref.Node, Interface: ref.Interface}, NodeUp: up}, nil
		}
		return remediation.TargetState{}, fmt.Errorf("node %s has no host interface %q: %w", ref.Node, ref.Interface, errdefs.ErrNotFound)
	}
	var found []*vigilv1.Container
	for _, c := range n.containers {
		if remediation.ContainerMatches(ref, ref.Node, c) {
			found = append(found, c)
		}
	}
	switch {
	case len(found) == 0:
		return remediation.TargetState{}, fmt.Errorf("no container %s in the fleet: %w", ref, errdefs.ErrNotFound)
	case len(found) > 1 && ref.Pod != "":
		// A pod's container re-created by the kubelet: the old one lingers
		// until it is removed. The running one is the target.
		var running []*vigilv1.Container
		for _, c := range found {
			if c.GetState() == vigilv1.ContainerState_CONTAINER_STATE_RUNNING {
				running = append(running, c)
			}
		}
		if len(running) != 1 {
			return remediation.TargetState{}, fmt.Errorf("%d containers match %s, %d of them running: %w", len(found), ref, len(running), errdefs.ErrInvalid)
		}
		found = running
	case len(found) > 1:
		return remediation.TargetState{}, fmt.Errorf("%d containers match %s: name the containerd namespace: %w", len(found), ref, errdefs.ErrInvalid)
	}
	st := remediation.ContainerTargetState(ref, ref.Node, found[0], up)
	if ref.Interface != "" && !n.hasInterface(st.Target.NetnsInode, ref.Interface) {
		return remediation.TargetState{}, fmt.Errorf("container %s has no interface %q in its network namespace: %w", ref, ref.Interface, errdefs.ErrNotFound)
	}
	return st, nil
}

// hasInterface reports whether the network namespace with inode (0: the
// host's) holds a link called name, as the node last reported; n.mu held.
func (n *node) hasInterface(inode uint64, name string) bool {
	for _, ns := range n.network {
		if (inode == 0 && ns.GetHost()) || (inode != 0 && ns.GetInode() == inode) {
			for _, i := range ns.GetInterfaces() {
				if i.GetName() == name {
					return true
				}
			}
		}
	}
	return false
}
