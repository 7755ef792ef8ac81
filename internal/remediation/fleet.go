package remediation

import (
	"fmt"
	"sync"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// FleetContainer is one container as StaticFleet knows it.
type FleetContainer struct {
	Node, Namespace, ID string
	// PodNamespace, Pod and Name for a pod's container.
	PodNamespace, Pod, Name string
	Owner                   Owner
	RestartCount            uint32
	// HealthBlamedOnNode: unhealthy, the failing probe blamed on the
	// node's network (TargetState.HealthBlamedOnNode).
	HealthBlamedOnNode bool
	// NetnsInode of the container's network namespace and its links.
	NetnsInode uint64
	Interfaces []string
}

// StaticFleet is a FleetView over a set the caller maintains: the fake to
// test with (this package's tests, the aggregator's, a dry run of rules in
// vigilctl), shipped with the interface. Safe for concurrent use.
type StaticFleet struct {
	mu         sync.RWMutex
	nodes      map[string]bool // name → up
	containers []FleetContainer
	byID       map[[2]string][]int // node, id → indexes in containers
}

var _ FleetView = (*StaticFleet)(nil)

// NewStaticFleet returns an empty fleet.
func NewStaticFleet() *StaticFleet {
	return &StaticFleet{nodes: map[string]bool{}, byID: map[[2]string][]int{}}
}

// SetNode adds or updates a node.
func (f *StaticFleet) SetNode(name string, up bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodes[name] = up
}

// Put adds c, or replaces the container with the same node, namespace and
// pod identity (a re-created container gets a new id).
func (f *StaticFleet) Put(c FleetContainer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.nodes[c.Node]; !ok {
		f.nodes[c.Node] = true
	}
	for i, old := range f.containers {
		if old.Node == c.Node && old.Namespace == c.Namespace &&
			(old.ID == c.ID || (c.Pod != "" && old.PodNamespace == c.PodNamespace && old.Pod == c.Pod && old.Name == c.Name)) {
			f.containers[i] = c
			f.reindex()
			return
		}
	}
	f.containers = append(f.containers, c)
	k := [2]string{c.Node, c.ID}
	f.byID[k] = append(f.byID[k], len(f.containers)-1)
}

func (f *StaticFleet) reindex() {
	f.byID = make(map[[2]string][]int, len(f.containers))
	for i, c := range f.containers {
		k := [2]string{c.Node, c.ID}
		f.byID[k] = append(f.byID[k], i)
	}
}

// Size implements FleetView.
func (f *StaticFleet) Size() FleetSize {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return FleetSize{Nodes: len(f.nodes), Targets: len(f.containers)}
}

// Lookup implements FleetView: a container by namespace and id, or by pod
// namespace, pod and container name; with Interface, the link in its
// network namespace; an Interface without a container is a host link.
func (f *StaticFleet) Lookup(ref TargetRef) (TargetState, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	up, ok := f.nodes[ref.Node]
	if !ok {
		return TargetState{}, fmt.Errorf("no node %q in the fleet: %w", clip(ref.Node), errdefs.ErrNotFound)
	}
	if ref.Container == "" {
		if ref.Interface == "" {
			return TargetState{}, fmt.Errorf("target %s names no container or interface: %w", ref, errdefs.ErrInvalid)
		}
		return TargetState{Target: Target{Node: ref.Node, Interface: ref.Interface}, NodeUp: up}, nil
	}
	var found []FleetContainer
	if ref.Pod != "" {
		for _, c := range f.containers {
			if c.Node == ref.Node && c.PodNamespace == ref.PodNamespace && c.Pod == ref.Pod && c.Name == ref.Container && (ref.Namespace == "" || ref.Namespace == c.Namespace) {
				found = append(found, c)
			}
		}
	} else {
		for _, i := range f.byID[[2]string{ref.Node, ref.Container}] {
			if c := f.containers[i]; ref.Namespace == "" || c.Namespace == ref.Namespace {
				found = append(found, c)
			}
		}
	}
	switch len(found) {
	case 0:
		return TargetState{}, fmt.Errorf("no container %s in the fleet: %w", ref, errdefs.ErrNotFound)
	case 1:
	default:
		return TargetState{}, fmt.Errorf("%d containers match %s: %w", len(found), ref, errdefs.ErrInvalid)
	}
	c := found[0]
	st := TargetState{
		Target: Target{Node: c.Node, Namespace: c.Namespace, ContainerID: c.ID, PodNamespace: c.PodNamespace, Pod: c.Pod, Container: c.Name},
		Owner:  c.Owner, RestartCount: c.RestartCount, HasRestartCount: true, NodeUp: up, HealthBlamedOnNode: c.HealthBlamedOnNode,
	}
	if ref.Interface != "" {
		known := false
		for _, i := range c.Interfaces {
			known = known || i == ref.Interface
		}
		if !known {
			return TargetState{}, fmt.Errorf("container %s has no interface %q: %w", ref, clip(ref.Interface), errdefs.ErrNotFound)
		}
		st.Target.Interface, st.Target.NetnsInode = ref.Interface, c.NetnsInode
		st.Owner, st.HasRestartCount, st.RestartCount, st.HealthBlamedOnNode = OwnerUnknown, false, 0, false
	}
	return st, nil
}
