package deploy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/opencontainers/runtime-spec/specs-go"
	corev1 "k8s.io/api/core/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// decodeStrict decodes one YAML object into obj as the API server's
// strict field validation does (case-sensitive, unknown and duplicate
// fields refused).
func decodeStrict(doc []byte, obj any) error {
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(j, obj, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// firstDocument returns a multi-document YAML file's first document.
func firstDocument(b []byte) []byte {
	doc, _, _ := strings.Cut(string(b), "\n---")
	return []byte(doc)
}

// Host is where the pod's host paths are on the test's host, and what its
// non-host volumes hold: the private containerd lives in a temp dir, not in
// /run/containerd, and the agent's state must not be the real node's.
type Host struct {
	// Paths maps a hostPath volume's path to the test's directory for it;
	// paths not named here are used as they are.
	Paths map[string]string
	// Volumes holds, for each secret, configMap or emptyDir volume by name,
	// a directory standing in for it.
	Volumes map[string]string
	// NodeName is what spec.nodeName resolves to in the container's env.
	NodeName string
	// PodIP is what status.podIP resolves to (with hostNetwork, the
	// node's address).
	PodIP string
}

// mapPath rewrites p when it is (under) a host path that Paths maps.
func (h Host) mapPath(p string) string {
	for from, to := range h.Paths {
		if p == from {
			return to
		}
		if rest, ok := strings.CutPrefix(p, strings.TrimSuffix(from, "/")+"/"); ok {
			return filepath.Join(to, rest)
		}
	}
	return p
}

// Translated is a container of a pod spec made into OCI spec options.
type Translated struct {
	Opts []oci.SpecOpts
	// Args are the container's args with mapped paths rewritten.
	Args []string
	// Mounts are the mounts made, for the test's log.
	Mounts []specs.Mount
	// Capabilities are the container's capabilities (CAP_ names).
	Capabilities []string
}

// defaultCapabilities are the capabilities a container runtime gives a
// container by default (containerd's and Docker's list), which a
// securityContext's drop and add modify.
var defaultCapabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
	"CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// Translate turns the named container of a pod spec into OCI spec options,
// as the kubelet and containerd's CRI plugin do for the parts the agent's
// pod uses: host PID and network namespaces, hostPath, secret, configMap
// and emptyDir volumes (bind mounts, recursive as CRI makes them; tmpfs for
// a memory emptyDir), readOnly mounts, env from spec.nodeName, status.podIP and values,
// the security context's user, capabilities (the runtime's defaults, minus
// drop, plus add), allowPrivilegeEscalation (no_new_privs),
// readOnlyRootFilesystem and seccomp RuntimeDefault (containerd's default
// profile, which opens the calls a capability needs), and the memory
// limit. Anything else in the spec is refused, so that a field added to
// the manifest is either translated here or makes the test fail.
//
// A hostPath mounted at its own path (the agent's state dir, containerd's
// directory) is mounted at its mapped path, and args naming paths under it
// are rewritten: the property the manifest relies on, the same path inside
// and outside, is kept.
func Translate(ps corev1.PodSpec, name string, h Host) (Translated, error) {
	var tr Translated
	var c *corev1.Container
	for i := range ps.Containers {
		if ps.Containers[i].Name == name {
			c = &ps.Containers[i]
		}
	}
	if c == nil {
		return tr, fmt.Errorf("no container %q in the pod spec", name)
	}
	if len(ps.InitContainers) > 0 || ps.HostIPC || ps.ShareProcessNamespace != nil || len(c.EnvFrom) > 0 || c.WorkingDir != "" || len(c.Command) > 0 {
		return tr, errors.New("the pod spec uses a field the translation does not know (initContainers, hostIPC, shareProcessNamespace, envFrom, workingDir, command): add it to Translate")
	}
	if ps.HostPID {
		tr.Opts = append(tr.Opts, oci.WithHostNamespace(specs.PIDNamespace))
	}
	if ps.HostNetwork {
		tr.Opts = append(tr.Opts, oci.WithHostNamespace(specs.NetworkNamespace), oci.WithHostHostsFile, oci.WithHostResolvconf)
	}

	vols := map[string]corev1.Volume{}
	for _, v := range ps.Volumes {
		vols[v.Name] = v
	}
	for _, m := range c.VolumeMounts {
		v, ok := vols[m.Name]
		if !ok {
			return tr, fmt.Errorf("mount %q names no volume", m.Name)
		}
		if m.SubPath != "" || m.SubPathExpr != "" || (m.MountPropagation != nil && *m.MountPropagation != corev1.MountPropagationNone) {
			return tr, fmt.Errorf("mount %q: subPath and mount propagation are not translated", m.Name)
		}
		mount := specs.Mount{Destination: m.MountPath, Type: "bind", Options: []string{"rbind"}}
		switch {
		case v.HostPath != nil:
			mount.Source = h.mapPath(v.HostPath.Path)
			if _, err := os.Stat(mount.Source); err != nil {
				if v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathDirectoryOrCreate {
					return tr, fmt.Errorf("hostPath %s (%s here): %w", v.HostPath.Path, mount.Source, err)
				}
				if err := os.MkdirAll(mount.Source, 0o755); err != nil {
					return tr, err
				}
			}
			if filepath.Clean(m.MountPath) == filepath.Clean(v.HostPath.Path) {
				mount.Destination = mount.Source
			}
		case v.Secret != nil, v.ConfigMap != nil:
			dir, ok := h.Volumes[m.Name]
			if !ok {
				return tr, fmt.Errorf("volume %q: the test gave no stand-in directory", m.Name)
			}
			mount.Source = dir
			m.ReadOnly = true // the kubelet mounts secrets and config maps read-only
		case v.EmptyDir != nil:
			if v.EmptyDir.Medium == corev1.StorageMediumMemory {
				mount = specs.Mount{Destination: m.MountPath, Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777"}}
				if v.EmptyDir.SizeLimit != nil {
					mount.Options = append(mount.Options, fmt.Sprintf("size=%d", v.EmptyDir.SizeLimit.Value()))
				}
			} else {
				dir, ok := h.Volumes[m.Name]
				if !ok {
					return tr, fmt.Errorf("volume %q: the test gave no stand-in directory", m.Name)
				}
				mount.Source = dir
			}
		default:
			return tr, fmt.Errorf("volume %q: kind not translated", m.Name)
		}
		if m.ReadOnly {
			mount.Options = append(mount.Options, "ro")
		} else {
			mount.Options = append(mount.Options, "rw")
		}
		tr.Mounts = append(tr.Mounts, mount)
	}
	// Parents before children, as containerd's CRI plugin orders a
	// container's mounts: a tmpfs on /tmp must not hide a bind under it.
	sort.SliceStable(tr.Mounts, func(i, j int) bool {
		return depth(tr.Mounts[i].Destination) < depth(tr.Mounts[j].Destination)
	})
	tr.Opts = append(tr.Opts, oci.WithMounts(tr.Mounts))

	for _, a := range c.Args {
		if name, val, ok := strings.Cut(a, "="); ok && strings.HasPrefix(val, "/") {
			a = name + "=" + h.mapPath(val)
		}
		tr.Args = append(tr.Args, a)
	}

	var env []string
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env = append(env, e.Name+"="+e.Value)
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName":
			env = append(env, e.Name+"="+h.NodeName)
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP" && h.PodIP != "":
			env = append(env, e.Name+"="+h.PodIP)
		default:
			return tr, fmt.Errorf("env %s: source not translated", e.Name)
		}
	}
	if len(env) > 0 {
		tr.Opts = append(tr.Opts, oci.WithEnv(env))
	}
	// $(VAR) in args is expanded by the kubelet from the container's env.
	for i, a := range tr.Args {
		for _, kv := range env {
			k, v, _ := strings.Cut(kv, "=")
			a = strings.ReplaceAll(a, "$("+k+")", v)
		}
		tr.Args[i] = a
	}

	sc := c.SecurityContext
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	if sc.Privileged != nil && *sc.Privileged {
		return tr, errors.New("privileged is not translated (and not wanted)")
	}
	if sc.RunAsUser != nil {
		gid := uint32(0)
		if sc.RunAsGroup != nil {
			gid = uint32(*sc.RunAsGroup)
		}
		tr.Opts = append(tr.Opts, oci.WithUIDGID(uint32(*sc.RunAsUser), gid))
	}
	caps := map[string]bool{}
	for _, cp := range defaultCapabilities {
		caps[cp] = true
	}
	if sc.Capabilities != nil {
		for _, d := range sc.Capabilities.Drop {
			if d == "ALL" {
				caps = map[string]bool{}
				continue
			}
			delete(caps, "CAP_"+string(d))
		}
		for _, a := range sc.Capabilities.Add {
			caps["CAP_"+string(a)] = true
		}
	}
	for cp := range caps {
		tr.Capabilities = append(tr.Capabilities, cp)
	}
	tr.Opts = append(tr.Opts, oci.WithCapabilities(tr.Capabilities))
	if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		tr.Opts = append(tr.Opts, oci.WithNoNewPrivileges)
	}
	if sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem {
		tr.Opts = append(tr.Opts, oci.WithRootFSReadonly())
	}
	seccompProfile := sc.SeccompProfile
	if seccompProfile == nil && ps.SecurityContext != nil {
		seccompProfile = ps.SecurityContext.SeccompProfile
	}
	if seccompProfile != nil {
		switch seccompProfile.Type {
		case corev1.SeccompProfileTypeRuntimeDefault:
			// After the capabilities: the profile opens the calls that
			// the spec's capabilities need.
			tr.Opts = append(tr.Opts, seccomp.WithDefaultProfile())
		case corev1.SeccompProfileTypeUnconfined:
		default:
			return tr, fmt.Errorf("seccomp profile %s not translated", seccompProfile.Type)
		}
	}
	if mem := c.Resources.Limits.Memory(); mem != nil && !mem.IsZero() {
		tr.Opts = append(tr.Opts, oci.WithMemoryLimit(uint64(mem.Value())))
	}
	return tr, nil
}

// depth is the number of components of a clean absolute path.
func depth(p string) int {
	p = filepath.Clean(p)
	if p == "/" {
		return 0
	}
	return strings.Count(p, "/")
}
