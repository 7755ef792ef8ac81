package metrics

import (
	"bufio"
	"cmp"
	"hash/fnv"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/vigilhq/vigil/internal/container"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// NodeInput is what RenderNode reads. RenderNode never modifies it and keeps
// no reference to it; the protobuf messages must not change while it runs.
type NodeInput struct {
	// Name is the node name (label node on every series).
	Name string
	// Up is the value of vigil_node_up.
	Up bool
	// Containers are the node's containers, sandboxes included, in any order.
	Containers []*vigilv1.Container
	// Samples are the latest resource samples by container; nil means none.
	// A sample is exposed only while its container is running or paused.
	Samples map[container.Key]*vigilv1.ResourceSample
	// Network is the node's last network read: the host namespace (host =
	// true) and the containers' namespaces.
	Network []*vigilv1.NetworkNamespace
	// Peers is the node's gossip view; nil means none.
	Peers *vigilv1.PeerView
	// Condition is the node's condition (one of NodeConditions, or
	// "Unknown"); "" renders no gossip condition series.
	Condition string
	// Status is the agent's last node status; nil renders
	// RuntimeAvailable as unknown.
	Status *vigilv1.NodeStatus
}

// NodeConditions are the gossip conditions of vigil_node_condition, one
// true at a time ("Unknown" makes each of them unknown).
var NodeConditions = [...]string{"Healthy", "AggregatorPartitioned", "NodeDown", "Isolated"}

// Rendered is one node's series in the text exposition format, grouped by
// metric family. It is immutable and safe for concurrent use.
type Rendered struct {
	buf    []byte
	off    [numFamilies + 1]int
	series int
}

// Series is the number of series (sample lines) rendered.
func (r *Rendered) Series() int { return r.series }

// Size is the number of bytes of sample lines (without HELP/TYPE headers).
func (r *Rendered) Size() int { return len(r.buf) }

func (r *Rendered) part(f int) []byte { return r.buf[r.off[f]:r.off[f+1]] }

// scratch holds one buffer per family while a node is rendered.
type scratch struct {
	parts [numFamilies][]byte
	lines int
	// Kept between renderings so that one allocates little.
	known   map[container.Key]*vigilv1.Container
	seen    map[identity]bool
	entries []nsEntry
	ifaces  []*vigilv1.Interface
	lb, il  []byte // label buffers: identity, identity and interface
}

type nsEntry struct {
	id identity
	ns *vigilv1.NetworkNamespace
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// RenderNode renders one node's series. It is safe to call concurrently and
// costs a few hundred nanoseconds per series; the result is meant to be kept
// until the node changes.
func RenderNode(in NodeInput) *Rendered {
	s := scratchPool.Get().(*scratch)
	for i := range s.parts {
		s.parts[i] = s.parts[i][:0]
	}
	s.lines = 0
	s.render(in)

	r := &Rendered{series: s.lines}
	total := 0
	for _, p := range s.parts {
		total += len(p)
	}
	r.buf = make([]byte, 0, total)
	for i, p := range s.parts {
		r.off[i] = len(r.buf)
		r.buf = append(r.buf, p...)
	}
	r.off[numFamilies] = len(r.buf)
	scratchPool.Put(s)
	return r
}

// WriteFamilies writes the series of nodes as one exposition in the text
// format (version 0.0.4): for each family that has series, its HELP and TYPE
// lines once, then the lines of every node in the order given. nil entries
// are skipped. It returns the number of bytes written and the first write
// error.
func WriteFamilies(w io.Writer, nodes []*Rendered) (int64, error) {
	bw, ok := w.(*bufio.Writer)
	if !ok {
		bw = bufio.NewWriterSize(w, 64<<10)
	}
	var n int64
	for f := range numFamilies {
		header := false
		for _, r := range nodes {
			if r == nil {
				continue
			}
			p := r.part(f)
			if len(p) == 0 {
				continue
			}
			if !header {
				header = true
				m, err := writeHeader(bw, f)
				n += int64(m)
				if err != nil {
					return n, err
				}
			}
			m, err := bw.Write(p)
			n += int64(m)
			if err != nil {
				return n, err
			}
		}
	}
	return n, bw.Flush()
}

func writeHeader(w *bufio.Writer, f int) (int, error) {
	fam := families[f]
	n := 0
	for _, p := range [...]string{"# HELP ", fam.name, " ", fam.help, "\n# TYPE ", fam.name, " ", fam.typ, "\n"} {
		m, err := w.WriteString(p)
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// WriteNode renders one node and writes it as a complete exposition; this is
// the agent's local /metrics for its own node.
func WriteNode(w io.Writer, in NodeInput) error {
	_, err := WriteFamilies(w, []*Rendered{RenderNode(in)})
	return err
}

// ShardOf returns the shard (0..shards-1) of a node: the 64-bit FNV-1a hash
// of its name modulo shards. shards < 2 always gives 0.
func ShardOf(node string, shards int) int {
	if shards < 2 {
		return 0
	}
	return int(NodeHash(node) % uint64(shards))
}

// NodeHash is the 64-bit FNV-1a hash of a node name that ShardOf uses.
func NodeHash(node string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(node))
	return h.Sum64()
}

// identity is the label identity of a container's series.
type identity struct {
	namespace, podNamespace, pod, container string
}

func identityOf(c *vigilv1.Container) identity {
	if p := c.GetPod(); p != nil && (p.GetName() != "" || p.GetSandbox()) {
		return identity{shown(c.GetNamespace()), shown(p.GetNamespace()), shown(p.GetName()), shown(p.GetContainerName())}
	}
	return identity{shown(c.GetNamespace()), "", "", shown(c.GetId())}
}

// shown is a label value as the exposition shows it (invalid UTF-8
// replaced). Series are deduplicated on shown values: two raw values that
// show the same would be one series twice.
func shown(v string) string {
	if utf8.ValidString(v) {
		return v
	}
	return strings.ToValidUTF8(v, "\uFFFD")
}

func isSandbox(c *vigilv1.Container) bool { return c.GetPod().GetSandbox() }

func isActive(c *vigilv1.Container) bool {
	s := c.GetState()
	return s == vigilv1.ContainerState_CONTAINER_STATE_RUNNING || s == vigilv1.ContainerState_CONTAINER_STATE_PAUSED
}

// better reports whether a should represent an identity rather than b: the
// kubelet keeps a pod's dead container beside its replacement, both with the
// same container name, and only one may carry the series.
func better(a, b *vigilv1.Container) bool {
	if isActive(a) != isActive(b) {
		return isActive(a)
	}
	ta, tb := a.GetCreatedAt().AsTime(), b.GetCreatedAt().AsTime()
	if !ta.Equal(tb) {
		return ta.After(tb)
	}
	return a.GetId() > b.GetId()
}

type chosen struct {
	id     identity
	c      *vigilv1.Container
	labels []byte // node="..",namespace="..",pod_namespace="..",pod="..",container=".."
}

func (s *scratch) render(in NodeInput) {
	node := appendLabelValue(nil, in.Name)

	// One container per identity, sandboxes excluded.
	byID := make(map[identity]*vigilv1.Container, len(in.Containers))
	for _, c := range in.Containers {
		if c == nil || isSandbox(c) {
			continue
		}
		id := identityOf(c)
		if cur, ok := byID[id]; !ok || better(c, cur) {
			byID[id] = c
		}
	}
	list := make([]chosen, 0, len(byID))
	for id, c := range byID {
		list = append(list, chosen{id: id, c: c})
	}
	slices.SortFunc(list, func(a, b chosen) int { return compareIdentity(a.id, b.id) })

	for i := range list {
		ch := &list[i]
		ch.labels = appendIdentityLabels(nil, node, ch.id)
		s.container(ch, in.Samples[container.Key{Namespace: ch.c.GetNamespace(), ID: ch.c.GetId()}])
	}

	s.containerNetwork(in, node)
	s.nodeSeries(in, node)
}

func compareIdentity(a, b identity) int {
	return cmp.Or(
		cmp.Compare(a.namespace, b.namespace),
		cmp.Compare(a.podNamespace, b.podNamespace),
		cmp.Compare(a.pod, b.pod),
		cmp.Compare(a.container, b.container),
	)
}

func appendIdentityLabels(b, node []byte, id identity) []byte {
	b = append(b, `node="`...)
	b = append(b, node...)
	b = append(b, `",namespace="`...)
	b = appendLabelValue(b, id.namespace)
	b = append(b, `",pod_namespace="`...)
	b = appendLabelValue(b, id.podNamespace)
	b = append(b, `",pod="`...)
	b = appendLabelValue(b, id.pod)
	b = append(b, `",container="`...)
	b = appendLabelValue(b, id.container)
	b = append(b, '"')
	return b
}

// container renders one container's series; sm is its latest sample (nil
// for none), exposed only while the container is running or paused.
func (s *scratch) container(ch *chosen, sm *vigilv1.ResourceSample) {
	c := ch.c
	l := ch.labels

	// vigil_container_info carries the two labels no other series has.
	b := s.begin(famContainerInfo, l)
	b = append(b, `,container_id="`...)
	b = appendLabelValue(b, c.GetId())
	b = append(b, `",image="`...)
	b = appendLabelValue(b, c.GetImage())
	b = append(b, `",image_id="`...)
	b = appendLabelValue(b, c.GetImageDigest())
	b = append(b, `"} 1`...)
	s.end(famContainerInfo, b)

	s.gauge(famContainerRunning, l, boolValue(isActive(c)))

	if sm != nil && isActive(c) {
		s.resources(l, sm)
	}

	counters := c.GetCounters()
	s.uint(famOOM, l, counters.GetOomEventsTotal())
	exits := slices.Clone(counters.GetExits())
	slices.SortFunc(exits, func(a, b *vigilv1.ExitCount) int {
		return cmp.Or(cmp.Compare(exitReason(a.GetReason()), exitReason(b.GetReason())), cmp.Compare(a.GetCode(), b.GetCode()))
	})
	// Entries are merged on what the series shows, (reason label, code),
	// summing their counts: UNSPECIFIED and unknown reasons both render
	// "unknown", and two entries with one key would be a duplicate series.
	for i := 0; i < len(exits); {
		reason, code, count := exitReason(exits[i].GetReason()), exits[i].GetCode(), exits[i].GetCount()
		for i++; i < len(exits) && exitReason(exits[i].GetReason()) == reason && exits[i].GetCode() == code; i++ {
			count += exits[i].GetCount()
		}
		b := s.begin(famExits, l)
		b = append(b, `,reason="`...)
		b = append(b, reason...)
		b = append(b, `",exit_code="`...)
		b = strconv.AppendUint(b, uint64(code), 10)
		b = append(b, `"} `...)
		b = strconv.AppendUint(b, count, 10)
		s.end(famExits, b)
	}
	s.uint(famRestarts, l, counters.GetRestartsTotal())
	s.float(famBackoff, l, c.GetBackoff().GetCurrentDelay().AsDuration().Seconds())
	s.gauge(famCrashLooping, l, boolValue(c.GetBackoff().GetCrashLooping()))
	s.gauge(famGaveUp, l, boolValue(c.GetBackoff().GetGaveUp()))
	if e := c.GetLastExit(); e != nil {
		b := s.begin(famLastTerminated, l)
		b = append(b, `,reason="`...)
		b = append(b, exitReason(e.GetReason())...)
		b = append(b, `"} 1`...)
		s.end(famLastTerminated, b)
	}

	// One series per status, the current one 1, for a container with a
	// health check; none for one without (four series of zeros would be
	// most of a plain container's budget, and say nothing).
	current := healthStatus(c.GetHealth().GetStatus())
	for _, st := range healthStatuses {
		if current == "none" || current == "" { // no check, or a status this build does not know
			break
		}
		b := s.begin(famHealth, l)
		b = append(b, `,status="`...)
		b = append(b, st...)
		b = append(b, `"} `...)
		b = append(b, boolValue(st == current)...)
		s.end(famHealth, b)
	}
	// What an unhealthy status is blamed on, when not on the container: a
	// series only while it holds, as the network conditions (a container
	// whose health is its own pays nothing for it).
	if blame, ok := healthBlames[c.GetHealth().GetBlame()]; ok && current == "unhealthy" {
		b := s.begin(famHealthBlame, l)
		b = append(b, `,blame="`...)
		b = append(b, blame...)
		b = append(b, `"} 1`...)
		s.end(famHealthBlame, b)
	}
	s.uint(famProbeFailures, l, counters.GetProbeFailuresTotal())
}

// resources renders a running container's resource sample. To stay
// within the series budget (docs/benchmarks.md), a series that would only
// repeat a default is left out: the CFS series and the CPU quota and period
// only while the cgroup has a quota, shares only when not the default,
// failcnt only under a memory limit, swap, reservation, memory events and
// the pids limit only when non-zero, and the four block I/O series only
// once the cgroup did block I/O.
func (s *scratch) resources(l []byte, sm *vigilv1.ResourceSample) {
	s.float(famCPUUsage, l, sm.GetCpuUsageSeconds())
	s.float(famCPUThrottled, l, sm.GetCpuCfsThrottledSeconds())
	if q := sm.GetCpuCfsQuotaUs(); q > 0 {
		s.uint(famCPUPeriods, l, sm.GetCpuCfsPeriods())
		s.uint(famCPUThrottledPeriods, l, sm.GetCpuCfsThrottledPeriods())
		s.float(famSpecCPUQuota, l, float64(q)/1e6)
		s.float(famSpecCPUPeriod, l, float64(sm.GetCpuCfsPeriodUs())/1e6)
	}
	if v := sm.GetCpuShares(); v > 0 {
		s.uint(famSpecCPUShares, l, v)
	}
	s.uint(famMemWorkingSet, l, sm.GetMemoryWorkingSetBytes())
	s.uint(famMemRSS, l, sm.GetMemoryRssBytes())
	s.uint(famMemCache, l, sm.GetMemoryCacheBytes())
	if v := sm.GetMemorySwapBytes(); v > 0 {
		s.uint(famMemSwap, l, v)
	}
	s.uint(famMemLimit, l, sm.GetMemoryLimitBytes())
	if v := sm.GetMemoryReservationBytes(); v > 0 {
		s.uint(famSpecMemReservation, l, v)
	}
	if sm.GetMemoryLimitBytes() > 0 {
		s.uint(famMemFailcnt, l, sm.GetMemoryFailcnt())
	}
	for _, ev := range [...]struct {
		name string
		n    uint64
	}{{"high", sm.GetMemoryHighEvents()}, {"oom", sm.GetMemoryOomEvents()}} {
		if ev.n == 0 {
			continue
		}
		b := s.begin(famMemEvents, l)
		b = append(b, `,event="`...)
		b = append(b, ev.name...)
		b = append(b, `"} `...)
		b = strconv.AppendUint(b, ev.n, 10)
		s.end(famMemEvents, b)
	}
	s.uint(famPids, l, sm.GetPidsCurrent())
	if v := sm.GetPidsLimit(); v > 0 {
		s.uint(famPidsLimit, l, v)
	}
	if v := sm.GetFsUsageBytes(); v > 0 {
		s.uint(famFsUsage, l, v)
	}
	if sm.GetBlkioReadBytes()|sm.GetBlkioWriteBytes()|sm.GetBlkioReadOps()|sm.GetBlkioWriteOps() != 0 {
		s.uint(famFsReadBytes, l, sm.GetBlkioReadBytes())
		s.uint(famFsWriteBytes, l, sm.GetBlkioWriteBytes())
		s.uint(famFsReads, l, sm.GetBlkioReadOps())
		s.uint(famFsWrites, l, sm.GetBlkioWriteOps())
	}
}

// containerNetwork renders the interfaces of every container network
// namespace, labelled with the pod (container="") or the lone container.
func (s *scratch) containerNetwork(in NodeInput, node []byte) {
	if len(in.Network) == 0 {
		return
	}
	if s.known == nil {
		s.known = make(map[container.Key]*vigilv1.Container, len(in.Containers))
		s.seen = make(map[identity]bool)
	}
	clear(s.known)
	clear(s.seen)
	known, seen := s.known, s.seen
	for _, c := range in.Containers {
		if c != nil {
			known[container.Key{Namespace: c.GetNamespace(), ID: c.GetId()}] = c
		}
	}
	entries := s.entries[:0]
	for _, ns := range in.Network {
		if ns == nil || ns.GetHost() {
			continue
		}
		id, ok := networkOwner(ns, known)
		if !ok || seen[id] {
			continue
		}
		seen[id] = true
		entries = append(entries, nsEntry{id, ns})
	}
	s.entries = entries
	slices.SortFunc(entries, func(a, b nsEntry) int { return compareIdentity(a.id, b.id) })
	for _, e := range entries {
		s.lb = appendIdentityLabels(s.lb[:0], node, e.id)
		labels := s.lb
		s.ifaces = sortedInterfaces(s.ifaces[:0], e.ns.GetInterfaces())
		ifaces := s.ifaces
		for i, ifc := range ifaces {
			if ifc.GetKind() == "loopback" || ifc.GetName() == "lo" {
				continue
			}
			if i > 0 && shown(ifaces[i-1].GetName()) == shown(ifc.GetName()) {
				continue
			}
			l := append(s.il[:0], labels...)
			l = append(l, `,interface="`...)
			l = appendLabelValue(l, ifc.GetName())
			l = append(l, '"')
			s.il = l
			s.uint(famNetRxBytes, l, ifc.GetRxBytes())
			s.uint(famNetRxPackets, l, ifc.GetRxPackets())
			s.uint(famNetRxErrors, l, ifc.GetRxErrors())
			s.uint(famNetRxDropped, l, ifc.GetRxDropped())
			s.uint(famNetTxBytes, l, ifc.GetTxBytes())
			s.uint(famNetTxPackets, l, ifc.GetTxPackets())
			s.uint(famNetTxErrors, l, ifc.GetTxErrors())
			s.uint(famNetTxDropped, l, ifc.GetTxDropped())
		}
		s.networkConditions(famNetCondition, labels, e.ns.GetConditions())
	}
}

// networkConditions renders the conditions that hold in one namespace, one
// series per (interface, condition), status="true" only: a condition that
// does not hold has no series, which keeps a container within its budget.
func (s *scratch) networkConditions(f int, labels []byte, conds []*vigilv1.Condition) {
	type key struct{ iface, name string }
	keys := make([]key, 0, len(conds))
	for _, c := range conds {
		name, ok := conditionNames[c.GetType()]
		if !ok {
			continue
		}
		keys = append(keys, key{shown(c.GetInterface()), name})
	}
	if len(keys) == 0 {
		return
	}
	slices.SortFunc(keys, func(a, b key) int { return cmp.Or(cmp.Compare(a.iface, b.iface), cmp.Compare(a.name, b.name)) })
	keys = slices.Compact(keys)
	for _, k := range keys {
		b := s.begin(f, labels)
		b = append(b, `,interface="`...)
		b = appendLabelValue(b, k.iface)
		b = append(b, `",condition="`...)
		b = append(b, k.name...)
		b = append(b, `",status="true"} 1`...)
		s.end(f, b)
	}
}

// networkOwner names whose network a namespace is: the pod of any pod
// container in it (container=""), else its first non-pod container by id.
func networkOwner(ns *vigilv1.NetworkNamespace, known map[container.Key]*vigilv1.Container) (identity, bool) {
	var lone *vigilv1.Container
	for _, ref := range ns.GetContainers() {
		c := known[container.Key{Namespace: ref.GetNamespace(), ID: ref.GetId()}]
		if c == nil {
			continue
		}
		if p := c.GetPod(); p != nil && p.GetName() != "" {
			return identity{shown(c.GetNamespace()), shown(p.GetNamespace()), shown(p.GetName()), ""}, true
		}
		if c.GetHostNetwork() {
			continue
		}
		if lone == nil || c.GetId() < lone.GetId() {
			lone = c
		}
	}
	if lone == nil {
		return identity{}, false
	}
	return identity{shown(lone.GetNamespace()), "", "", shown(lone.GetId())}, true
}

// sortedInterfaces appends the named interfaces of in to out, sorted by
// name as shown.
func sortedInterfaces(out, in []*vigilv1.Interface) []*vigilv1.Interface {
	for _, ifc := range in {
		if ifc != nil && ifc.GetName() != "" {
			out = append(out, ifc)
		}
	}
	slices.SortFunc(out, func(a, b *vigilv1.Interface) int { return cmp.Compare(shown(a.GetName()), shown(b.GetName())) })
	return out
}

func (s *scratch) nodeSeries(in NodeInput, node []byte) {
	nl := append([]byte(`node="`), node...)
	nl = append(nl, '"')
	s.gauge(famNodeUp, nl, boolValue(in.Up))

	for _, ns := range in.Network {
		if ns == nil || !ns.GetHost() {
			continue
		}
		ifaces := sortedInterfaces(nil, ns.GetInterfaces())
		for i, ifc := range ifaces {
			if ifc.GetOwnerContainerId() != "" {
				continue // a container's veth: counted inside the container
			}
			if i > 0 && shown(ifaces[i-1].GetName()) == shown(ifc.GetName()) {
				continue
			}
			l := append(slices.Clone(nl), `,interface="`...)
			l = appendLabelValue(l, ifc.GetName())
			l = append(l, '"')
			s.uint(famNodeNetRxBytes, l, ifc.GetRxBytes())
			s.uint(famNodeNetRxPackets, l, ifc.GetRxPackets())
			s.uint(famNodeNetRxErrors, l, ifc.GetRxErrors())
			s.uint(famNodeNetRxDropped, l, ifc.GetRxDropped())
			s.uint(famNodeNetTxBytes, l, ifc.GetTxBytes())
			s.uint(famNodeNetTxPackets, l, ifc.GetTxPackets())
			s.uint(famNodeNetTxErrors, l, ifc.GetTxErrors())
			s.uint(famNodeNetTxDropped, l, ifc.GetTxDropped())
			s.gauge(famNodeNetUp, l, boolValue(linkUp(ifc)))
			s.uint(famNodeNetCarrierChanges, l, ifc.GetCarrierChanges())
		}
		s.networkConditions(famNodeNetCondition, nl, ns.GetConditions())
		break // one host namespace
	}

	peers := slices.Clone(in.Peers.GetPeers())
	slices.SortFunc(peers, func(a, b *vigilv1.PeerStatus) int { return cmp.Compare(shown(a.GetName()), shown(b.GetName())) })
	for i, p := range peers {
		if p.GetName() == "" || (i > 0 && shown(peers[i-1].GetName()) == shown(p.GetName())) {
			continue
		}
		l := append(slices.Clone(nl), `,peer="`...)
		l = appendLabelValue(l, p.GetName())
		l = append(l, '"')
		s.gauge(famNodePeerReachable, l, boolValue(p.GetState() == vigilv1.PeerState_PEER_STATE_ALIVE))
	}

	// Conditions, kube-state-metrics style: three series per condition,
	// the current status 1.
	condition := func(name, status string) {
		for _, st := range [...]string{"true", "false", "unknown"} {
			l := append(slices.Clone(nl), `,condition="`...)
			l = append(l, name...)
			l = append(l, `",status="`...)
			l = append(l, st...)
			l = append(l, '"')
			s.gauge(famNodeCondition, l, boolValue(st == status))
		}
	}
	if in.Condition != "" {
		for _, c := range NodeConditions {
			switch {
			case in.Condition == c:
				condition(c, "true")
			case in.Condition == "Unknown":
				condition(c, "unknown")
			default:
				condition(c, "false")
			}
		}
	}
	s.agentStatus(nl, in.Status.GetAgent())
	switch {
	case in.Status == nil:
		condition("RuntimeAvailable", "unknown")
	case in.Status.GetRuntimeAvailable():
		condition("RuntimeAvailable", "true")
	default:
		condition("RuntimeAvailable", "false")
	}
	switch {
	case in.Status.GetAgent() == nil:
		condition("RuntimeHung", "unknown")
	case in.Status.GetAgent().GetRuntimeHung():
		condition("RuntimeHung", "true")
	default:
		condition("RuntimeHung", "false")
	}
}

// agentStatus renders the node agent's own health and loss counters as it
// last reported them (NodeStatus.agent); nothing before its first report.
func (s *scratch) agentStatus(nl []byte, a *vigilv1.AgentStatus) {
	if a == nil {
		return
	}
	s.uint(famNodeAgentBuffered, nl, uint64(a.GetBufferedMessages()))
	s.uint(famNodeAgentBufferCapacity, nl, uint64(a.GetBufferCapacity()))
	s.uint(famNodeAgentDropped, nl, a.GetBufferDroppedTotal())
	s.uint(famNodeAgentReconnects, nl, a.GetReconnectsTotal())
	s.uint(famNodeAgentStateWriteFailures, nl, a.GetStateWriteFailuresTotal())
	if from := a.GetStateRecoveredFrom(); slices.Contains(stateRecoveredFrom[:], from) {
		b := s.begin(famNodeAgentStateRecovered, nl)
		b = append(b, `,from="`...)
		b = append(b, from...)
		b = append(b, `"} 1`...)
		s.end(famNodeAgentStateRecovered, b)
	}
	s.float(famNodeAgentCPU, nl, a.GetCpuSeconds())
	s.uint(famNodeAgentRSS, nl, a.GetRssBytes())
	if d := a.GetRuntimeLatency(); d != nil {
		s.float(famNodeAgentRuntimeLatency, nl, d.AsDuration().Seconds())
	}
	s.uint(famNodeAgentRuntimeRecoveries, nl, a.GetRuntimeReconnectsTotal())
	if d := a.GetLastCollectionDuration(); d != nil {
		s.float(famNodeAgentCollectionDuration, nl, d.AsDuration().Seconds())
	}
	s.uint(famNodeAgentNetnsHandles, nl, uint64(a.GetNetnsHandles()))
}

// linkUp follows node_exporter's node_network_up (operstate "up"), and
// counts as up a virtual link that reports "unknown" while administratively
// up with carrier (loopback, tun).
func linkUp(ifc *vigilv1.Interface) bool {
	switch ifc.GetOperState() {
	case vigilv1.LinkOperState_LINK_OPER_STATE_UP:
		return true
	case vigilv1.LinkOperState_LINK_OPER_STATE_UNKNOWN:
		return ifc.GetAdminUp() && ifc.GetCarrier()
	}
	return false
}

func (s *scratch) begin(f int, labels []byte) []byte {
	b := s.parts[f]
	b = append(b, families[f].name...)
	b = append(b, '{')
	return append(b, labels...)
}

func (s *scratch) end(f int, b []byte) {
	s.parts[f] = append(b, '\n')
	s.lines++
}

func (s *scratch) gauge(f int, labels []byte, v string) {
	b := s.begin(f, labels)
	b = append(b, "} "...)
	b = append(b, v...)
	s.end(f, b)
}

func (s *scratch) uint(f int, labels []byte, v uint64) {
	b := s.begin(f, labels)
	b = append(b, "} "...)
	b = strconv.AppendUint(b, v, 10)
	s.end(f, b)
}

func (s *scratch) float(f int, labels []byte, v float64) {
	b := s.begin(f, labels)
	b = append(b, "} "...)
	b = appendFloat(b, v)
	s.end(f, b)
}

func appendFloat(b []byte, v float64) []byte {
	switch {
	case math.IsNaN(v):
		return append(b, "NaN"...)
	case math.IsInf(v, 1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}

func boolValue(v bool) string {
	if v {
		return "1"
	}
	return "0"
}

// appendLabelValue escapes a label value for the text format: backslash,
// double quote and line feed. Invalid UTF-8 (which would fail the whole
// scrape) becomes U+FFFD.
func appendLabelValue(b []byte, v string) []byte {
	v = shown(v)
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '\\':
			b = append(b, `\\`...)
		case '"':
			b = append(b, `\"`...)
		case '\n':
			b = append(b, `\n`...)
		default:
			b = append(b, c)
		}
	}
	return b
}

func exitReason(r vigilv1.ExitReason) string {
	switch r {
	case vigilv1.ExitReason_EXIT_REASON_COMPLETED:
		return "completed"
	case vigilv1.ExitReason_EXIT_REASON_ERROR:
		return "error"
	case vigilv1.ExitReason_EXIT_REASON_SIGNAL:
		return "signal"
	case vigilv1.ExitReason_EXIT_REASON_OOM_KILLED:
		return "oom_killed"
	}
	return "unknown"
}

func healthStatus(h vigilv1.HealthStatus) string {
	switch h {
	case vigilv1.HealthStatus_HEALTH_STATUS_NONE:
		return "none"
	case vigilv1.HealthStatus_HEALTH_STATUS_STARTING:
		return "starting"
	case vigilv1.HealthStatus_HEALTH_STATUS_HEALTHY:
		return "healthy"
	case vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY:
		return "unhealthy"
	}
	return "" // unknown: every status series is 0
}
