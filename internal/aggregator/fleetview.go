package aggregator

import (
	"fmt"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/remediation"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// fleetView is the remediation engine's read-only view of the fleet, in
// domain types, over the read model the agents' streams keep. It takes one
// node's lock at a time and never blocks on I/O.
type fleetView struct{ f *Fleet }

var _ remediation.FleetView = fleetView{}

// Size implements remediation.FleetView: nodes known and their containers
// (sandboxes left out: the storm guard counts workloads).
func (v fleetView) Size() remediation.FleetSize {
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
func (v fleetView) Lookup(ref remediation.TargetRef) (remediation.TargetState, error) {
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
		for _, ns := range n.network {
			if !ns.GetHost() {
				continue
			}
			for _, i := range ns.GetInterfaces() {
				if i.GetName() == ref.Interface {
					return remediation.TargetState{Target: remediation.Target{Node: ref.Node, Interface: ref.Interface}, NodeUp: up}, nil
				}
			}
		}
		return remediation.TargetState{}, fmt.Errorf("node %s has no host interface %q: %w", ref.Node, ref.Interface, errdefs.ErrNotFound)
	}
	var found []*vigilv1.Container
	for k, c := range n.containers {
		if ref.Namespace != "" && k.Namespace != ref.Namespace {
			continue
		}
		p := c.GetPod()
		if ref.Pod != "" {
			if !p.GetSandbox() && p.GetNamespace() == ref.PodNamespace && p.GetName() == ref.Pod && p.GetContainerName() == ref.Container {
				found = append(found, c)
			}
		} else if k.ID == ref.Container {
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
	c := found[0]
	p := c.GetPod()
	st := remediation.TargetState{
		Target: remediation.Target{
			Node: ref.Node, Namespace: c.GetNamespace(), ContainerID: c.GetId(),
			PodNamespace: p.GetNamespace(), Pod: p.GetName(), Container: p.GetContainerName(),
		},
		Owner:           ownerOf(c.GetManager()),
		RestartCount:    c.GetRestartCount(),
		HasRestartCount: true,
		NodeUp:          up,
	}
	if c.GetManager() == vigilv1.Manager_MANAGER_KUBELET && p != nil {
		st.RestartCount = p.GetKubeletRestartCount()
	}
	if ref.Interface != "" {
		inode := c.GetNetnsInode()
		known := false
		for _, ns := range n.network {
			if ns.GetInode() != inode || inode == 0 {
				continue
			}
			for _, i := range ns.GetInterfaces() {
				known = known || i.GetName() == ref.Interface
			}
		}
		if !known {
			return remediation.TargetState{}, fmt.Errorf("container %s has no interface %q in its network namespace: %w", ref, ref.Interface, errdefs.ErrNotFound)
		}
		st.Target.Interface, st.Target.NetnsInode = ref.Interface, inode
		st.Owner, st.HasRestartCount, st.RestartCount = remediation.OwnerUnknown, false, 0
	}
	return st, nil
}

// ownerOf maps the protocol's manager onto the engine's owner.
func ownerOf(m vigilv1.Manager) remediation.Owner {
	switch m {
	case vigilv1.Manager_MANAGER_VIGIL:
		return remediation.OwnerVigil
	case vigilv1.Manager_MANAGER_KUBELET:
		return remediation.OwnerKubelet
	case vigilv1.Manager_MANAGER_DOCKER:
		return remediation.OwnerDocker
	case vigilv1.Manager_MANAGER_CONTAINERD:
		return remediation.OwnerContainerd
	default:
		return remediation.OwnerUnknown
	}
}
