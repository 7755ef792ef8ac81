package runtime

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// Names that the kubelet, containerd's CRI plugin and dockerd write on
// containers. The kubelet's labels and annotations are its contract with
// every CRI runtime; the io.kubernetes.cri.* annotations and the
// io.cri-containerd.* label and extension are containerd's CRI plugin's
// (checked against containerd 1.6).
const (
	labelPodNamespace     = "io.kubernetes.pod.namespace"
	labelPodName          = "io.kubernetes.pod.name"
	labelPodUID           = "io.kubernetes.pod.uid"
	labelContainerName    = "io.kubernetes.container.name"
	annotationRestartCnt  = "io.kubernetes.container.restartCount"
	labelCRIKind          = "io.cri-containerd.kind" // "sandbox" or "container"
	annotationCRIType     = "io.kubernetes.cri.container-type"
	annotationSandboxID   = "io.kubernetes.cri.sandbox-id"
	annotationSandboxName = "io.kubernetes.cri.sandbox-name"
	annotationSandboxNS   = "io.kubernetes.cri.sandbox-namespace"
	annotationSandboxUID  = "io.kubernetes.cri.sandbox-uid"
	annotationCRIName     = "io.kubernetes.cri.container-name"
	extensionCRIMetadata  = "io.cri-containerd.container.metadata"
	criKindSandbox        = "sandbox"
	restartLabelPrefix    = "containerd.io/restart."
	namespaceKubelet      = "k8s.io"
	namespaceDocker       = "moby"
)

// managerOf says who restarts a container: the kubelet owns namespace
// k8s.io, dockerd namespace moby, containerd's restart monitor any container
// carrying one of its containerd.io/restart.* labels; Vigil the rest.
func managerOf(namespace string, labels map[string]string) Manager {
	switch namespace {
	case namespaceKubelet:
		return ManagerKubelet
	case namespaceDocker:
		return ManagerDocker
	}
	for k := range labels {
		if strings.HasPrefix(k, restartLabelPrefix) {
			return ManagerContainerd
		}
	}
	return ManagerVigil
}

// ociSpec is the part of an OCI runtime spec that the inventory reads.
type ociSpec struct {
	Annotations map[string]string `json:"annotations"`
	Linux       *struct {
		CgroupsPath string `json:"cgroupsPath"`
		Namespaces  []struct {
			Type string `json:"type"`
			Path string `json:"path"`
		} `json:"namespaces"`
	} `json:"linux"`
}

// parseSpec decodes the fields of an OCI spec (JSON) that the inventory
// uses: annotations, linux.cgroupsPath, and whether the spec asks for its
// own network namespace (hostNet is true when the spec lists no network
// namespace at all, which means the host's).
func parseSpec(b []byte) (s ociSpec, hostNet bool, err error) {
	if err := json.Unmarshal(b, &s); err != nil {
		return ociSpec{}, false, fmt.Errorf("OCI spec: %w: %v", errdefs.ErrInvalid, err)
	}
	hostNet = s.Linux != nil
	if s.Linux != nil {
		for _, ns := range s.Linux.Namespaces {
			if ns.Type == "network" {
				hostNet = false
			}
		}
	}
	return s, hostNet, nil
}

func (s *ociSpec) cgroupsPath() string {
	if s.Linux == nil {
		return ""
	}
	return s.Linux.CgroupsPath
}

// criMetadata is the part of the CRI plugin's container metadata extension
// (JSON, {"Version":"v1","Metadata":{...}}) that carries what the kubelet
// annotated: the restart count and the sandbox id.
type criMetadata struct {
	Version  string `json:"Version"`
	Metadata struct {
		ID        string `json:"ID"`
		SandboxID string `json:"SandboxID"`
		Config    *struct {
			Metadata *struct {
				Name    string `json:"name"`
				Attempt uint32 `json:"attempt"`
			} `json:"metadata"`
			Annotations map[string]string `json:"annotations"`
		} `json:"Config"`
	} `json:"Metadata"`
}

// parseCRIMetadata decodes the CRI container metadata extension.
func parseCRIMetadata(b []byte) (criMetadata, error) {
	var m criMetadata
	if err := json.Unmarshal(b, &m); err != nil {
		return criMetadata{}, fmt.Errorf("CRI container metadata: %w: %v", errdefs.ErrInvalid, err)
	}
	return m, nil
}

// podOf maps a container to its Kubernetes identity from the kubelet's
// labels, the CRI plugin's kind label and spec annotations, and the CRI
// metadata extension (nil when the container has none). It returns nil for
// containers that carry neither kubelet labels nor CRI markers.
func podOf(labels, annotations map[string]string, meta *criMetadata) *Pod {
	sandbox := labels[labelCRIKind] == criKindSandbox || annotations[annotationCRIType] == criKindSandbox
	_, hasPodLabel := labels[labelPodName]
	_, hasKind := labels[labelCRIKind]
	_, hasType := annotations[annotationCRIType]
	if !hasPodLabel && !hasKind && !hasType {
		return nil
	}
	first := func(vals ...string) string {
		for _, v := range vals {
			if v != "" {
				return v
			}
		}
		return ""
	}
	p := &Pod{
		Namespace: first(labels[labelPodNamespace], annotations[annotationSandboxNS]),
		Name:      first(labels[labelPodName], annotations[annotationSandboxName]),
		UID:       first(labels[labelPodUID], annotations[annotationSandboxUID]),
		Sandbox:   sandbox,
		SandboxID: annotations[annotationSandboxID],
	}
	if !sandbox {
		p.ContainerName = first(labels[labelContainerName], annotations[annotationCRIName])
	}
	restart := first(annotations[annotationRestartCnt], labels[annotationRestartCnt])
	if meta != nil {
		if p.SandboxID == "" {
			p.SandboxID = meta.Metadata.SandboxID
		}
		if c := meta.Metadata.Config; c != nil {
			if restart == "" {
				restart = c.Annotations[annotationRestartCnt]
			}
			if restart == "" && c.Metadata != nil {
				restart = strconv.FormatUint(uint64(c.Metadata.Attempt), 10)
			}
			if p.ContainerName == "" && !sandbox && c.Metadata != nil {
				p.ContainerName = c.Metadata.Name
			}
		}
	}
	if n, err := strconv.ParseUint(restart, 10, 32); err == nil {
		p.RestartCount = uint32(n)
	}
	return p
}

// classifyExit turns an exit status into an Exit: 0 is completed; 128+n
// with n a signal number is death by that signal; any other non-zero code
// is an error; an OOM event seen for the task before its exit makes it
// OOM-killed whatever the code.
func classifyExit(code uint32, at time.Time, oomSeen bool) Exit {
	e := Exit{Code: code, At: at}
	if code > 128 && code <= 128+64 {
		e.Signal = signalName(syscall.Signal(code - 128))
	}
	switch {
	case oomSeen:
		e.Reason = ExitOOMKilled
	case code == 0:
		e.Reason = ExitCompleted
	case e.Signal != "":
		e.Reason = ExitSignal
	default:
		e.Reason = ExitError
	}
	return e
}

// signalName is "KILL" for SIGKILL, "RTMIN+3" for a real-time signal, and
// the number for anything unnamed.
func signalName(s syscall.Signal) string {
	if n := unix.SignalName(s); n != "" {
		return strings.TrimPrefix(n, "SIG")
	}
	if rtmin := 34; int(s) >= rtmin && int(s) <= 64 {
		return "RTMIN+" + strconv.Itoa(int(s)-rtmin)
	}
	return strconv.Itoa(int(s))
}

// imageConfig is the part of an image config (Docker or OCI, JSON) that
// carries Docker's Healthcheck and StopSignal. Durations are in
// nanoseconds, as Docker writes them.
type imageConfig struct {
	Config struct {
		StopSignal  string `json:"StopSignal"`
		Healthcheck *struct {
			Test        []string `json:"Test"`
			Interval    int64    `json:"Interval"`
			Timeout     int64    `json:"Timeout"`
			StartPeriod int64    `json:"StartPeriod"`
			Retries     int      `json:"Retries"`
		} `json:"Healthcheck"`
	} `json:"config"`
}

// parseHealthcheck reads the Healthcheck of an image config. It returns nil
// when the image has none (or an empty Test, which means "inherit", i.e.
// none here). Negative durations or retries are invalid input.
func parseHealthcheck(b []byte) (*Healthcheck, error) {
	h, _, err := parseImageConfig(b)
	return h, err
}

// parseImageConfig reads the Healthcheck (as parseHealthcheck) and the
// StopSignal (as written: "SIGINT", "INT", "2"; "" when none) of an image
// config.
func parseImageConfig(b []byte) (*Healthcheck, string, error) {
	var c imageConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, "", fmt.Errorf("image config: %w: %v", errdefs.ErrInvalid, err)
	}
	h, err := healthcheckOf(&c)
	return h, strings.TrimSpace(c.Config.StopSignal), err
}

// healthcheckOf validates and converts the config's Healthcheck.
func healthcheckOf(c *imageConfig) (*Healthcheck, error) {
	h := c.Config.Healthcheck
	if h == nil || len(h.Test) == 0 {
		return nil, nil
	}
	if h.Interval < 0 || h.Timeout < 0 || h.StartPeriod < 0 || h.Retries < 0 {
		return nil, fmt.Errorf("image healthcheck has a negative duration or retry count: %w", errdefs.ErrInvalid)
	}
	switch h.Test[0] {
	case "NONE", "CMD", "CMD-SHELL":
	default:
		return nil, fmt.Errorf("image healthcheck test %q: want NONE, CMD or CMD-SHELL: %w", h.Test[0], errdefs.ErrInvalid)
	}
	return &Healthcheck{
		Test:        append([]string(nil), h.Test...),
		Interval:    time.Duration(h.Interval),
		Timeout:     time.Duration(h.Timeout),
		StartPeriod: time.Duration(h.StartPeriod),
		Retries:     h.Retries,
	}, nil
}

// StopSignalLabel is the container label in which containerd's client
// (ctr, nerdctl: WithImageStopSignal) records the image's STOPSIGNAL; it
// wins over the image config.
const StopSignalLabel = "io.containerd.image.config.stop-signal"

// ParseSignal reads a signal as Docker's STOPSIGNAL and --stop-signal take
// it: a name with or without "SIG", in any case ("SIGINT", "int"), or a
// number from 1 to 64.
func ParseSignal(s string) (syscall.Signal, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("signal is empty: %w", errdefs.ErrInvalid)
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > 64 {
			return 0, fmt.Errorf("signal %d: want 1 to 64: %w", n, errdefs.ErrInvalid)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("signal %q: not a signal name or number: %w", s, errdefs.ErrInvalid)
}
