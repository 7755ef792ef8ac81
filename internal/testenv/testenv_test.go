package testenv

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/vishvananda/netlink"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestMain(m *testing.M) { os.Exit(Run(m)) }

func nsContext(t *testing.T, ns string) context.Context {
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), ns), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestBusyboxEchoExitsZero(t *testing.T) {
	t.Parallel()
	e := Containerd(t)
	ref := e.BusyboxImage(t, "testenv")
	ctr, task := e.RunContainer(t, ContainerSpec{Namespace: "testenv", Image: ref, Args: []string{"sh", "-c", "echo hello; exit 0"}})
	ctx := nsContext(t, "testenv")
	statusC, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case st := <-statusC:
		if code, _, err := st.Result(); err != nil || code != 0 {
			t.Fatalf("echo exited with %d, %v; want 0", code, err)
		}
	case <-ctx.Done():
		t.Fatal("echo did not exit")
	}
	b, err := os.ReadFile(e.LogPathOf("testenv", ctr.ID()))
	if err != nil || !strings.Contains(string(b), "hello") {
		t.Fatalf("log of the task = %q, %v; want hello", b, err)
	}
}

func TestNonZeroExitIsObserved(t *testing.T) {
	t.Parallel()
	e := Containerd(t)
	ref := e.WorkloadImage(t, "testenv")
	_, task := e.RunContainer(t, ContainerSpec{Namespace: "testenv", Image: ref, Args: []string{"exit", "3"}})
	statusC, err := task.Wait(nsContext(t, "testenv"))
	if err != nil {
		t.Fatal(err)
	}
	if code := (<-statusC).ExitCode(); code != 3 {
		t.Fatalf("workload exit 3 exited with %d", code)
	}
}

func TestPodHasKubeletLabelsIPAndAnswersHealthz(t *testing.T) {
	t.Parallel()
	e := Containerd(t)
	// Imported elsewhere: RunPod imports it into k8s.io for CRI.
	ref := e.WorkloadImage(t, "testenv")
	pod := e.RunPod(t, PodSpec{Namespace: "shop", Name: "web-0", Containers: []PodContainer{
		{Name: "app", Image: ref, Args: []string{"serve", "--http", ":8080"}, Labels: map[string]string{"vigil.io/health-http": "http://:8080/healthz"}},
	}})
	if net.ParseIP(pod.IP) == nil {
		t.Fatalf("pod IP %q", pod.IP)
	}
	_, subnet, _ := net.ParseCIDR(e.Subnet)
	if !subnet.Contains(net.ParseIP(pod.IP)) {
		t.Fatalf("pod IP %s outside the instance's subnet %s", pod.IP, e.Subnet)
	}

	c := e.Client(t)
	ctr, err := c.LoadContainer(nsContext(t, "k8s.io"), pod.ContainerIDs["app"])
	if err != nil {
		t.Fatal(err)
	}
	labels, err := ctr.Labels(nsContext(t, "k8s.io"))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		LabelPodName: "web-0", LabelPodNamespace: "shop", LabelPodUID: pod.UID,
		LabelContainerName: "app", "vigil.io/health-http": "http://:8080/healthz",
	} {
		if labels[k] != v {
			t.Errorf("label %s = %q, want %q (all: %v)", k, labels[k], v, labels)
		}
	}
	// The kubelet's annotations reach CRI (not the OCI spec, unless the
	// runtime's container_annotations lets them through).
	st, err := e.CRI(t).ContainerStatus(nsContext(t, "k8s.io"), &runtimeapi.ContainerStatusRequest{ContainerId: pod.ContainerIDs["app"]})
	if err != nil {
		t.Fatal(err)
	}
	if got := st.GetStatus().GetAnnotations()[AnnotationRestartCnt]; got != "0" {
		t.Errorf("annotation %s = %q, want 0", AnnotationRestartCnt, got)
	}
	info, err := ctr.Info(nsContext(t, "k8s.io"))
	if err != nil {
		t.Fatal(err)
	}
	// And the containerd container carries them in CRI's metadata extension.
	ext, ok := info.Extensions[CRIMetadataExtension]
	if !ok {
		t.Fatalf("container has no %s extension", CRIMetadataExtension)
	}
	var meta struct {
		Metadata struct {
			Config struct {
				Annotations map[string]string `json:"annotations"`
			}
		}
	}
	if err := json.Unmarshal(ext.GetValue(), &meta); err != nil {
		t.Fatal(err)
	}
	if got := meta.Metadata.Config.Annotations[AnnotationRestartCnt]; got != "0" {
		t.Errorf("%s in %s = %q, want 0", AnnotationRestartCnt, CRIMetadataExtension, got)
	}

	// From inside the pod's network namespace, on the pod's loopback.
	httpc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := InNetNS(pod.NetNSPath, func() error {
				var err error
				conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
	defer httpc.CloseIdleConnections()
	var lastErr error
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := httpc.Get("http://127.0.0.1:8080/healthz")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("/healthz = %d %q, want 200", resp.StatusCode, body)
			}
			// And from the host, over the instance's bridge.
			hostc := &http.Client{Timeout: 2 * time.Second}
			resp, err = hostc.Get("http://" + net.JoinHostPort(pod.IP, "8080") + "/healthz")
			if err != nil {
				t.Fatalf("/healthz from the host via the bridge: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("/healthz from the host = %d, want 200", resp.StatusCode)
			}
			return
		}
		lastErr = err
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("/healthz in the pod's netns never answered: %v", lastErr)
}

func TestHealthcheckImageCarriesHealthcheck(t *testing.T) {
	t.Parallel()
	e := Containerd(t)
	want := DockerHealthcheck{
		Test:        []string{"CMD-SHELL", "wget -q -O- http://127.0.0.1:8080/healthz"},
		Interval:    2 * time.Second,
		Timeout:     time.Second,
		StartPeriod: 3 * time.Second,
		Retries:     2,
	}
	ref := e.HealthcheckImage(t, "testenv", want)
	if again := e.HealthcheckImage(t, "testenv", want); again != ref {
		t.Fatalf("same healthcheck, refs %s and %s", ref, again)
	}
	ctx := nsContext(t, "testenv")
	c := e.Client(t)
	img, err := c.GetImage(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := img.Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := content.ReadBlob(ctx, img.ContentStore(), desc)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Config struct {
			Healthcheck map[string]any
		} `json:"config"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	hc := cfg.Config.Healthcheck
	// Docker's encoding: nanoseconds as JSON numbers.
	if hc["Interval"] != float64(2e9) || hc["Timeout"] != float64(1e9) || hc["StartPeriod"] != float64(3e9) || hc["Retries"] != float64(2) {
		t.Fatalf("Healthcheck in the image config = %v", hc)
	}
	if test, _ := hc["Test"].([]any); len(test) != 2 || test[0] != "CMD-SHELL" {
		t.Fatalf("Healthcheck.Test = %v", hc["Test"])
	}
}

func TestNetNSKeepsNetworkAcrossTaskRestart(t *testing.T) {
	t.Parallel()
	e := Containerd(t)
	n := NewNetNS(t)
	ref := e.WorkloadImage(t, "testenv")
	ctr, task := e.RunContainer(t, ContainerSpec{Namespace: "testenv", Image: ref, NetNSPath: n.Path, Args: []string{"serve", "--tcp", ":9000"}})
	dial := func() error {
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := n.Do(func() error {
				c, err := net.DialTimeout("tcp", "127.0.0.1:9000", time.Second)
				if err == nil {
					c.Close()
				}
				return err
			})
			if err == nil || time.Now().After(deadline) {
				return err
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if err := dial(); err != nil {
		t.Fatalf("dial the workload in its netns: %v", err)
	}
	ctx := nsContext(t, "testenv")
	statusC, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-statusC
	if _, err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	task2, err := ctr.NewTask(ctx, cio.LogFile(e.LogPathOf("testenv", ctr.ID())))
	if err != nil {
		t.Fatal(err)
	}
	if err := task2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := dial(); err != nil {
		t.Fatalf("dial the restarted workload in the same netns: %v", err)
	}

	// Attached to the bridge, the namespace is reachable from the host.
	ip := e.AttachNetNS(t, n)
	_, subnet, _ := net.ParseCIDR(e.Subnet)
	if !subnet.Contains(net.ParseIP(ip)) {
		t.Fatalf("attached address %s outside %s", ip, e.Subnet)
	}
	c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, "9000"), 5*time.Second)
	if err != nil {
		t.Fatalf("dial the workload from the host at its attached address: %v", err)
	}
	c.Close()
}

func TestRestartKeepsTasksRunning(t *testing.T) {
	// Not parallel: it takes containerd away from everyone for a moment.
	e := Containerd(t)
	ref := e.BusyboxImage(t, "testenv")
	ctr, task := e.RunContainer(t, ContainerSpec{Namespace: "testenv", Image: ref, Args: []string{"sleep", "600"}})
	pid := int(task.Pid())
	e.Restart(t)
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("task process %d gone after containerd restart: %v", pid, err)
	}
	ctx := nsContext(t, "testenv")
	c := e.Client(t)
	loaded, err := c.LoadContainer(ctx, ctr.ID())
	if err != nil {
		t.Fatal(err)
	}
	tk, err := loaded.Task(ctx, nil)
	if err != nil {
		t.Fatalf("task after restart: %v", err)
	}
	st, err := tk.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != client.Running || int(tk.Pid()) != pid {
		t.Fatalf("after restart task is %v with pid %d, want running with pid %d", st.Status, tk.Pid(), pid)
	}
}

// TestRestartMonitorLabels: a container labelled for containerd's restart
// monitor starts with the task RunContainer made (the monitor, ticking
// between create and start, used to replace it: "cannot start a container
// that has stopped"), the labels are in force (the monitor brings a killed
// task back), and removing the container works while the monitor watches.
func TestRestartMonitorLabels(t *testing.T) {
	t.Parallel()
	e := Containerd(t)
	ref := e.BusyboxImage(t, "testenv")
	ctr, task := e.RunContainer(t, ContainerSpec{Namespace: "testenv", Image: ref, Args: []string{"sleep", "600"},
		Labels: map[string]string{"app": "x", "containerd.io/restart.status": "running"}})
	ctx := nsContext(t, "testenv")
	labels, err := ctr.Labels(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if labels["app"] != "x" || labels["containerd.io/restart.status"] != "running" {
		t.Fatalf("labels = %v", labels)
	}
	first := task.Pid()
	exited, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited
	// containerd's monitor ticks every 10 s.
	deadline := time.Now().Add(25 * time.Second)
	for {
		tk, err := ctr.Task(ctx, nil)
		if err == nil && tk.Pid() != first {
			var st client.Status
			if st, err = tk.Status(ctx); err == nil && st.Status == client.Running {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd's restart monitor did not start the killed task again (last: %v)", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := deleteContainer(ctx, ctr); err != nil {
		t.Fatalf("delete a monitored container: %v", err)
	}
	if _, err := e.Client(t).LoadContainer(ctx, ctr.ID()); !isNotFound(err) {
		t.Fatalf("container after delete: err = %v, want not found", err)
	}
}

func TestSanitize(t *testing.T) {
	for in, want := range map[string]string{
		"TestA/sub_case#01":     "TestA-sub-case-01",
		"///":                   "test",
		strings.Repeat("a", 60): strings.Repeat("a", 40),
	} {
		if got := sanitize(in); got != want {
			t.Errorf("sanitize(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestUnescapeMountPath(t *testing.T) {
	if got := unescapeMountPath(`/tmp/a\040b\134c`); got != `/tmp/a b\c` {
		t.Fatalf("got %q", got)
	}
}

// deferredTB holds back cleanups so that teardown, not the test's cleanup,
// meets what RunContainer and RunPod made; its Errorf only logs, for the
// cleanups that run against a containerd that is already gone.
type deferredTB struct {
	testing.TB
	cleanups []func()
}

func (d *deferredTB) Cleanup(f func())               { d.cleanups = append(d.cleanups, f) }
func (d *deferredTB) Errorf(format string, a ...any) { d.Logf("after teardown: "+format, a...) }

func TestTeardownLeavesNothing(t *testing.T) {
	t.Parallel()
	Require(t)
	e, err := newEnv()
	if err != nil {
		t.Fatal(err)
	}
	d := &deferredTB{TB: t}
	ref := e.WorkloadImage(d, "k8s.io")
	_, task := e.RunContainer(d, ContainerSpec{Namespace: "k8s.io", Image: ref})
	pod := e.RunPod(d, PodSpec{Name: "left-behind", Containers: []PodContainer{{Name: "app", Image: ref, Args: []string{"serve", "--tcp", ":80"}}}})
	pids := []int{int(task.Pid())}
	shims := shimPIDs(e.Address)
	if len(shims) < 2 {
		t.Fatalf("want a shim for the container and one for the pod, found %v", shims)
	}
	if log, err := os.ReadFile(e.LogPath); err == nil {
		for _, line := range strings.Split(string(log), "\n") {
			if strings.Contains(line, "level=error") || strings.Contains(line, "level=warn") {
				t.Logf("containerd: %s", line)
			}
		}
	}

	if err := e.teardown(); err != nil {
		t.Fatalf("teardown: %v", err)
	}
	for i := len(d.cleanups) - 1; i >= 0; i-- {
		d.cleanups[i]()
	}

	for _, pid := range append(pids, shims...) {
		if alive(pid) {
			t.Errorf("process %d survived teardown: %v", pid, cmdline(pid))
		}
	}
	for _, p := range []string{e.Dir, pod.NetNSPath} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s survived teardown (stat: %v)", p, err)
		}
	}
	if _, err := netlink.LinkByName(e.Bridge); err == nil {
		t.Errorf("bridge %s survived teardown", e.Bridge)
	}
	if left, _ := filepath.Glob("/sys/fs/cgroup/*" + e.CgroupParent); len(left) > 0 {
		t.Errorf("cgroups survived teardown: %v", left)
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(mi), e.Dir) {
		t.Errorf("mounts under %s survived teardown", e.Dir)
	}
}

func TestSweepCleansUpAfterADeadTestBinary(t *testing.T) {
	t.Parallel()
	Require(t)
	e, err := newEnv()
	if err != nil {
		t.Fatal(err)
	}
	ref := e.BusyboxImage(t, "sweep")
	d := &deferredTB{TB: t}
	ctr, task := e.RunContainer(d, ContainerSpec{Namespace: "sweep", Image: ref, Args: []string{"sleep", "600"}})
	pid := int(task.Pid())
	// A test binary that dies leaves its lock behind unheld.
	e.inst.lock.Close()
	e.harness.Close()
	sweepStale()
	if _, err := os.Stat(e.Dir); !os.IsNotExist(err) {
		t.Errorf("instance dir survived the sweep (stat: %v)", err)
	}
	if alive(pid) {
		t.Errorf("task %d survived the sweep", pid)
	}
	if len(shimPIDs(e.Address)) > 0 {
		t.Errorf("shims survived the sweep")
	}
	select {
	case <-e.inst.exited:
	case <-time.After(5 * time.Second):
		t.Errorf("containerd survived the sweep")
	}
	if _, err := netlink.LinkByName(e.Bridge); err == nil {
		t.Errorf("bridge %s survived the sweep", e.Bridge)
	}
	if _, err := os.Stat(filepath.Join(runcRoot, "sweep", ctr.ID())); !os.IsNotExist(err) {
		t.Errorf("runc state of the killed task survived the sweep (stat: %v)", err)
	}
}

// TestImageImportRetriedAfterFailure: a failed import is not remembered,
// and an import does not depend on its caller's context being live.
func TestImageImportRetriedAfterFailure(t *testing.T) {
	t.Parallel()
	e := Containerd(t)
	const ns = "testenv-import-retry"
	good, err := busyboxImage()
	if err != nil {
		t.Fatal(err)
	}
	good.ref = "docker.io/vigil/import-retry:test"
	bad := good
	bad.layers = []*layer{{data: good.layers[0].data, diffID: "sha256:" + strings.Repeat("0", 64)}}
	if err := e.importImage(context.Background(), ns, bad); err == nil {
		t.Fatal("import of a layer with a wrong diff ID succeeded")
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.importImage(cancelled, ns, good); err != nil {
		t.Fatalf("import after a failed one, caller's context cancelled: %v", err)
	}
	if _, err := e.Client(t).GetImage(nsContext(t, ns), good.ref); err != nil {
		t.Fatalf("imported image: %v", err)
	}
}
