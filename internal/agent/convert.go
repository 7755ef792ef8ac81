package agent

import (
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/restart"
	"github.com/vigilhq/vigil/internal/runtime"
	"github.com/vigilhq/vigil/internal/statedir"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// Conversions from the runtime's domain types to the protocol: the one place
// where they meet.

// identity is the workload identity that lifetime counters are kept under:
// stable across the kubelet re-creating a container (same pod and container
// name, new id), as the metric series are.
func identity(c *runtime.Container) string {
	if c.Pod != nil && !c.Pod.Sandbox && c.Pod.ContainerName != "" {
		return c.Namespace + "/" + c.Pod.Namespace + "/" + c.Pod.Name + "/" + c.Pod.ContainerName
	}
	return c.Namespace + "///" + c.ID
}

// relevantLabel reports whether a label is sent upstream: only the ones Vigil
// reads, so that free-form labels never travel (or become series).
func relevantLabel(k string) bool {
	return strings.HasPrefix(k, "vigil.io/") ||
		strings.HasPrefix(k, "io.kubernetes.") ||
		strings.HasPrefix(k, "containerd.io/restart.")
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func dur(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

func stateProto(s runtime.State) vigilv1.ContainerState {
	switch s {
	case runtime.StateCreated:
		return vigilv1.ContainerState_CONTAINER_STATE_CREATED
	case runtime.StateRunning:
		return vigilv1.ContainerState_CONTAINER_STATE_RUNNING
	case runtime.StatePaused:
		return vigilv1.ContainerState_CONTAINER_STATE_PAUSED
	case runtime.StateStopped:
		return vigilv1.ContainerState_CONTAINER_STATE_STOPPED
	}
	return vigilv1.ContainerState_CONTAINER_STATE_UNSPECIFIED
}

func exitReasonProto(r runtime.ExitReason) vigilv1.ExitReason {
	switch r {
	case runtime.ExitCompleted:
		return vigilv1.ExitReason_EXIT_REASON_COMPLETED
	case runtime.ExitError:
		return vigilv1.ExitReason_EXIT_REASON_ERROR
	case runtime.ExitSignal:
		return vigilv1.ExitReason_EXIT_REASON_SIGNAL
	case runtime.ExitOOMKilled:
		return vigilv1.ExitReason_EXIT_REASON_OOM_KILLED
	case runtime.ExitUnknown:
		return vigilv1.ExitReason_EXIT_REASON_UNKNOWN
	}
	return vigilv1.ExitReason_EXIT_REASON_UNSPECIFIED
}

func exitProto(e *runtime.Exit) *vigilv1.ExitStatus {
	if e == nil {
		return nil
	}
	return &vigilv1.ExitStatus{
		Code:     e.Code,
		Reason:   exitReasonProto(e.Reason),
		Signal:   e.Signal,
		ExitedAt: ts(e.At),
	}
}

func managerProto(m runtime.Manager) vigilv1.Manager {
	switch m {
	case runtime.ManagerKubelet:
		return vigilv1.Manager_MANAGER_KUBELET
	case runtime.ManagerDocker:
		return vigilv1.Manager_MANAGER_DOCKER
	case runtime.ManagerContainerd:
		return vigilv1.Manager_MANAGER_CONTAINERD
	}
	return vigilv1.Manager_MANAGER_VIGIL
}

func podProto(p *runtime.Pod) *vigilv1.PodIdentity {
	if p == nil {
		return nil
	}
	return &vigilv1.PodIdentity{
		Namespace:           p.Namespace,
		Name:                p.Name,
		Uid:                 p.UID,
		ContainerName:       p.ContainerName,
		Sandbox:             p.Sandbox,
		KubeletRestartCount: p.RestartCount,
	}
}

// baseContainerProto converts what the runtime knows of a container; the
// agent adds policy, health, backoff and counters.
func baseContainerProto(c *runtime.Container) *vigilv1.Container {
	labels := make(map[string]string)
	for k, v := range c.Labels {
		if relevantLabel(k) {
			labels[k] = v
		}
	}
	return &vigilv1.Container{
		Id:          c.ID,
		Namespace:   c.Namespace,
		Pod:         podProto(c.Pod),
		Image:       c.Image,
		ImageDigest: c.ImageDigest,
		Labels:      labels,
		State:       stateProto(c.State),
		Pid:         c.Pid,
		CreatedAt:   ts(c.CreatedAt),
		StartedAt:   ts(c.StartedAt),
		LastExit:    exitProto(c.LastExit),
		Manager:     managerProto(c.Manager),
		NetnsInode:  c.NetNSInode,
		HostNetwork: c.HostNetwork,
	}
}

func countersProto(c *statedir.Counters) *vigilv1.ContainerCounters {
	if c == nil {
		return &vigilv1.ContainerCounters{}
	}
	out := &vigilv1.ContainerCounters{
		RestartsTotal:      c.Restarts,
		OomEventsTotal:     c.OOMEvents,
		ProbeFailuresTotal: c.ProbeFailures,
	}
	for k, n := range c.Exits {
		out.Exits = append(out.Exits, &vigilv1.ExitCount{Reason: exitReasonFromString(k.Reason), Code: k.Code, Count: n})
	}
	sort.Slice(out.Exits, func(i, j int) bool {
		if out.Exits[i].Reason != out.Exits[j].Reason {
			return out.Exits[i].Reason < out.Exits[j].Reason
		}
		return out.Exits[i].Code < out.Exits[j].Code
	})
	return out
}

func exitReasonFromString(s string) vigilv1.ExitReason {
	for _, r := range []runtime.ExitReason{runtime.ExitCompleted, runtime.ExitError, runtime.ExitSignal, runtime.ExitOOMKilled, runtime.ExitUnknown} {
		if r.String() == s {
			return exitReasonProto(r)
		}
	}
	return vigilv1.ExitReason_EXIT_REASON_UNSPECIFIED
}

func statsProto(s *runtime.Stats) *vigilv1.ResourceSample {
	return &vigilv1.ResourceSample{
		Namespace:              s.Key.Namespace,
		ContainerId:            s.Key.ID,
		Timestamp:              ts(s.Time),
		CpuUsageSeconds:        s.CPUUsageSeconds,
		CpuUserSeconds:         s.CPUUserSeconds,
		CpuSystemSeconds:       s.CPUSystemSeconds,
		CpuCfsPeriods:          s.CPUPeriods,
		CpuCfsThrottledPeriods: s.CPUThrottledPeriods,
		CpuCfsThrottledSeconds: s.CPUThrottledSeconds,
		MemoryUsageBytes:       s.MemoryUsageBytes,
		MemoryWorkingSetBytes:  s.MemoryWorkingSetBytes,
		MemoryRssBytes:         s.MemoryRSSBytes,
		MemoryCacheBytes:       s.MemoryCacheBytes,
		MemoryLimitBytes:       s.MemoryLimitBytes,
		MemoryFailcnt:          s.MemoryFailcnt,
		OomKills:               s.OOMKills,
		PidsCurrent:            s.PidsCurrent,
		PidsLimit:              s.PidsLimit,
		BlkioReadBytes:         s.BlkioReadBytes,
		BlkioWriteBytes:        s.BlkioWriteBytes,
		BlkioReadOps:           s.BlkioReadOps,
		BlkioWriteOps:          s.BlkioWriteOps,
		CpuCfsQuotaUs:          s.CPUQuotaMicros,
		CpuCfsPeriodUs:         s.CPUPeriodMicros,
		CpuShares:              s.CPUShares,
		MemorySwapBytes:        s.MemorySwapBytes,
		MemoryReservationBytes: s.MemoryReservationBytes,
		MemoryHighEvents:       s.MemoryHighEvents,
		MemoryOomEvents:        s.MemoryOOMEvents,
	}
}

// exitRecord converts an exit for the state dir.
func exitRecord(e runtime.Exit) *statedir.ExitRecord {
	return &statedir.ExitRecord{Code: e.Code, Reason: e.Reason.String(), Signal: e.Signal, At: e.At}
}

// exitFromRecord converts a state dir's exit back; an unknown reason name
// is ExitUnknown.
func exitFromRecord(r *statedir.ExitRecord) runtime.Exit {
	e := runtime.Exit{Code: r.Code, Reason: runtime.ExitUnknown, Signal: r.Signal, At: r.At}
	for _, x := range []runtime.ExitReason{runtime.ExitCompleted, runtime.ExitError, runtime.ExitSignal, runtime.ExitOOMKilled, runtime.ExitUnknown} {
		if x.String() == r.Reason {
			e.Reason = x
		}
	}
	return e
}

// restartPolicyKindProto converts a restart policy kind; an unknown one is
// UNSPECIFIED.
func restartPolicyKindProto(k restart.Kind) vigilv1.RestartPolicyKind {
	switch k {
	case restart.KindNo:
		return vigilv1.RestartPolicyKind_RESTART_POLICY_KIND_NO
	case restart.KindAlways:
		return vigilv1.RestartPolicyKind_RESTART_POLICY_KIND_ALWAYS
	case restart.KindOnFailure:
		return vigilv1.RestartPolicyKind_RESTART_POLICY_KIND_ON_FAILURE
	case restart.KindUnlessStopped:
		return vigilv1.RestartPolicyKind_RESTART_POLICY_KIND_UNLESS_STOPPED
	}
	return vigilv1.RestartPolicyKind_RESTART_POLICY_KIND_UNSPECIFIED
}

// restartDecisionKindProto converts a restart decision's kind; an unknown
// one is UNSPECIFIED.
func restartDecisionKindProto(k restart.DecisionKind) vigilv1.RestartDecisionKind {
	switch k {
	case restart.DecisionRestart:
		return vigilv1.RestartDecisionKind_RESTART_DECISION_KIND_RESTART
	case restart.DecisionBackoff:
		return vigilv1.RestartDecisionKind_RESTART_DECISION_KIND_BACKOFF
	case restart.DecisionNone:
		return vigilv1.RestartDecisionKind_RESTART_DECISION_KIND_NONE
	case restart.DecisionGiveUp:
		return vigilv1.RestartDecisionKind_RESTART_DECISION_KIND_GIVE_UP
	case restart.DecisionSkipExplicitStop:
		return vigilv1.RestartDecisionKind_RESTART_DECISION_KIND_SKIP_EXPLICIT_STOP
	case restart.DecisionSkipManaged:
		return vigilv1.RestartDecisionKind_RESTART_DECISION_KIND_SKIP_MANAGED
	}
	return vigilv1.RestartDecisionKind_RESTART_DECISION_KIND_UNSPECIFIED
}
