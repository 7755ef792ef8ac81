package runtime

import (
	"time"

	"github.com/vigilhq/vigil/internal/container"
)

// The domain types of the runtime package. Nothing of containerd's own types
// leaves the package: the agent, health checks and restart policies see only
// these.

// State is a container's task state.
type State int

const (
	StateUnknown State = iota
	StateCreated       // container exists, no task
	StateRunning
	StatePaused
	StateStopped // the task exited (it may or may not be deleted yet)
)

func (s State) String() string {
	switch s {
	case StateCreated:
		return "created"
	case StateRunning:
		return "running"
	case StatePaused:
		return "paused"
	case StateStopped:
		return "stopped"
	}
	return "unknown"
}

// ExitReason classifies a task exit.
type ExitReason int

const (
	ExitNone      ExitReason = iota
	ExitCompleted            // code 0
	ExitError                // non-zero code below 128
	ExitSignal               // 128+n: killed by signal n
	ExitOOMKilled            // an OOM event for the task preceded its exit
	// ExitUnknown: the task ended unseen and its status is gone (deleted
	// while the agent was down); the code is 255, as Docker reports it.
	ExitUnknown
)

func (r ExitReason) String() string {
	switch r {
	case ExitCompleted:
		return "completed"
	case ExitError:
		return "error"
	case ExitSignal:
		return "signal"
	case ExitOOMKilled:
		return "oom_killed"
	case ExitUnknown:
		return "unknown"
	}
	return "none"
}

// Exit is how a task ended.
type Exit struct {
	Code   uint32
	Reason ExitReason
	Signal string // "KILL", "TERM", ... for ExitSignal and ExitOOMKilled
	At     time.Time
}

// Manager says who restarts a container. Vigil enforces restart policies only
// on ManagerVigil containers: it never fights an owner.
type Manager int

const (
	ManagerVigil      Manager = iota
	ManagerKubelet            // CRI, containerd namespace k8s.io
	ManagerDocker             // containerd namespace moby
	ManagerContainerd         // containerd.io/restart.* labels
)

func (m Manager) String() string {
	switch m {
	case ManagerKubelet:
		return "kubelet"
	case ManagerDocker:
		return "docker"
	case ManagerContainerd:
		return "containerd"
	}
	return "vigil"
}

// Pod is the Kubernetes identity of a kubelet-created container, from the
// kubelet's labels and annotations.
type Pod struct {
	Namespace     string // io.kubernetes.pod.namespace
	Name          string // io.kubernetes.pod.name
	UID           string // io.kubernetes.pod.uid
	ContainerName string // io.kubernetes.container.name; empty for the sandbox
	Sandbox       bool   // the pod's sandbox (pause) container
	SandboxID     string // id of the pod's sandbox container
	RestartCount  uint32 // io.kubernetes.container.restartCount annotation
}

// Healthcheck is an image config's Docker Healthcheck as written in the
// image (zero durations mean "Docker's default"; the health package applies
// defaults).
type Healthcheck struct {
	Test        []string // ["CMD", ...], ["CMD-SHELL", "..."], ["NONE"]
	Interval    time.Duration
	Timeout     time.Duration
	StartPeriod time.Duration
	Retries     int
}

// Container is one containerd container and its task.
type Container struct {
	Namespace   string
	ID          string
	Image       string
	ImageDigest string
	Labels      map[string]string
	Pod         *Pod // nil outside Kubernetes
	Manager     Manager
	State       State
	Pid         uint32 // task pid while running or paused; 0 otherwise
	CreatedAt   time.Time
	StartedAt   time.Time // when the current (or last) task started
	LastExit    *Exit     // nil if the task never exited
	CgroupPath  string    // from the OCI spec (cgroupfs or systemd slice:prefix:name form)
	NetNSInode  uint64    // inode of the task's network namespace; 0 when unknown
	HostNetwork bool      // shares the host's network namespace
	Healthcheck *Healthcheck
	// StopSignal is the signal that asks the container to stop, as its
	// image or containerd's StopSignalLabel says ("SIGINT", "2"; see
	// ParseSignal); "" means SIGTERM.
	StopSignal string
	// Output is where the current (or last) task's output goes, as
	// containerd has it; zero when not known.
	Output TaskOutput
}

// TaskOutput is where a task's stdout and stderr go, as containerd has it:
// paths (FIFOs or files) or URIs (file://, binary://).
type TaskOutput struct {
	Stdout   string `json:"stdout,omitempty"`
	Stderr   string `json:"stderr,omitempty"`
	Terminal bool   `json:"terminal,omitempty"`
}

// Key returns the container's key.
func (c *Container) Key() container.Key { return container.Key{Namespace: c.Namespace, ID: c.ID} }

// EventType is what changed.
type EventType int

const (
	EventAdded       EventType = iota + 1 // container created (or first seen)
	EventRemoved                          // container deleted
	EventStarted                          // a task started
	EventExited                           // the task exited; Event.Exit is set
	EventOOM                              // the kernel OOM-killed a process of the task
	EventPaused                           // the task was paused
	EventResumed                          // the task was resumed
	EventTaskDeleted                      // the task was deleted (after its exit)
	EventUnavailable                      // containerd stopped answering; Container is nil
	EventAvailable                        // containerd answers again (after a resync); Container is nil
)

func (t EventType) String() string {
	switch t {
	case EventAdded:
		return "added"
	case EventRemoved:
		return "removed"
	case EventStarted:
		return "started"
	case EventExited:
		return "exited"
	case EventOOM:
		return "oom"
	case EventPaused:
		return "paused"
	case EventResumed:
		return "resumed"
	case EventTaskDeleted:
		return "task_deleted"
	case EventUnavailable:
		return "unavailable"
	case EventAvailable:
		return "available"
	}
	return "unknown"
}

// Event is one lifecycle change. Container holds the container's state after
// the change (its last state for EventRemoved).
type Event struct {
	Type      EventType
	Time      time.Time
	Key       container.Key
	Container *Container
	Exit      *Exit // for EventExited
	// Leftover marks the EventExited and EventTaskDeleted of a task that
	// Restart itself killed and deleted because it was in the way: the
	// created, never started task of an interrupted restart, replaced under
	// ResumeInterrupted. It is neither a workload's exit nor anyone's stop.
	// Set when the event arrives within two minutes of the clean-up.
	Leftover bool
}

// Stats is one reading of a running container's cgroup. Counters are
// cumulative for the cgroup's lifetime.
type Stats struct {
	Key                   container.Key
	Time                  time.Time
	CPUUsageSeconds       float64
	CPUUserSeconds        float64
	CPUSystemSeconds      float64
	CPUPeriods            uint64
	CPUThrottledPeriods   uint64
	CPUThrottledSeconds   float64
	MemoryUsageBytes      uint64
	MemoryWorkingSetBytes uint64
	MemoryRSSBytes        uint64
	MemoryCacheBytes      uint64
	MemoryLimitBytes      uint64 // 0: unlimited
	MemoryFailcnt         uint64
	OOMKills              uint64
	PidsCurrent           uint64
	PidsLimit             uint64 // 0: unlimited
	BlkioReadBytes        uint64
	BlkioWriteBytes       uint64
	BlkioReadOps          uint64
	BlkioWriteOps         uint64

	// CPUQuotaMicros is the CFS quota per period (v1 cpu.cfs_quota_us, v2
	// cpu.max); 0: no quota.
	CPUQuotaMicros uint64
	// CPUPeriodMicros is the CFS period (v1 cpu.cfs_period_us, v2 cpu.max).
	CPUPeriodMicros uint64
	// CPUShares is v1 cpu.shares, or v2 cpu.weight converted to shares as
	// cAdvisor does; 0: the kernel's default (1024 shares, weight 100).
	CPUShares uint64
	// MemorySwapBytes is swap used (v1 memory.stat total_swap, 0 without
	// swap accounting; v2 memory.swap.current).
	MemorySwapBytes uint64
	// MemoryReservationBytes is the soft limit (v1
	// memory.soft_limit_in_bytes) or protection (v2 memory.low); 0: none.
	MemoryReservationBytes uint64
	// MemoryHighEvents and MemoryOOMEvents are v2 memory.events high and
	// oom (0 on v1, which has neither).
	MemoryHighEvents uint64
	MemoryOOMEvents  uint64
}

// ExecResult is the outcome of a command run inside a container.
type ExecResult struct {
	ExitCode int
	Output   []byte // stdout and stderr interleaved, capped
}
