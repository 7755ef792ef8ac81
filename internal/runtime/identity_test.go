package runtime

import (
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
)

func TestClassifyExit(t *testing.T) {
	at := time.Unix(1, 0)
	for _, tc := range []struct {
		code   uint32
		oom    bool
		reason ExitReason
		signal string
	}{
		{0, false, ExitCompleted, ""},
		{3, false, ExitError, ""},
		{127, false, ExitError, ""},
		{128, false, ExitError, ""},
		{137, false, ExitSignal, "KILL"},
		{143, false, ExitSignal, "TERM"},
		{130, false, ExitSignal, "INT"},
		{128 + 34, false, ExitSignal, "RTMIN+0"},
		{255, false, ExitError, ""},
		{137, true, ExitOOMKilled, "KILL"},
		{0, true, ExitOOMKilled, ""},
	} {
		got := classifyExit(tc.code, at, tc.oom)
		if got.Reason != tc.reason || got.Signal != tc.signal || got.Code != tc.code || !got.At.Equal(at) {
			t.Errorf("classifyExit(%d, oom=%v) = %+v; want reason %s signal %q", tc.code, tc.oom, got, tc.reason, tc.signal)
		}
	}
}

func TestManagerOf(t *testing.T) {
	for _, tc := range []struct {
		ns     string
		labels map[string]string
		want   Manager
	}{
		{"k8s.io", nil, ManagerKubelet},
		{"moby", map[string]string{"containerd.io/restart.status": "running"}, ManagerDocker},
		{"default", map[string]string{"containerd.io/restart.status": "running"}, ManagerContainerd},
		{"default", map[string]string{"containerd.io/restart.policy": "always"}, ManagerContainerd},
		{"default", map[string]string{"vigil.io/restart-policy": "always"}, ManagerVigil},
		{"default", nil, ManagerVigil},
	} {
		if got := managerOf(tc.ns, tc.labels); got != tc.want {
			t.Errorf("managerOf(%q, %v) = %s, want %s", tc.ns, tc.labels, got, tc.want)
		}
	}
}

func TestPodOf(t *testing.T) {
	kubelet := map[string]string{
		labelPodNamespace:  "shop",
		labelPodName:       "cart-7d9",
		labelPodUID:        "0f1e2d3c",
		labelContainerName: "app",
		labelCRIKind:       "container",
	}
	meta, err := parseCRIMetadata([]byte(`{"Version":"v1","Metadata":{"ID":"abc","Name":"app","SandboxID":"sb1",
		"Config":{"metadata":{"name":"app","attempt":2},"annotations":{"io.kubernetes.container.restartCount":"4"}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	p := podOf(kubelet, map[string]string{annotationSandboxID: "sb1", annotationCRIType: "container"}, &meta)
	want := Pod{Namespace: "shop", Name: "cart-7d9", UID: "0f1e2d3c", ContainerName: "app", SandboxID: "sb1", RestartCount: 4}
	if p == nil || *p != want {
		t.Errorf("container: podOf = %+v, want %+v", p, want)
	}

	// Without the annotation the CRI attempt counts restarts; without the
	// spec annotation the sandbox id comes from the metadata.
	meta.Metadata.Config.Annotations = nil
	p = podOf(kubelet, nil, &meta)
	if p == nil || p.RestartCount != 2 || p.SandboxID != "sb1" {
		t.Errorf("attempt fallback: podOf = %+v", p)
	}

	sandbox := map[string]string{labelPodNamespace: "shop", labelPodName: "cart-7d9", labelPodUID: "0f1e2d3c", labelCRIKind: "sandbox"}
	p = podOf(sandbox, map[string]string{annotationSandboxID: "sb1", annotationCRIType: "sandbox"}, nil)
	want = Pod{Namespace: "shop", Name: "cart-7d9", UID: "0f1e2d3c", Sandbox: true, SandboxID: "sb1"}
	if p == nil || *p != want {
		t.Errorf("sandbox: podOf = %+v, want %+v", p, want)
	}

	// CRI annotations alone (labels stripped) still identify the pod.
	p = podOf(nil, map[string]string{annotationCRIType: "container", annotationSandboxName: "n", annotationSandboxNS: "ns",
		annotationSandboxUID: "u", annotationCRIName: "c", annotationSandboxID: "s"}, nil)
	want = Pod{Namespace: "ns", Name: "n", UID: "u", ContainerName: "c", SandboxID: "s"}
	if p == nil || *p != want {
		t.Errorf("annotations only: podOf = %+v, want %+v", p, want)
	}

	if p := podOf(map[string]string{"app": "x"}, nil, nil); p != nil {
		t.Errorf("plain container: podOf = %+v, want nil", p)
	}
}

func TestParseSpec(t *testing.T) {
	s, hostNet, err := parseSpec([]byte(`{"annotations":{"a":"b"},"linux":{"cgroupsPath":"/default/web","namespaces":[{"type":"pid"},{"type":"network","path":"/var/run/netns/x"}]}}`))
	if err != nil || s.cgroupsPath() != "/default/web" || hostNet || s.Annotations["a"] != "b" {
		t.Errorf("parseSpec = %+v, %v, %v", s, hostNet, err)
	}
	_, hostNet, err = parseSpec([]byte(`{"linux":{"namespaces":[{"type":"pid"}]}}`))
	if err != nil || !hostNet {
		t.Errorf("spec without a network namespace: hostNet = %v, %v", hostNet, err)
	}
	if _, _, err := parseSpec([]byte(`{`)); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("bad spec: err = %v", err)
	}
}

func TestParseHealthcheck(t *testing.T) {
	h, err := parseHealthcheck([]byte(`{"architecture":"amd64","config":{"Healthcheck":{"Test":["CMD-SHELL","wget -q -O- http://localhost:8080/healthz"],
		"Interval":5000000000,"Timeout":2000000000,"StartPeriod":1000000000,"Retries":3}}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := Healthcheck{Test: []string{"CMD-SHELL", "wget -q -O- http://localhost:8080/healthz"}, Interval: 5 * time.Second,
		Timeout: 2 * time.Second, StartPeriod: time.Second, Retries: 3}
	if h == nil || h.Interval != want.Interval || h.Timeout != want.Timeout || h.StartPeriod != want.StartPeriod ||
		h.Retries != want.Retries || len(h.Test) != 2 || h.Test[1] != want.Test[1] {
		t.Errorf("parseHealthcheck = %+v, want %+v", h, want)
	}
	for _, none := range []string{`{"config":{}}`, `{}`, `{"config":{"Healthcheck":{"Test":[]}}}`} {
		if h, err := parseHealthcheck([]byte(none)); h != nil || err != nil {
			t.Errorf("parseHealthcheck(%s) = %+v, %v; want nil, nil", none, h, err)
		}
	}
	for _, bad := range []string{`{`, `{"config":{"Healthcheck":{"Test":["CMD"],"Interval":-1}}}`, `{"config":{"Healthcheck":{"Test":["RUN","x"]}}}`} {
		if _, err := parseHealthcheck([]byte(bad)); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("parseHealthcheck(%s): err = %v, want ErrInvalid", bad, err)
		}
	}
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]syscall.Signal{
		"SIGINT": syscall.SIGINT, "INT": syscall.SIGINT, "int": syscall.SIGINT, " SIGTERM ": syscall.SIGTERM,
		"9": syscall.SIGKILL, "64": syscall.Signal(64),
	} {
		if got, err := ParseSignal(in); err != nil || got != want {
			t.Errorf("ParseSignal(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0", "65", "-1", "SIGNOPE", "KILLME"} {
		if _, err := ParseSignal(bad); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("ParseSignal(%q): err = %v, want ErrInvalid", bad, err)
		}
	}
}

func TestParseImageConfigStopSignal(t *testing.T) {
	_, sig, err := parseImageConfig([]byte(`{"config":{"StopSignal":"SIGINT","Healthcheck":{"Test":["NONE"]}}}`))
	if err != nil || sig != "SIGINT" {
		t.Fatalf("stop signal %q, %v; want SIGINT", sig, err)
	}
	if _, sig, err := parseImageConfig([]byte(`{"config":{}}`)); err != nil || sig != "" {
		t.Fatalf("no stop signal: %q, %v", sig, err)
	}
}
