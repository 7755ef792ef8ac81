package chain

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Container is a plain containerd container, run the way a user runs one:
// with ctr.
type Container struct {
	ID        string
	Namespace string // containerd namespace; "" means "default"
	Image     string
	Args      []string // the process's command line: with ctr, it replaces the image's Entrypoint and Cmd
	Labels    map[string]string
	// NetNSPath is a network namespace to join ("" = a private one per task).
	NetNSPath string
	// LogPath receives the task's stdout and stderr ("" = /dev/null).
	LogPath string
	// CgroupParent holds the container's cgroup: CgroupParent/ID.
	CgroupParent string
}

// CtrArgs is the ctr command line that creates and starts c in the
// background on the containerd at address.
func (c Container) CtrArgs(address string) []string {
	ns := c.Namespace
	if ns == "" {
		ns = "default"
	}
	args := []string{"-a", address, "-n", ns, "run", "-d"}
	keys := make([]string, 0, len(c.Labels))
	for k := range c.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "--label", k+"="+c.Labels[k])
	}
	if c.NetNSPath != "" {
		args = append(args, "--with-ns", "network:"+c.NetNSPath)
	}
	if c.LogPath != "" {
		args = append(args, "--log-uri", "file://"+c.LogPath)
	} else {
		args = append(args, "--null-io")
	}
	if c.CgroupParent != "" {
		args = append(args, "--cgroup", filepath.Join(c.CgroupParent, c.ID))
	}
	args = append(args, c.Image, c.ID)
	return append(args, c.Args...)
}

// RunContainer creates and starts c with `ctr run -d` (/usr/bin/ctr ships
// with containerd).
func RunContainer(ctx context.Context, address string, c Container) error {
	if c.LogPath != "" {
		if err := os.MkdirAll(filepath.Dir(c.LogPath), 0o755); err != nil {
			return err
		}
	}
	return runCmd("ctr", c.CtrArgs(address)...)
}

// PodSpec is a pod made the way the kubelet makes one through CRI.
type PodSpec struct {
	Namespace, Name, UID string
	// CgroupParent is the pod's cgroup (cgroupfs form).
	CgroupParent string
	// LogDir holds the containers' logs, NAME.log.
	LogDir     string
	Containers []PodContainer
}

// PodContainer is one container of a PodSpec.
type PodContainer struct {
	Name, Image string
	Args        []string
	Labels      map[string]string
}

// Pod is a running CRI pod.
type Pod struct {
	SandboxID    string
	ContainerIDs map[string]string // by container name
	IP           string
}

// RunPod creates the pod's sandbox and starts its containers through the
// CRI API of the containerd at address, with the labels and annotations the
// kubelet sets.
func RunPod(ctx context.Context, address string, spec PodSpec) (*Pod, error) {
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	if err := os.MkdirAll(spec.LogDir, 0o755); err != nil {
		return nil, err
	}
	podLabels := map[string]string{
		"io.kubernetes.pod.name":      spec.Name,
		"io.kubernetes.pod.namespace": spec.Namespace,
		"io.kubernetes.pod.uid":       spec.UID,
	}
	sandbox := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: spec.Name, Namespace: spec.Namespace, Uid: spec.UID},
		Hostname:     spec.Name,
		LogDirectory: spec.LogDir,
		Labels:       podLabels,
		Annotations:  map[string]string{"kubernetes.io/config.source": "api"},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: spec.CgroupParent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{
					Network: runtimeapi.NamespaceMode_POD,
					Pid:     runtimeapi.NamespaceMode_CONTAINER,
					Ipc:     runtimeapi.NamespaceMode_POD,
				},
			},
		},
	}
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	run, err := rs.RunPodSandbox(rctx, &runtimeapi.RunPodSandboxRequest{Config: sandbox})
	if err != nil {
		return nil, fmt.Errorf("run pod sandbox %s/%s: %w", spec.Namespace, spec.Name, err)
	}
	pod := &Pod{SandboxID: run.PodSandboxId, ContainerIDs: map[string]string{}}
	for _, c := range spec.Containers {
		labels := map[string]string{"io.kubernetes.container.name": c.Name}
		for k, v := range podLabels {
			labels[k] = v
		}
		for k, v := range c.Labels {
			labels[k] = v
		}
		created, err := rs.CreateContainer(rctx, &runtimeapi.CreateContainerRequest{
			PodSandboxId: run.PodSandboxId,
			Config: &runtimeapi.ContainerConfig{
				Metadata: &runtimeapi.ContainerMetadata{Name: c.Name},
				Image:    &runtimeapi.ImageSpec{Image: c.Image},
				Args:     c.Args,
				Labels:   labels,
				Annotations: map[string]string{
					"io.kubernetes.container.restartCount":           "0",
					"io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
				},
				LogPath: c.Name + ".log",
				Linux:   &runtimeapi.LinuxContainerConfig{},
			},
			SandboxConfig: sandbox,
		})
		if err != nil {
			return pod, fmt.Errorf("create container %s in pod %s: %w", c.Name, spec.Name, err)
		}
		if _, err := rs.StartContainer(rctx, &runtimeapi.StartContainerRequest{ContainerId: created.ContainerId}); err != nil {
			return pod, fmt.Errorf("start container %s in pod %s: %w", c.Name, spec.Name, err)
		}
		pod.ContainerIDs[c.Name] = created.ContainerId
	}
	if st, err := rs.PodSandboxStatus(rctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: run.PodSandboxId}); err == nil && st.Status.GetNetwork() != nil {
		pod.IP = st.Status.Network.Ip
	}
	return pod, nil
}
