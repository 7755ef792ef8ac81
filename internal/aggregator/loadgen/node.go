package loadgen

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// NodeState is one simulated node: four in five application containers are
// pod containers in namespace k8s.io (each pod with its sandbox and its own
// network namespace), the rest plain containers in namespace "default" with
// a network namespace each. Values are deterministic for a seed. Not safe
// for concurrent use.
type NodeState struct {
	node       string
	containers []*vigilv1.Container // apps and sandboxes
	apps       []int                // indexes of application containers
	network    []*vigilv1.NetworkNamespace
	rng        *rand.Rand
	elapsed    time.Duration
	start      time.Time
}

// NewNodeState builds a node with m application containers.
func NewNodeState(node string, m int, seed uint64) *NodeState {
	s := &NodeState{node: node, rng: rand.New(rand.NewPCG(seed, 0x5eed)), start: time.Unix(1_700_000_000, 0)}
	host := &vigilv1.NetworkNamespace{Inode: 4026531840, Host: true, HasDefaultRoute: true}
	host.Interfaces = append(host.Interfaces,
		&vigilv1.Interface{Name: "lo", Index: 1, Kind: "loopback", Mtu: 65536, OperState: vigilv1.LinkOperState_LINK_OPER_STATE_UNKNOWN, AdminUp: true, Carrier: true},
		&vigilv1.Interface{Name: "eth0", Index: 2, Kind: "device", Mtu: 1500, OperState: vigilv1.LinkOperState_LINK_OPER_STATE_UP, AdminUp: true, Carrier: true, Addresses: []string{"10.0.0.1/24"}},
		&vigilv1.Interface{Name: "cni0", Index: 3, Kind: "bridge", Mtu: 1500, OperState: vigilv1.LinkOperState_LINK_OPER_STATE_UP, AdminUp: true, Carrier: true},
	)
	s.network = append(s.network, host)
	for j := range m {
		inode := uint64(4026532000 + j)
		var owner *vigilv1.Container
		if j%5 != 4 {
			podNS := fmt.Sprintf("team-%d", j%3)
			pod := fmt.Sprintf("app-%03d", j)
			uid := longID(node, "uid", j)[:32]
			sandbox := &vigilv1.Container{
				Id: longID(node, "sandbox", j), Namespace: "k8s.io", Image: "registry.k8s.io/pause:3.9",
				Pod:   &vigilv1.PodIdentity{Namespace: podNS, Name: pod, Uid: uid, Sandbox: true},
				State: vigilv1.ContainerState_CONTAINER_STATE_RUNNING, Manager: vigilv1.Manager_MANAGER_KUBELET,
				CreatedAt: timestamppb.New(s.start), StartedAt: timestamppb.New(s.start), NetnsInode: inode,
				Labels: map[string]string{"io.kubernetes.pod.name": pod, "io.kubernetes.pod.namespace": podNS, "io.kubernetes.pod.uid": uid},
			}
			app := &vigilv1.Container{
				Id: longID(node, "app", j), Namespace: "k8s.io", Image: fmt.Sprintf("registry.example/app-%d:1.%d", j%7, j%3),
				Pod:   &vigilv1.PodIdentity{Namespace: podNS, Name: pod, Uid: uid, ContainerName: "main"},
				State: vigilv1.ContainerState_CONTAINER_STATE_RUNNING, Manager: vigilv1.Manager_MANAGER_KUBELET, Pid: uint32(1000 + j),
				CreatedAt: timestamppb.New(s.start), StartedAt: timestamppb.New(s.start), NetnsInode: inode,
				Labels: map[string]string{"io.kubernetes.pod.name": pod, "io.kubernetes.pod.namespace": podNS, "io.kubernetes.container.name": "main"},
				Health: &vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_NONE},
				Counters: &vigilv1.ContainerCounters{Exits: []*vigilv1.ExitCount{
					{Reason: vigilv1.ExitReason_EXIT_REASON_ERROR, Code: 1, Count: uint64(j % 3)},
				}},
			}
			s.containers = append(s.containers, sandbox, app)
			s.apps = append(s.apps, len(s.containers)-1)
			owner = sandbox
		} else {
			app := &vigilv1.Container{
				Id: fmt.Sprintf("svc-%03d", j), Namespace: "default", Image: "docker.io/library/nginx:1.25",
				State: vigilv1.ContainerState_CONTAINER_STATE_RUNNING, Manager: vigilv1.Manager_MANAGER_VIGIL, Pid: uint32(1000 + j),
				CreatedAt: timestamppb.New(s.start), StartedAt: timestamppb.New(s.start), NetnsInode: inode,
				Labels:            map[string]string{"vigil.io/restart-policy": "always", "vigil.io/health-http": "http://:80/"},
				RestartPolicy:     &vigilv1.RestartPolicy{Kind: vigilv1.RestartPolicyKind_RESTART_POLICY_KIND_ALWAYS},
				Health:            &vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_HEALTHY, Probe: "http", Source: "label"},
				Backoff:           &vigilv1.BackoffState{CurrentDelay: durationpb.New(0)},
				Counters:          &vigilv1.ContainerCounters{},
				ExplicitlyStopped: false,
			}
			s.containers = append(s.containers, app)
			s.apps = append(s.apps, len(s.containers)-1)
			owner = app
		}
		ref := &vigilv1.ContainerRef{Namespace: owner.GetNamespace(), Id: owner.GetId()}
		refs := []*vigilv1.ContainerRef{ref}
		if owner.GetPod().GetSandbox() {
			app := s.containers[len(s.containers)-1]
			refs = append(refs, &vigilv1.ContainerRef{Namespace: app.GetNamespace(), Id: app.GetId()})
		}
		host.Interfaces = append(host.Interfaces, &vigilv1.Interface{
			Name: fmt.Sprintf("veth%08x", j), Index: int32(10 + j), Kind: "veth", Mtu: 1500,
			OperState: vigilv1.LinkOperState_LINK_OPER_STATE_UP, AdminUp: true, Carrier: true,
			OwnerNamespace: owner.GetNamespace(), OwnerContainerId: owner.GetId(), PeerIndex: 2,
		})
		s.network = append(s.network, &vigilv1.NetworkNamespace{
			Inode: inode, Containers: refs, HasDefaultRoute: true,
			Interfaces: []*vigilv1.Interface{
				{Name: "lo", Index: 1, Kind: "loopback", Mtu: 65536, OperState: vigilv1.LinkOperState_LINK_OPER_STATE_UNKNOWN, AdminUp: true, Carrier: true, NetnsInode: inode},
				{Name: "eth0", Index: 2, Kind: "veth", Mtu: 1500, OperState: vigilv1.LinkOperState_LINK_OPER_STATE_UP, AdminUp: true, Carrier: true, NetnsInode: inode, PeerIndex: int32(10 + j), Addresses: []string{fmt.Sprintf("10.244.%d.%d/24", j/250, j%250+2)}},
			},
		})
	}
	return s
}

func longID(node, kind string, j int) string {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s/%s/%d", node, kind, j)
	x := h.Sum64()
	return fmt.Sprintf("%016x%016x%016x%016x", x, x^0x9e3779b97f4a7c15, x*31, x^0xdeadbeef)
}

// AppContainers is the number of application containers (sandboxes
// excluded): the containers that carry vigil_container_info.
func (s *NodeState) AppContainers() int { return len(s.apps) }

// Containers is every container, sandboxes included.
func (s *NodeState) Containers() []*vigilv1.Container { return s.containers }

// Snapshot is the node's full state.
func (s *NodeState) Snapshot() *vigilv1.Snapshot {
	return &vigilv1.Snapshot{
		Containers: s.containers,
		Network:    s.Network(),
		Status:     &vigilv1.NodeStatus{RuntimeAvailable: true, RuntimeVersion: "1.6.20", Agent: &vigilv1.AgentStatus{BufferCapacity: 10000}},
	}
}

// Advance moves simulated time on: counters grow.
func (s *NodeState) Advance(d time.Duration) {
	s.elapsed += d
	for _, ns := range s.network {
		for _, ifc := range ns.Interfaces {
			n := uint64(s.rng.IntN(1 << 20))
			ifc.RxBytes += n
			ifc.TxBytes += n / 2
			ifc.RxPackets += n / 900
			ifc.TxPackets += n / 1800
		}
	}
}

// Samples is one resource sample per running application container.
func (s *NodeState) Samples() []*vigilv1.ResourceSample {
	now := timestamppb.New(s.start.Add(s.elapsed))
	secs := s.elapsed.Seconds()
	out := make([]*vigilv1.ResourceSample, 0, len(s.apps))
	for i, idx := range s.apps {
		c := s.containers[idx]
		if c.GetState() != vigilv1.ContainerState_CONTAINER_STATE_RUNNING {
			continue
		}
		f := float64(i%10+1) / 100
		ws := uint64(32<<20 + s.rng.IntN(64<<20))
		out = append(out, &vigilv1.ResourceSample{
			Namespace: c.GetNamespace(), ContainerId: c.GetId(), Timestamp: now,
			CpuUsageSeconds: secs * f, CpuUserSeconds: secs * f * 0.7, CpuSystemSeconds: secs * f * 0.3,
			CpuCfsPeriods: uint64(secs * 10), CpuCfsThrottledSeconds: secs * f / 50,
			MemoryUsageBytes: ws + 16<<20, MemoryWorkingSetBytes: ws, MemoryRssBytes: ws - 8<<20, MemoryCacheBytes: 16 << 20,
			MemoryLimitBytes: 256 << 20, PidsCurrent: uint64(1 + i%20), PidsLimit: 4096,
		})
	}
	return out
}

// Network is the node's namespaces: host first.
func (s *NodeState) Network() []*vigilv1.NetworkNamespace { return s.network }

// Restart simulates one application container exiting with an error and
// being restarted by its owner; it returns the RESTARTED event carrying the
// container's full state with its counters bumped.
func (s *NodeState) Restart() *vigilv1.ContainerEvent {
	if len(s.apps) == 0 {
		return nil
	}
	idx := s.apps[s.rng.IntN(len(s.apps))]
	old := s.containers[idx]
	c := &vigilv1.Container{ // a fresh message: the old one may still be referenced
		Id: old.Id, Namespace: old.Namespace, Pod: old.Pod, Image: old.Image, Labels: old.Labels,
		State: vigilv1.ContainerState_CONTAINER_STATE_RUNNING, Pid: old.Pid + 1, Manager: old.Manager,
		CreatedAt: old.CreatedAt, StartedAt: timestamppb.New(s.start.Add(s.elapsed)), RestartPolicy: old.RestartPolicy,
		RestartCount: old.RestartCount + 1, Health: old.Health, NetnsInode: old.NetnsInode, Backoff: old.Backoff,
		LastExit: &vigilv1.ExitStatus{Code: 1, Reason: vigilv1.ExitReason_EXIT_REASON_ERROR, ExitedAt: timestamppb.New(s.start.Add(s.elapsed))},
		Counters: bumpExit(old.GetCounters()),
	}
	s.containers[idx] = c
	return &vigilv1.ContainerEvent{
		Type: vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_RESTARTED, Time: timestamppb.New(s.start.Add(s.elapsed)),
		Container: c, Exit: c.LastExit, Message: "simulated exit and restart",
	}
}

func bumpExit(old *vigilv1.ContainerCounters) *vigilv1.ContainerCounters {
	out := &vigilv1.ContainerCounters{RestartsTotal: old.GetRestartsTotal() + 1, OomEventsTotal: old.GetOomEventsTotal(), ProbeFailuresTotal: old.GetProbeFailuresTotal()}
	found := false
	for _, e := range old.GetExits() {
		n := &vigilv1.ExitCount{Reason: e.GetReason(), Code: e.GetCode(), Count: e.GetCount()}
		if n.Reason == vigilv1.ExitReason_EXIT_REASON_ERROR && n.Code == 1 {
			n.Count++
			found = true
		}
		out.Exits = append(out.Exits, n)
	}
	if !found {
		out.Exits = append(out.Exits, &vigilv1.ExitCount{Reason: vigilv1.ExitReason_EXIT_REASON_ERROR, Code: 1, Count: 1})
	}
	return out
}
