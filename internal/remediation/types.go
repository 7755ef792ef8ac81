package remediation

import (
	"fmt"
	"strings"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// Action is what a remediation does to its target.
type Action int

const (
	// ActionRestart restarts a container. For a container another manager
	// owns (kubelet, dockerd, containerd's restart monitor) the command is a
	// kill: its owner restarts it, and Vigil never fights the owner.
	ActionRestart Action = iota + 1
	// ActionStop stops a container and marks the stop explicit, so that no
	// restart policy brings it back: it is left to a human.
	ActionStop
	// ActionKill sends a signal (SIGKILL unless a rule says otherwise) to
	// the container's task.
	ActionKill
	// ActionLinkUp sets a link up, in a container's network namespace or,
	// where a rule allows it, on the host.
	ActionLinkUp
	// ActionStart starts a stopped container and clears an explicit stop
	// (an operator's, or a stop_container's), as docker start does; a
	// running one is left alone. Only for containers Vigil restarts.
	ActionStart
)

var actionNames = map[Action]string{
	ActionRestart: "restart_container",
	ActionStop:    "stop_container",
	ActionKill:    "kill_container",
	ActionLinkUp:  "set_link_up",
	ActionStart:   "start_container",
}

// Actions lists every action, in order.
var Actions = []Action{ActionRestart, ActionStop, ActionKill, ActionLinkUp, ActionStart}

// String is the action's name in rules, the journal and metric labels.
func (a Action) String() string {
	if s, ok := actionNames[a]; ok {
		return s
	}
	return fmt.Sprintf("action(%d)", int(a))
}

// ParseAction parses an action's name (restart_container, stop_container,
// kill_container, set_link_up, start_container).
func ParseAction(s string) (Action, error) {
	for _, a := range Actions {
		if actionNames[a] == s {
			return a, nil
		}
	}
	return 0, fmt.Errorf("unknown action %q (known: restart_container, stop_container, kill_container, set_link_up, start_container): %w", clip(s), errdefs.ErrInvalid)
}

// MarshalText writes the action's name (JSON of journal records).
func (a Action) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// UnmarshalText parses an action's name.
func (a *Action) UnmarshalText(b []byte) error {
	v, err := ParseAction(string(b))
	if err != nil {
		return err
	}
	*a = v
	return nil
}

func (a Action) onContainer() bool { return a != ActionLinkUp }

// endsTask: the action ends the container's running task (a restart, or a
// kill that its owner follows with one).
func (a Action) endsTask() bool { return a == ActionRestart || a == ActionStop || a == ActionKill }

// Owner is who restarts a container when its task ends.
type Owner string

const (
	// OwnerUnknown: the fleet does not say (treated as another manager's:
	// the engine never does more than a kill to it).
	OwnerUnknown Owner = ""
	// OwnerVigil: the agent enforces the container's restart policy.
	OwnerVigil Owner = "vigil"
	// OwnerKubelet: a Kubernetes pod's container (CRI, namespace k8s.io).
	OwnerKubelet Owner = "kubelet"
	// OwnerDocker: dockerd's container (namespace moby).
	OwnerDocker Owner = "dockerd"
	// OwnerContainerd: containerd's restart monitor (containerd.io/restart.* labels).
	OwnerContainerd Owner = "containerd-monitor"
)

// Owners lists every owner, in order.
var Owners = []Owner{OwnerUnknown, OwnerVigil, OwnerKubelet, OwnerDocker, OwnerContainerd}

// TargetRef names a target as an alert's labels (or an operator) do: a
// node, and a container by containerd namespace and id or by pod namespace,
// pod and container name; Interface for links (with a container: its
// network namespace's link; without: the host's).
type TargetRef struct {
	Node         string `json:"node"`
	Namespace    string `json:"namespace,omitempty"`
	Container    string `json:"container,omitempty"` // containerd id, or the container's name in Pod
	PodNamespace string `json:"pod_namespace,omitempty"`
	Pod          string `json:"pod,omitempty"`
	Interface    string `json:"interface,omitempty"`
}

// String is a readable form for messages: node/namespace/container,
// node/pod_namespace/pod/container, with %interface for links.
func (r TargetRef) String() string {
	var b strings.Builder
	b.WriteString(r.Node)
	switch {
	case r.Pod != "":
		fmt.Fprintf(&b, "/%s/%s/%s", r.PodNamespace, r.Pod, r.Container)
	case r.Container != "":
		fmt.Fprintf(&b, "/%s/%s", r.Namespace, r.Container)
	}
	if r.Interface != "" {
		fmt.Fprintf(&b, "%%%s", r.Interface)
	}
	return b.String()
}

// Target is a resolved target: what a command acts on.
type Target struct {
	Node        string `json:"node"`
	Namespace   string `json:"namespace,omitempty"`
	ContainerID string `json:"container_id,omitempty"`
	// Interface and NetnsInode (0: the host) for set_link_up.
	Interface  string `json:"interface,omitempty"`
	NetnsInode uint64 `json:"netns_inode,omitempty"`
	// PodNamespace, Pod, Container: the Kubernetes names, when the
	// container is a pod's; for the journal and the API only.
	PodNamespace string `json:"pod_namespace,omitempty"`
	Pod          string `json:"pod,omitempty"`
	Container    string `json:"container,omitempty"`
}

// Key identifies the target for cooldowns, budgets and the storm guard:
// node/namespace/container_id, or node/%interface@inode for links.
// Containers are keyed by id: a container re-created under the same name
// is a new target, as its restart count starts again.
func (t Target) Key() string {
	if t.Interface != "" {
		return fmt.Sprintf("%s/%%%s@%d", t.Node, t.Interface, t.NetnsInode)
	}
	return t.Node + "/" + t.Namespace + "/" + t.ContainerID
}

// TargetState is the fleet's view of a target when a decision is made.
type TargetState struct {
	Target Target
	// Owner of the container (OwnerUnknown for links).
	Owner Owner
	// RestartCount as the agent reports it (the kubelet's count for a
	// pod's container); HasRestartCount false when the fleet does not know.
	RestartCount    uint32
	HasRestartCount bool
	// NodeUp: the node's stream is up, or it is not known to be down. A
	// command for a node that is down would wait in its outbox until its
	// deadline; the engine suppresses it (node_down) instead.
	NodeUp bool
	// HealthBlamedOnNode: the container is unhealthy, and its agent blamed
	// the failing probe on the node's network, not on the container (the
	// gossip cross-check: peers on other nodes reach the pod; the protocol's
	// Health.blame NODE_NETWORK). An alert's restart, kill or stop of it is
	// suppressed (node_network). False for links.
	HealthBlamedOnNode bool
}

// FleetSize is how big the fleet is, for percentages.
type FleetSize struct {
	// Nodes known to the fleet.
	Nodes int
	// Targets: containers known to the fleet (the storm guard's denominator).
	Targets int
}

// FleetView is the engine's read-only view of the fleet, in domain types.
// The aggregator implements it over its read model. Methods are called on
// the webhook's request path and must not block on I/O; they are called
// from many goroutines at once.
type FleetView interface {
	// Lookup resolves ref. It fails with errdefs.ErrNotFound when the fleet
	// knows no such node, container or link, and ErrInvalid when ref is
	// ambiguous or incomplete.
	Lookup(ref TargetRef) (TargetState, error)
	// Size is the fleet's current size.
	Size() FleetSize
}

// Fence is what must still hold on the node for a command to run: the
// container id and restart count seen when the decision was made, and the
// intent's store revision (the claim's), which orders commands for one
// target across aggregator replicas.
type Fence struct {
	ContainerID     string `json:"container_id,omitempty"`
	RestartCount    uint32 `json:"restart_count,omitempty"`
	HasRestartCount bool   `json:"has_restart_count,omitempty"`
	IntentRevision  int64  `json:"intent_revision,omitempty"`
}

// Command is what an agent is asked to carry out. Its ID is the
// remediation's id; agents run a command id at most once.
type Command struct {
	ID     string `json:"id"`
	Action Action `json:"action"`
	// Signal for ActionKill and for restarts of containers another manager
	// owns (SIGKILL = 9).
	Signal   uint32    `json:"signal,omitempty"`
	Target   Target    `json:"target"`
	Fence    Fence     `json:"fence"`
	Deadline time.Time `json:"deadline"`
	Reason   string    `json:"reason"`
}
