package aggregator

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/metrics"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// maxCommandResults is how many command results a node keeps, one per
// command id (the oldest command is dropped first).
const maxCommandResults = 64

// Fleet is the aggregator's in-memory state of every node, as the agents
// report it.
//
// Concurrency: the node map has its own RWMutex, taken for writing only when
// a node is added or forgotten. Each node has its own mutex, held by ingest
// while a message is applied and by readers (API, scrape) only long enough to
// copy pointers: stored protobuf messages are never modified after they are
// stored, so readers use them without locks. Rendering a node's series happens
// outside every lock.
type Fleet struct {
	mu    sync.RWMutex
	nodes map[string]*node

	events *broadcaster
	// seeds are the gossip addresses hello replies give (gossipseeds.go).
	seeds seedPool
	// condGen changes whenever something a node condition reads changes
	// (a stream connects or ends, a peer view arrives), so that the
	// assessor need not read every view when nothing changed.
	condGen atomic.Uint64
}

// node is one node's state. Fields below mu are guarded by it.
type node struct {
	name string

	mu             sync.Mutex
	instance       string
	lastSeq        uint64
	needSnapshot   bool
	seqGaps        uint64 // messages applied after a gap in the sequence
	state          vigilv1.NodeState
	agentVersion   string
	bootID         string
	capabilities   []string
	lastSeen       time.Time
	connectedSince time.Time
	downSince      time.Time
	containers     map[container.Key]*vigilv1.Container
	samples        map[container.Key]*vigilv1.ResourceSample
	network        []*vigilv1.NetworkNamespace
	status         *vigilv1.NodeStatus
	peers          *vigilv1.PeerView
	peersAt        time.Time // when peers arrived
	// condition is the node's condition (gossip.Assess over its stream
	// and the other nodes' views of it; "" until first assessed), why, and
	// since when.
	condition       string
	conditionReason string
	conditionSince  time.Time
	results         []*vigilv1.CommandResult // one per command id, by first arrival
	version         uint64                   // bumped on every change that shows in the series

	cache atomic.Pointer[renderedNode]
}

type renderedNode struct {
	version uint64
	r       *metrics.Rendered
}

// NewFleet returns an empty fleet.
func NewFleet() *Fleet {
	return &Fleet{nodes: make(map[string]*node), events: newBroadcaster()}
}

func (f *Fleet) get(name string) *node {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.nodes[name]
}

func (f *Fleet) getOrCreate(name string) *node {
	if n := f.get(name); n != nil {
		return n
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := f.nodes[name]; n != nil {
		return n
	}
	n := &node{
		name:         name,
		needSnapshot: true,
		containers:   make(map[container.Key]*vigilv1.Container),
		samples:      make(map[container.Key]*vigilv1.ResourceSample),
	}
	f.nodes[name] = n
	return n
}

// list returns the nodes sorted by name.
func (f *Fleet) list() []*node {
	f.mu.RLock()
	out := make([]*node, 0, len(f.nodes))
	for _, n := range f.nodes {
		out = append(out, n)
	}
	f.mu.RUnlock()
	slices.SortFunc(out, func(a, b *node) int { return cmp.Compare(a.name, b.name) })
	return out
}

// connect records a hello and answers it: resume after the last sequence
// number applied for this instance, and ask for a snapshot when the fleet
// holds no state for the node or the instance changed.
//
// fresh says another replica may have applied messages of the node since
// this fleet last did (it was just claimed here): what is kept is not
// trusted, and a snapshot is asked for.
func (f *Fleet) connect(h *vigilv1.Hello, aggregatorID string, now time.Time, fresh bool) *vigilv1.HelloAck {
	n := f.getOrCreate(h.GetNodeName())
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.instance != h.GetInstanceId() || fresh {
		n.instance = h.GetInstanceId()
		n.lastSeq = 0
		n.needSnapshot = true
	}
	n.agentVersion = h.GetAgentVersion()
	n.bootID = h.GetBootId()
	n.capabilities = slices.Clone(h.GetCapabilities())
	n.lastSeen = now
	n.connectedSince = now
	n.downSince = time.Time{}
	n.setState(vigilv1.NodeState_NODE_STATE_UP)
	f.condGen.Add(1)
	return &vigilv1.HelloAck{
		NodeName:         n.name,
		ResumeAfterSeq:   n.lastSeq,
		SnapshotRequired: n.needSnapshot,
		AggregatorId:     aggregatorID,
	}
}

// forget removes a node and its state at once (its series go from the
// exposition): another replica holds it now.
func (f *Fleet) forget(name string) {
	f.mu.Lock()
	_, ok := f.nodes[name]
	delete(f.nodes, name)
	f.mu.Unlock()
	if ok {
		f.condGen.Add(1)
	}
}

// disconnect marks a node down: its stream ended.
func (f *Fleet) disconnect(name string, now time.Time) {
	n := f.get(name)
	if n == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.downSince = now
	n.setState(vigilv1.NodeState_NODE_STATE_DOWN)
	f.condGen.Add(1)
}

func (n *node) setState(s vigilv1.NodeState) {
	if n.state != s {
		n.state = s
		n.version++
	}
}

// applied reports whether the node's current instance has applied sequence
// number seq already (a message re-sent after a reconnect).
func (f *Fleet) applied(name string, seq uint64) bool {
	n := f.get(name)
	if n == nil {
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return seq <= n.lastSeq
}

// applyResult says what apply did.
type applyResult struct {
	applied bool   // false for a duplicate
	acked   uint64 // the node's last applied seq after the message
	// gap is the number of sequence numbers skipped before the message
	// (0: none); askSnapshot says the agent should be asked for a
	// snapshot now (the message is not one and none was asked already).
	gap         uint64
	askSnapshot bool
	gapAfter    uint64 // the last seq applied before the gap
}

// apply applies one agent message of the node's current instance, at most
// once per sequence number. Messages must have been validated (and checked
// against q.checkMessage). A message that would take the node over a cap
// of q that depends on what it holds (containers, interfaces of a
// namespace) is not applied: the error is a *quotaError. q nil checks
// nothing.
func (f *Fleet) apply(name string, m *vigilv1.AgentMessage, now time.Time, q *Quotas) (applyResult, error) {
	n := f.get(name)
	if n == nil {
		return applyResult{}, fmt.Errorf("node %q is not connected: %w", name, errdefs.ErrUnavailable)
	}
	var event *vigilv1.ContainerEvent
	var view *vigilv1.PeerView

	n.mu.Lock()
	n.lastSeen = now
	if n.state == vigilv1.NodeState_NODE_STATE_STALE {
		n.setState(vigilv1.NodeState_NODE_STATE_UP)
	}
	if m.GetSeq() <= n.lastSeq {
		acked := n.lastSeq
		n.mu.Unlock()
		return applyResult{acked: acked}, nil
	}
	if q != nil {
		if err := n.checkQuotas(m, q); err != nil {
			n.mu.Unlock()
			return applyResult{}, err
		}
	}
	var res applyResult
	if n.lastSeq != 0 && m.GetSeq() > n.lastSeq+1 {
		// Messages the agent dropped (or a buggy agent): counted, and
		// unless this message is the snapshot that supersedes them, a
		// snapshot is asked for now and at the next Hello.
		res.gap, res.gapAfter = m.GetSeq()-n.lastSeq-1, n.lastSeq
		n.seqGaps++
		if m.GetSnapshot() == nil {
			res.askSnapshot = !n.needSnapshot
			n.needSnapshot = true
		}
	}
	n.lastSeq = m.GetSeq()
	switch b := m.GetBody().(type) {
	case *vigilv1.AgentMessage_Snapshot:
		n.applySnapshot(b.Snapshot)
	case *vigilv1.AgentMessage_ContainerEvent:
		n.applyContainerEvent(b.ContainerEvent)
		// UPDATED carries coalesced probe results and counters: applied,
		// but no news for WatchEvents' readers.
		if b.ContainerEvent.GetType() != vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_UPDATED {
			event = b.ContainerEvent
		}
	case *vigilv1.AgentMessage_ResourceSamples:
		for _, s := range b.ResourceSamples.GetSamples() {
			k := container.Key{Namespace: s.GetNamespace(), ID: s.GetContainerId()}
			if _, ok := n.containers[k]; ok {
				n.samples[k] = s
			}
		}
		n.version++
	case *vigilv1.AgentMessage_NetworkSamples:
		n.network = b.NetworkSamples.GetNamespaces()
		n.version++
	case *vigilv1.AgentMessage_NetworkEvent:
		n.applyNetworkEvent(b.NetworkEvent)
	case *vigilv1.AgentMessage_PeerView:
		n.peers = b.PeerView
		n.peersAt = now
		view = b.PeerView
		n.version++
		f.condGen.Add(1)
	case *vigilv1.AgentMessage_NodeStatus:
		if n.status == nil || n.status.GetRuntimeAvailable() != b.NodeStatus.GetRuntimeAvailable() {
			n.version++ // vigil_node_condition{condition="RuntimeAvailable"}
		}
		n.status = b.NodeStatus
	case *vigilv1.AgentMessage_CommandResult:
		n.addResult(b.CommandResult)
	}
	res.applied, res.acked = true, n.lastSeq
	n.mu.Unlock()

	if event != nil {
		f.events.publish(name, event)
	}
	if view != nil {
		f.seeds.observe(name, view, now)
	}
	return res, nil
}

// checkQuotas checks the caps that depend on what the node holds; n.mu is
// held.
func (n *node) checkQuotas(m *vigilv1.AgentMessage, q *Quotas) error {
	switch b := m.GetBody().(type) {
	case *vigilv1.AgentMessage_ContainerEvent:
		c := b.ContainerEvent.GetContainer()
		k := container.Key{Namespace: c.GetNamespace(), ID: c.GetId()}
		if _, held := n.containers[k]; !held && b.ContainerEvent.GetType() != vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_REMOVED && len(n.containers) >= q.Containers {
			return &quotaError{cap: capContainers, value: len(n.containers) + 1, limit: q.Containers, where: "containers of the node"}
		}
	case *vigilv1.AgentMessage_NetworkEvent:
		ifc := b.NetworkEvent.GetInterface()
		for _, ns := range n.network {
			if (ifc.GetNetnsInode() == 0 && ns.GetHost()) || (ifc.GetNetnsInode() != 0 && ns.GetInode() == ifc.GetNetnsInode()) {
				count := len(ns.GetInterfaces())
				if !slices.ContainsFunc(ns.GetInterfaces(), func(old *vigilv1.Interface) bool { return old.GetIndex() == ifc.GetIndex() }) {
					count++
				}
				if count > q.InterfacesPerNamespace {
					return &quotaError{cap: capInterfacesPerNamespace, value: count, limit: q.InterfacesPerNamespace, where: fmt.Sprintf("interfaces of network namespace %d", ns.GetInode())}
				}
				break
			}
		}
	}
	return nil
}

// addResult stores a command result, replacing the stored result of the same
// command: the uplink re-sends results after a snapshot (they are idempotent
// by command id). The slice is replaced, never modified: readers may hold it.
func (n *node) addResult(r *vigilv1.CommandResult) {
	i := slices.IndexFunc(n.results, func(old *vigilv1.CommandResult) bool { return old.GetCommandId() == r.GetCommandId() })
	if i >= 0 {
		results := slices.Clone(n.results)
		results[i] = r
		n.results = results
		return
	}
	start := max(0, len(n.results)+1-maxCommandResults)
	n.results = append(slices.Clone(n.results[start:]), r)
}

func (n *node) applySnapshot(s *vigilv1.Snapshot) {
	containers := make(map[container.Key]*vigilv1.Container, len(s.GetContainers()))
	for _, c := range s.GetContainers() {
		containers[container.Key{Namespace: c.GetNamespace(), ID: c.GetId()}] = c
	}
	samples := make(map[container.Key]*vigilv1.ResourceSample, len(containers))
	for k, v := range n.samples {
		if _, ok := containers[k]; ok {
			samples[k] = v
		}
	}
	n.containers = containers
	n.samples = samples
	n.network = s.GetNetwork()
	if s.GetStatus() != nil {
		n.status = s.GetStatus()
	}
	n.needSnapshot = false
	n.version++
}

func (n *node) applyContainerEvent(e *vigilv1.ContainerEvent) {
	c := e.GetContainer()
	k := container.Key{Namespace: c.GetNamespace(), ID: c.GetId()}
	if e.GetType() == vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_REMOVED {
		delete(n.containers, k)
		delete(n.samples, k)
	} else {
		n.containers[k] = c
	}
	n.version++
}

// applyNetworkEvent updates one link in the stored namespaces. The stored
// namespace is replaced by a modified copy: readers may hold the old one.
func (n *node) applyNetworkEvent(e *vigilv1.NetworkEvent) {
	ifc := e.GetInterface()
	at := -1
	for i, ns := range n.network {
		if (ifc.GetNetnsInode() == 0 && ns.GetHost()) || (ifc.GetNetnsInode() != 0 && ns.GetInode() == ifc.GetNetnsInode()) {
			at = i
			break
		}
	}
	if at < 0 {
		return // a namespace not read yet: the next NetworkSamples brings it
	}
	ns := proto.Clone(n.network[at]).(*vigilv1.NetworkNamespace)
	ifaces := ns.GetInterfaces()[:0]
	for _, old := range ns.GetInterfaces() {
		if old.GetIndex() != ifc.GetIndex() {
			ifaces = append(ifaces, old)
		}
	}
	if e.GetType() != vigilv1.NetworkEventType_NETWORK_EVENT_TYPE_LINK_REMOVED {
		ifaces = append(ifaces, ifc)
	}
	ns.Interfaces = ifaces
	network := slices.Clone(n.network)
	network[at] = ns
	n.network = network
	n.version++
}

// sweep marks silent connected nodes stale and forgets nodes down for longer
// than forgetAfter. It returns the names forgotten.
func (f *Fleet) sweep(now time.Time, staleAfter, forgetAfter time.Duration) []string {
	var forget []string
	for _, n := range f.list() {
		n.mu.Lock()
		switch n.state {
		case vigilv1.NodeState_NODE_STATE_UP:
			if now.Sub(n.lastSeen) > staleAfter {
				n.setState(vigilv1.NodeState_NODE_STATE_STALE)
			}
		case vigilv1.NodeState_NODE_STATE_DOWN:
			if now.Sub(n.downSince) > forgetAfter {
				forget = append(forget, n.name)
			}
		}
		n.mu.Unlock()
	}
	if len(forget) == 0 {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var gone []string
	for _, name := range forget {
		n := f.nodes[name]
		if n == nil {
			continue
		}
		n.mu.Lock()
		stillDown := n.state == vigilv1.NodeState_NODE_STATE_DOWN && now.Sub(n.downSince) > forgetAfter
		n.mu.Unlock()
		if stillDown {
			delete(f.nodes, name)
			gone = append(gone, name)
		}
	}
	return gone
}

// rendered returns the node's series, rendering them if the node changed
// since they were last rendered. Safe for concurrent use; the node's lock is
// held only to copy pointers.
func (n *node) rendered() *metrics.Rendered {
	n.mu.Lock()
	v := n.version
	if c := n.cache.Load(); c != nil && c.version == v {
		n.mu.Unlock()
		return c.r
	}
	in := metrics.NodeInput{
		Name:       n.name,
		Up:         n.state == vigilv1.NodeState_NODE_STATE_UP,
		Containers: make([]*vigilv1.Container, 0, len(n.containers)),
		Samples:    make(map[container.Key]*vigilv1.ResourceSample, len(n.samples)),
		Network:    n.network,
		Peers:      n.peers,
		Condition:  n.condition,
		Status:     n.status,
	}
	for _, c := range n.containers {
		in.Containers = append(in.Containers, c)
	}
	for k, s := range n.samples {
		in.Samples[k] = s
	}
	n.mu.Unlock()

	r := metrics.RenderNode(in)
	next := &renderedNode{version: v, r: r}
	for {
		cur := n.cache.Load()
		if cur != nil && cur.version >= v {
			return r
		}
		if n.cache.CompareAndSwap(cur, next) {
			return r
		}
	}
}

// nodeProto returns the API view of a node.
func (n *node) nodeProto() *vigilv1.Node {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := &vigilv1.Node{
		Name:           n.name,
		AgentVersion:   n.agentVersion,
		BootId:         n.bootID,
		State:          n.state,
		ContainerCount: uint32(len(n.containers)),
		Capabilities:   n.capabilities,
		PeerView:       n.peers,
	}
	if !n.lastSeen.IsZero() {
		out.LastSeen = timestamppb.New(n.lastSeen)
	}
	if !n.connectedSince.IsZero() {
		out.ConnectedSince = timestamppb.New(n.connectedSince)
	}
	out.Condition, out.ConditionReason = n.condition, n.conditionReason
	if !n.conditionSince.IsZero() {
		out.ConditionSince = timestamppb.New(n.conditionSince)
	}
	if s := n.status; s != nil {
		out.RuntimeVersion = s.GetRuntimeVersion()
		out.RuntimeAvailable = s.GetRuntimeAvailable()
		out.AgentStatus = s.GetAgent()
	}
	return out
}

// Nodes returns every node the fleet knows, sorted by name. The messages
// share immutable parts with the fleet: callers must not modify them.
func (f *Fleet) Nodes() []*vigilv1.Node {
	nodes := f.list()
	out := make([]*vigilv1.Node, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, n.nodeProto())
	}
	return out
}

// Containers returns the containers matching q, sorted by node, namespace
// and id. The messages are shared with the fleet: callers must not modify
// them.
func (f *Fleet) Containers(q *vigilv1.ListContainersRequest) []*vigilv1.NodeContainer {
	var out []*vigilv1.NodeContainer
	for _, n := range f.list() {
		if q.GetNode() != "" && q.GetNode() != n.name {
			continue
		}
		n.mu.Lock()
		start := len(out)
		for _, c := range n.containers {
			if matches(q, c) {
				out = append(out, &vigilv1.NodeContainer{Node: n.name, Container: c})
			}
		}
		n.mu.Unlock()
		part := out[start:]
		slices.SortFunc(part, func(a, b *vigilv1.NodeContainer) int {
			return cmp.Or(cmp.Compare(a.GetContainer().GetNamespace(), b.GetContainer().GetNamespace()),
				cmp.Compare(a.GetContainer().GetId(), b.GetContainer().GetId()))
		})
	}
	return out
}

func matches(q *vigilv1.ListContainersRequest, c *vigilv1.Container) bool {
	switch {
	case !q.GetIncludeSandboxes() && c.GetPod().GetSandbox():
		return false
	case q.GetNamespace() != "" && q.GetNamespace() != c.GetNamespace():
		return false
	case q.GetPod() != "" && q.GetPod() != c.GetPod().GetName():
		return false
	case q.GetState() != vigilv1.ContainerState_CONTAINER_STATE_UNSPECIFIED && q.GetState() != c.GetState():
		return false
	case q.GetHealth() != vigilv1.HealthStatus_HEALTH_STATUS_UNSPECIFIED && q.GetHealth() != c.GetHealth().GetStatus():
		return false
	}
	return true
}

// Container returns one container, or an error wrapping ErrNotFound.
func (f *Fleet) Container(nodeName, namespace, id string) (*vigilv1.NodeContainer, error) {
	n := f.get(nodeName)
	if n == nil {
		return nil, fmt.Errorf("node %q: %w", nodeName, errdefs.ErrNotFound)
	}
	n.mu.Lock()
	c := n.containers[container.Key{Namespace: namespace, ID: id}]
	n.mu.Unlock()
	if c == nil {
		return nil, fmt.Errorf("container %s/%s on node %q: %w", namespace, id, nodeName, errdefs.ErrNotFound)
	}
	return &vigilv1.NodeContainer{Node: nodeName, Container: c}, nil
}

// CommandResults returns the results a node reported for its last commands,
// one per command id (the latest reported), in the order the commands first
// reported (at most 64), or nil for an unknown node. The messages are shared
// with the fleet: callers must not modify them.
func (f *Fleet) CommandResults(nodeName string) []*vigilv1.CommandResult {
	n := f.get(nodeName)
	if n == nil {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.results)
}

// counts returns the number of nodes by state and of containers, for the
// fleet-level self-metrics.
func (f *Fleet) counts() (byState map[vigilv1.NodeState]int, containers int) {
	byState = make(map[vigilv1.NodeState]int)
	for _, n := range f.list() {
		n.mu.Lock()
		byState[n.state]++
		containers += len(n.containers)
		n.mu.Unlock()
	}
	return byState, containers
}
