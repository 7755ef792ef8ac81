package testenv

import (
	"context"
	"fmt"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/opencontainers/runtime-spec/specs-go"
)

// ContainerSpec describes a plain containerd container (not CRI) for
// RunContainer.
type ContainerSpec struct {
	Namespace string // containerd namespace; "" means "default"
	ID        string // container id; "" means a unique one from the test name
	// Image is the reference of an image in Namespace; one that BusyboxImage,
	// WorkloadImage or HealthcheckImage returned for any namespace is
	// imported into Namespace as needed.
	Image string
	// Args replace the image's Cmd (the Entrypoint stays), as `docker run
	// IMAGE ARGS...` does; nil keeps the image's Cmd.
	Args []string
	// Labels are the container's containerd labels. containerd's restart
	// monitor acts on containerd.io/restart.* labels, and would replace a
	// task it finds created but not yet started, so RunContainer sets those
	// labels only once the task runs.
	Labels      map[string]string
	MemoryLimit int64 // bytes; 0 means no limit
	// NetNSPath is a network namespace to join (NewNetNS().Path); "" means a
	// new private namespace per task (lo down, no routes) unless HostNetwork.
	NetNSPath   string
	HostNetwork bool
	Env         []string // KEY=VALUE, added to the image's Env
	// Hooks are the spec's OCI hooks (run by runc on the host), nil for
	// none: a createRuntime hook runs inside every task create, under the
	// shim's runc create.
	Hooks *specs.Hooks
}

// RunContainer creates the container (snapshot on overlayfs, cgroup under
// e.CgroupParent/<namespace>/<id>, stdout and stderr appended to
// e.LogPathOf(namespace, id)), starts its task, and returns both; at the end
// of the test it kills and deletes whatever task the container then has,
// and the container. Fails the test on error.
func (e *Env) RunContainer(tb testing.TB, spec ContainerSpec) (client.Container, client.Task) {
	tb.Helper()
	if spec.Namespace == "" {
		spec.Namespace = "default"
	}
	if spec.ID == "" {
		spec.ID = e.uniqueID(tb)
	}
	if spec.Image == "" {
		tb.Fatalf("testenv: RunContainer %s: no image", spec.ID)
	}
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), spec.Namespace), time.Minute)
	defer cancel()
	c := e.harness
	if err := e.ensureImage(ctx, spec.Namespace, spec.Image); err != nil {
		tb.Fatalf("testenv: RunContainer %s: import %s into %s: %v", spec.ID, spec.Image, spec.Namespace, err)
	}
	img, err := c.GetImage(ctx, spec.Image)
	if err != nil {
		tb.Fatalf("testenv: RunContainer %s: image %s in namespace %s (import it first): %v", spec.ID, spec.Image, spec.Namespace, err)
	}
	opts := []oci.SpecOpts{
		oci.WithImageConfigArgs(img, spec.Args),
		oci.WithHostname(spec.ID),
		oci.WithCgroup(path.Join(e.CgroupParent, spec.Namespace, spec.ID)),
	}
	if len(spec.Env) > 0 {
		opts = append(opts, oci.WithEnv(spec.Env))
	}
	if spec.Hooks != nil {
		hooks := *spec.Hooks
		opts = append(opts, func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
			s.Hooks = &hooks
			return nil
		})
	}
	if spec.MemoryLimit > 0 {
		opts = append(opts, oci.WithMemoryLimit(uint64(spec.MemoryLimit)))
	}
	switch {
	case spec.NetNSPath != "":
		opts = append(opts, oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: spec.NetNSPath}))
	case spec.HostNetwork:
		opts = append(opts, oci.WithHostNamespace(specs.NetworkNamespace), oci.WithHostHostsFile, oci.WithHostResolvconf)
	}
	labels, restartLabels := splitRestartLabels(spec.Labels)
	ctr, err := c.NewContainer(ctx, spec.ID,
		client.WithImage(img),
		client.WithSnapshotter(snapshotter),
		client.WithNewSnapshot(spec.ID+"-snapshot", img),
		client.WithContainerLabels(labels),
		client.WithNewSpec(opts...),
	)
	if err != nil {
		tb.Fatalf("testenv: RunContainer %s: create: %v", spec.ID, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), spec.Namespace), 30*time.Second)
		defer cancel()
		if err := deleteContainer(ctx, ctr); err != nil {
			tb.Errorf("testenv: remove container %s/%s: %v", spec.Namespace, spec.ID, err)
		}
	})
	task, err := ctr.NewTask(ctx, cio.LogFile(e.LogPathOf(spec.Namespace, spec.ID)))
	if err != nil {
		tb.Fatalf("testenv: RunContainer %s: new task: %v", spec.ID, err)
	}
	if err := task.Start(ctx); err != nil {
		tb.Fatalf("testenv: RunContainer %s: start: %v", spec.ID, err)
	}
	if len(restartLabels) > 0 {
		if _, err := ctr.SetLabels(ctx, restartLabels); err != nil {
			tb.Fatalf("testenv: RunContainer %s: set restart labels: %v", spec.ID, err)
		}
	}
	return ctr, task
}

// restartLabelPrefix marks the labels containerd's restart monitor acts on.
const restartLabelPrefix = "containerd.io/restart."

// splitRestartLabels separates the labels containerd's restart monitor acts
// on from the others.
func splitRestartLabels(all map[string]string) (other, restart map[string]string) {
	other = make(map[string]string, len(all))
	for k, v := range all {
		if strings.HasPrefix(k, restartLabelPrefix) {
			if restart == nil {
				restart = make(map[string]string)
			}
			restart[k] = v
			continue
		}
		other[k] = v
	}
	return other, restart
}

// DeleteTask deletes the task of container id in namespace, as an
// operator's `ctr task rm` does (killing it first when it still runs, as
// `ctr task rm -f`), and returns the container. Fails the test on error,
// a missing task included.
func (e *Env) DeleteTask(tb testing.TB, namespace, id string) client.Container {
	tb.Helper()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), namespace), time.Minute)
	defer cancel()
	cont, err := e.harness.LoadContainer(ctx, id)
	if err != nil {
		tb.Fatalf("testenv: DeleteTask %s/%s: %v", namespace, id, err)
	}
	task, err := cont.Task(ctx, nil)
	if err != nil {
		tb.Fatalf("testenv: DeleteTask %s/%s: load task: %v", namespace, id, err)
	}
	if _, err := task.Delete(ctx, client.WithProcessKill); err != nil {
		tb.Fatalf("testenv: DeleteTask %s/%s: %v", namespace, id, err)
	}
	return cont
}

// LogPathOf is the file RunContainer appends the container's stdout and
// stderr to. A test that starts a new task for the container can pass
// cio.LogFile(e.LogPathOf(ns, id)) to keep one log.
func (e *Env) LogPathOf(namespace, id string) string {
	return filepath.Join(e.logDir(), namespace+"_"+id+".log")
}

// uniqueID makes a container id from the test's name, the instance and a
// counter: runc keeps its state per namespace and id in one host-wide
// directory, so ids must not repeat across instances.
func (e *Env) uniqueID(tb testing.TB) string {
	return fmt.Sprintf("%s-%s-%d", sanitize(tb.Name()), e.id, idSeq.Add(1))
}

// KillShimHooks are OCI hooks (ContainerSpec.Hooks) that SIGKILL the
// containerd shim creating the container's task, while the file marker
// exists: containerd then loses its connection to the shim in the middle of
// the create, as when a shim dies under load. The createRuntime hook runs
// on the host, a child of the shim's `runc create`; the shim is runc's
// parent. Without marker the hook does nothing, so the first task can be
// created and the test decides which creates fail.
func KillShimHooks(marker string) *specs.Hooks {
	script := `test -e "$1" || exit 0; read -r _ _ _ shim _ < /proc/$PPID/stat; kill -9 "$shim"`
	return &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/bin/sh", Args: []string{"sh", "-c", script, "kill-shim", marker}}}}
}
