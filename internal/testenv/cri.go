package testenv

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The labels and annotations the kubelet puts on what it creates through
// CRI (pkg/kubelet/types/labels.go and kuberuntime/labels.go in Kubernetes).
const (
	LabelPodName         = "io.kubernetes.pod.name"
	LabelPodNamespace    = "io.kubernetes.pod.namespace"
	LabelPodUID          = "io.kubernetes.pod.uid"
	LabelContainerName   = "io.kubernetes.container.name"
	AnnotationRestartCnt = "io.kubernetes.container.restartCount"

	// CRIMetadataExtension is the containerd container extension in which
	// containerd 1.6's CRI plugin keeps the container's CRI config as JSON
	// (Metadata.Config.annotations holds the kubelet's annotations, which do
	// not reach the OCI spec by default).
	CRIMetadataExtension = "io.cri-containerd.container.metadata"
)

// PodSpec describes a pod for RunPod and Env.RunPod.
type PodSpec struct {
	Namespace  string // Kubernetes namespace; "" means "default"
	Name       string // pod name; "" means one made from the test name (Env.RunPod only)
	Containers []PodContainer
	// UID is the pod's uid; "" means a random one.
	UID string
	// CgroupParent is the pod's cgroup (cgroupfs form); "" means
	// Env.CgroupParent/pod<uid> with Env.RunPod and the CRI plugin's
	// default with RunPod.
	CgroupParent string
	// LogDir holds the containers' logs, NAME/0.log as the kubelet names
	// them; "" means a dir of the instance with Env.RunPod, and no logs
	// with RunPod.
	LogDir string
}

// PodContainer is one container of a PodSpec.
type PodContainer struct {
	Name string
	// Image is an image reference in namespace k8s.io; one that
	// BusyboxImage, WorkloadImage or HealthcheckImage returned for any
	// namespace is imported there as needed.
	Image string
	// Args replace the image's Cmd, as a pod's `args:` do.
	Args   []string
	Labels map[string]string // added to the kubelet's labels
}

// Pod is a running pod made by RunPod.
type Pod struct {
	SandboxID    string
	UID          string
	ContainerIDs map[string]string // by container name
	IP           string            // pod IP on the instance's bridge
	NetNSPath    string            // the sandbox's network namespace file

	// What RunPod sent, for RestartPodContainer.
	sandboxConfig *runtimeapi.PodSandboxConfig
	configs       map[string]*runtimeapi.ContainerConfig
	logDir        string
}

var idSeq atomic.Int64

// CRI returns a CRI runtime client of the instance, closed when the test
// ends, after waiting until the CRI plugin reports its runtime and network
// ready.
func (e *Env) CRI(tb testing.TB) runtimeapi.RuntimeServiceClient {
	tb.Helper()
	conn, err := grpc.NewClient("unix://"+e.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatalf("testenv: CRI client: %v", err)
	}
	tb.Cleanup(func() { conn.Close() })
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	if err := waitCRIReady(context.Background(), rs); err != nil {
		tb.Fatalf("testenv: %v; containerd log tail:\n%s", err, e.logTail())
	}
	return rs
}

func waitCRIReady(ctx context.Context, rs runtimeapi.RuntimeServiceClient) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var last string
	for {
		st, err := rs.Status(ctx, &runtimeapi.StatusRequest{})
		if err == nil {
			ready := 0
			for _, c := range st.GetStatus().GetConditions() {
				if c.Status && (c.Type == runtimeapi.RuntimeReady || c.Type == runtimeapi.NetworkReady) {
					ready++
				} else if !c.Status {
					last = fmt.Sprintf("%s: %s %s", c.Type, c.Reason, c.Message)
				}
			}
			if ready == 2 {
				return nil
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("CRI not ready within %v: %s", readyTimeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// RunPod creates a pod the way the kubelet does: RunPodSandbox with the
// kubelet's labels and a fresh uid, then CreateContainer and StartContainer
// for each container with the kubelet's container labels and restart-count
// annotation. The pod gets an IP on the instance's bridge. It is stopped and
// removed at the end of the test. Fails the test on error.
func (e *Env) RunPod(tb testing.TB, spec PodSpec) *Pod {
	tb.Helper()
	if spec.Namespace == "" {
		spec.Namespace = "default"
	}
	if spec.Name == "" {
		spec.Name = strings.ToLower(e.uniqueID(tb))
	}
	if spec.UID == "" {
		spec.UID = newUID()
	}
	if spec.CgroupParent == "" {
		spec.CgroupParent = path.Join(e.CgroupParent, "pod"+spec.UID)
	}
	if spec.LogDir == "" {
		spec.LogDir = filepath.Join(e.logDir(), "pods", spec.Namespace+"_"+spec.Name+"_"+spec.UID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, c := range spec.Containers {
		if err := e.ensureImage(ctx, CRINamespace, c.Image); err != nil {
			tb.Fatalf("testenv: RunPod %s: import %s into %s: %v", spec.Name, c.Image, CRINamespace, err)
		}
	}
	pod, err := RunPod(ctx, e.Address, spec)
	if pod != nil {
		tb.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := RemovePod(ctx, e.Address, pod.SandboxID); err != nil {
				tb.Errorf("testenv: %v", err)
			}
		})
	}
	if err != nil {
		tb.Fatalf("testenv: %v; containerd log tail:\n%s", err, e.logTail())
	}
	return pod
}

// RunPod creates a pod through the CRI API of the containerd at address the
// way the kubelet does (see Env.RunPod), after waiting (at most 20 s) until
// the CRI plugin reports its runtime and network ready. The images must be
// in CRINamespace already (ImportImages). On an error after the sandbox was
// created it returns the pod too, for RemovePod. It blocks until the pod
// runs or ctx ends.
func RunPod(ctx context.Context, address string, spec PodSpec) (*Pod, error) {
	if spec.Name == "" {
		return nil, fmt.Errorf("testenv: RunPod: a pod needs a name: %w", errdefs.ErrInvalid)
	}
	if spec.Namespace == "" {
		spec.Namespace = "default"
	}
	if spec.UID == "" {
		spec.UID = newUID()
	}
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	if err := waitCRIReady(ctx, rs); err != nil {
		return nil, err
	}
	if spec.LogDir != "" {
		if err := os.MkdirAll(spec.LogDir, 0o755); err != nil {
			return nil, err
		}
	}
	podLabels := map[string]string{
		LabelPodName:      spec.Name,
		LabelPodNamespace: spec.Namespace,
		LabelPodUID:       spec.UID,
	}
	nsOpts := &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD}
	sandboxConfig := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: spec.Name, Uid: spec.UID, Namespace: spec.Namespace, Attempt: 0},
		Hostname:     spec.Name,
		LogDirectory: spec.LogDir,
		Labels:       podLabels,
		Annotations: map[string]string{
			"kubernetes.io/config.source": "api",
			"kubernetes.io/config.seen":   time.Now().UTC().Format(time.RFC3339Nano),
		},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent:    spec.CgroupParent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: nsOpts},
		},
	}
	run, err := rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sandboxConfig})
	if err != nil {
		return nil, fmt.Errorf("RunPod %s/%s: RunPodSandbox: %w", spec.Namespace, spec.Name, err)
	}
	pod := &Pod{SandboxID: run.PodSandboxId, UID: spec.UID, ContainerIDs: map[string]string{},
		sandboxConfig: sandboxConfig, configs: map[string]*runtimeapi.ContainerConfig{}, logDir: spec.LogDir}

	for _, c := range spec.Containers {
		labels := map[string]string{}
		for k, v := range c.Labels {
			labels[k] = v
		}
		for k, v := range podLabels {
			labels[k] = v
		}
		labels[LabelContainerName] = c.Name
		cfg := &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: c.Name, Attempt: 0},
			Image:    &runtimeapi.ImageSpec{Image: c.Image},
			Args:     c.Args,
			Labels:   labels,
			Annotations: map[string]string{
				AnnotationRestartCnt:                               "0",
				"io.kubernetes.container.hash":                     "0",
				"io.kubernetes.container.terminationMessagePath":   "/dev/termination-log",
				"io.kubernetes.container.terminationMessagePolicy": "File",
				"io.kubernetes.pod.terminationGracePeriod":         "30",
			},
			Linux: &runtimeapi.LinuxContainerConfig{
				SecurityContext: &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: nsOpts},
			},
		}
		if spec.LogDir != "" {
			cfg.LogPath = filepath.Join(c.Name, "0.log")
		}
		created, err := rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
			PodSandboxId: pod.SandboxID, Config: cfg, SandboxConfig: sandboxConfig,
		})
		if err != nil {
			return pod, fmt.Errorf("RunPod %s: CreateContainer %s: %w", spec.Name, c.Name, err)
		}
		if _, err := rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: created.ContainerId}); err != nil {
			return pod, fmt.Errorf("RunPod %s: StartContainer %s: %w", spec.Name, c.Name, err)
		}
		pod.ContainerIDs[c.Name] = created.ContainerId
		pod.configs[c.Name] = cfg
	}

	st, err := rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod.SandboxID, Verbose: true})
	if err != nil {
		return pod, fmt.Errorf("RunPod %s: PodSandboxStatus: %w", spec.Name, err)
	}
	pod.IP = st.GetStatus().GetNetwork().GetIp()
	pod.NetNSPath = sandboxNetNS(st.GetInfo())
	if pod.IP == "" || pod.NetNSPath == "" {
		return pod, fmt.Errorf("RunPod %s: sandbox has IP %q and netns %q; info: %v", spec.Name, pod.IP, pod.NetNSPath, st.GetInfo())
	}
	return pod, nil
}

// RestartPodContainer does what the kubelet does when a pod's container
// has exited and its restart policy says restart: it creates a new
// container in the same sandbox with the next attempt number and the
// restart-count annotation raised, starts it, and records its id in
// pod.ContainerIDs. The exited container is left in place, as the kubelet
// leaves the last dead one. It returns the new container's id.
func RestartPodContainer(ctx context.Context, address string, pod *Pod, name string) (string, error) {
	old, ok := pod.configs[name]
	if !ok || pod.sandboxConfig == nil {
		return "", fmt.Errorf("testenv: pod %s has no container %q made by RunPod: %w", pod.SandboxID, name, errdefs.ErrNotFound)
	}
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	cfg := proto.Clone(old).(*runtimeapi.ContainerConfig)
	attempt := old.GetMetadata().GetAttempt() + 1
	cfg.Metadata.Attempt = attempt
	cfg.Annotations[AnnotationRestartCnt] = strconv.FormatUint(uint64(attempt), 10)
	if pod.logDir != "" {
		cfg.LogPath = filepath.Join(name, strconv.FormatUint(uint64(attempt), 10)+".log")
	}
	created, err := rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: pod.SandboxID, Config: cfg, SandboxConfig: pod.sandboxConfig,
	})
	if err != nil {
		return "", fmt.Errorf("restart %s in pod %s: CreateContainer: %w", name, pod.SandboxID, err)
	}
	if _, err := rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: created.ContainerId}); err != nil {
		return "", fmt.Errorf("restart %s in pod %s: StartContainer: %w", name, pod.SandboxID, err)
	}
	pod.ContainerIDs[name] = created.ContainerId
	pod.configs[name] = cfg
	return created.ContainerId, nil
}

// RestartPodContainer is RestartPodContainer on the instance, failing the
// test on error.
func (e *Env) RestartPodContainer(tb testing.TB, pod *Pod, name string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	id, err := RestartPodContainer(ctx, e.Address, pod, name)
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	return id
}

// RemovePod stops and removes the pod sandbox id (with its containers) of
// the containerd at address.
func RemovePod(ctx context.Context, address, id string) error {
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	var errs []error
	// A container that exits while the pod is being stopped can make the
	// stop fail ("ttrpc: closed" from its shim going away); the kubelet
	// retries, and so does this.
	var stopErr error
	for try := 0; try < 5; try++ {
		if _, stopErr = rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); stopErr == nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
			continue
		}
		break
	}
	if stopErr != nil {
		errs = append(errs, fmt.Errorf("stop pod %s: %w", id, stopErr))
	}
	if _, err := rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
		errs = append(errs, fmt.Errorf("remove pod %s: %w", id, err))
	}
	return errors.Join(errs...)
}

// sandboxNetNS finds the sandbox's network namespace in the verbose
// PodSandboxStatus info of containerd's CRI plugin: the runtime spec's
// network namespace path, else /proc/PID/ns/net of the sandbox process.
func sandboxNetNS(info map[string]string) string {
	var v struct {
		PID         int `json:"pid"`
		RuntimeSpec struct {
			Linux struct {
				Namespaces []struct {
					Type string `json:"type"`
					Path string `json:"path"`
				} `json:"namespaces"`
			} `json:"linux"`
		} `json:"runtimeSpec"`
	}
	if err := json.Unmarshal([]byte(info["info"]), &v); err != nil {
		return ""
	}
	for _, ns := range v.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" && ns.Path != "" {
			return ns.Path
		}
	}
	if v.PID > 0 {
		return fmt.Sprintf("/proc/%d/ns/net", v.PID)
	}
	return ""
}

// newUID returns a random RFC 4122 version 4 UUID, as Kubernetes pod uids are.
func newUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// sanitize turns a test name into a containerd id (letters, digits, and
// single '-' between them, at most 40 characters).
func sanitize(name string) string {
	var b strings.Builder
	dash := false
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			b.WriteRune(r)
			dash = false
		default:
			if !dash && b.Len() > 0 {
				b.WriteByte('-')
				dash = true
			}
		}
	}
	s := strings.Trim(b.String(), "-")
	if len(s) > 40 {
		s = strings.Trim(s[:40], "-")
	}
	if s == "" {
		s = "test"
	}
	return s
}
