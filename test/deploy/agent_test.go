package deploy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	appsv1 "k8s.io/api/apps/v1"

	"github.com/vigilhq/vigil/internal/testenv"
	"github.com/vigilhq/vigil/test/chain"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

const nodeName = "deploy-node"

func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test file")
	}
	return filepath.Dir(filepath.Dir(filepath.Dir(file)))
}

// agentDaemonSet reads the shipped DaemonSet.
func agentDaemonSet(t *testing.T) *appsv1.DaemonSet {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/daemonset/agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := decodeStrict(firstDocument(b), &ds); err != nil {
		t.Fatalf("deploy/daemonset/agent.yaml: %v", err)
	}
	if ds.Kind != "DaemonSet" || ds.Name != "vigil-agent" {
		t.Fatalf("deploy/daemonset/agent.yaml starts with %s %s, want the vigil-agent DaemonSet", ds.Kind, ds.Name)
	}
	return &ds
}

// releaseBinaries builds the agent, the aggregator and vigil-image as
// `make build` does, into one directory.
func releaseBinaries(t *testing.T) string {
	t.Helper()
	bin := t.TempDir()
	for name, pkg := range map[string]string{"vigil-agent": "cmd/agent", "vigil-aggregator": "cmd/aggregator", "vigil-image": "cmd/vigil-image"} {
		testenv.BuildRelease(t, "github.com/vigilhq/vigil/"+pkg, filepath.Join(bin, name))
	}
	return bin
}

// agentImage builds the agent's image from the release binary with
// cmd/vigil-image, as `make image` does, and imports it with ctr into ns.
func agentImage(t *testing.T, e *testenv.Env, bin, ns string) string {
	t.Helper()
	out := t.TempDir()
	b, err := exec.Command(filepath.Join(bin, "vigil-image"), "-bin", bin, "-out", out, "-only", "vigil-agent", "-tag", "deploy-test").CombinedOutput()
	if err != nil {
		t.Fatalf("vigil-image: %v\n%s", err, b)
	}
	t.Logf("image: %s", strings.TrimSpace(string(b)))
	if b, err := exec.Command("ctr", "--address", e.Address, "--namespace", ns, "images", "import", filepath.Join(out, "vigil-agent.tar")).CombinedOutput(); err != nil {
		t.Fatalf("ctr images import: %v\n%s", err, b)
	}
	return "ghcr.io/vigilhq/vigil-agent:deploy-test"
}

// hasFlags says whether a binary's -h lists every flag named.
func hasFlags(t *testing.T, bin string, flags ...string) bool {
	t.Helper()
	out, _ := exec.Command(bin, "-h").CombinedOutput()
	for _, f := range flags {
		if !strings.Contains(string(out), "-"+f+" ") && !strings.Contains(string(out), "-"+f+"\n") {
			return false
		}
	}
	return true
}

// startAggregator runs the aggregator's release binary on loopback ports
// with args (its security: TLS and bootstrap, or --insecure).
func startAggregator(t *testing.T, bin string, args ...string) (grpcAddr, httpAddr string) {
	t.Helper()
	var err error
	if grpcAddr, err = chain.FreeAddr(); err != nil {
		t.Fatal(err)
	}
	if httpAddr, err = chain.FreeAddr(); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "aggregator.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, "vigil-aggregator"), append([]string{"--grpc-listen", grpcAddr, "--http-listen", httpAddr}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			t.Logf("aggregator log:\n%s", chain.LogTail(logPath, 40))
		}
	})
	return grpcAddr, httpAddr
}

// overrideArgs points the manifest's --aggregator at the test's loopback
// aggregator and puts --metrics-listen and --gossip-listen on free loopback
// ports (the host's network is shared with every other test; the gossip
// seeds' DNS name resolves nowhere here, which the agent only logs), and
// adds fast intervals. Every
// other argument stays as the manifest says, TLS and bootstrap included;
// with insecure (binaries without bootstrap yet) the credentials are left
// out for --insecure.
func overrideArgs(t *testing.T, args []string, aggregator, metrics string, insecure bool) []string {
	t.Helper()
	gossipAddr, err := chain.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	replace := map[string]string{"aggregator": aggregator, "metrics-listen": metrics, "gossip-listen": gossipAddr}
	drop := map[string]bool{"tls-ca": insecure, "tls-server-name": insecure, "bootstrap-token-file": insecure}
	var out []string
	for _, a := range args {
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		switch {
		case drop[name]:
			t.Logf("arg %s: left out (the binaries have no bootstrap yet; the aggregator runs --insecure)", a)
		case replace[name] != "":
			out = append(out, "--"+name+"="+replace[name])
		default:
			out = append(out, a)
		}
	}
	if insecure {
		out = append(out, "--insecure")
	}
	return append(out, "--interval=1s", "--restart-backoff-initial=100ms", "--log-level=debug")
}

// TestAgentAsDaemonSetContainer runs the agent's image as a container with
// the DaemonSet's pod spec, on the private containerd, and checks from
// outside that it does its job under that privilege: it sees the other
// containers, restarts one under vigil.io/restart-policy=always, probes one
// over HTTP inside its network namespace and reads that namespace's links,
// streams to the aggregator, and answers its readiness and liveness probe.
// It also checks that the container got exactly the capabilities, seccomp
// filter, no_new_privs and read-only root that the manifest asks for.
func TestAgentAsDaemonSetContainer(t *testing.T) {
	e := testenv.Containerd(t)
	if _, err := exec.LookPath("ctr"); err != nil {
		t.Fatalf("ctr not installed (scripts/install-prereqs.sh installs containerd): %v", err)
	}
	ds := agentDaemonSet(t)
	agentNS := fmt.Sprintf("vigil-deploy-agent-%d", os.Getpid())
	workNS := fmt.Sprintf("vigil-deploy-work-%d", os.Getpid())
	bin := releaseBinaries(t)
	ref := agentImage(t, e, bin, agentNS)

	// The aggregator as the manifests expect it: TLS with a serving
	// certificate for the manifest's --tls-server-name, node bootstrap with a
	// token; or, while the binaries lack bootstrap, --insecure.
	bootstrap := hasFlags(t, filepath.Join(bin, "vigil-agent"), "bootstrap-token-file") &&
		hasFlags(t, filepath.Join(bin, "vigil-aggregator"), "ca-cert", "ca-key", "bootstrap-tokens-file", "data-dir")
	caFiles := map[string]string{"ca.crt": "stand-in\n"}
	tokenFiles := map[string]string{"token": "stand-in\n"}
	aggArgs := []string{"--insecure"}
	if bootstrap {
		pkiDir := t.TempDir()
		ca := newTestCA(t, pkiDir)
		token := fmt.Sprintf("%x", time.Now().UnixNano()) + "-deploy-test-token"
		tokens := filepath.Join(pkiDir, "bootstrap-tokens")
		if err := os.WriteFile(tokens, []byte(token+" daemonset\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		caFiles = map[string]string{"ca.crt": string(ca.CertPEM)}
		tokenFiles = map[string]string{"token": token + "\n"}
		aggArgs = []string{"--tls-cert", ca.ServerCert, "--tls-key", ca.ServerKey, "--tls-ca", ca.CertFile,
			"--ca-cert", ca.CertFile, "--ca-key", ca.KeyFile, "--bootstrap-tokens-file", tokens, "--data-dir", t.TempDir()}
		t.Log("the binaries have node bootstrap: the agent gets its certificate with the manifest's token and CA")
	} else {
		t.Log("the binaries have no node bootstrap yet: the aggregator runs --insecure and the agent's credentials are left out")
	}
	grpcAddr, httpAddr := startAggregator(t, bin, aggArgs...)
	metricsAddr, err := chain.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}

	// The workloads the agent must handle, started before it (it must find
	// them in its first inventory) in a namespace of their own.
	work := e.WorkloadImage(t, workNS)
	victim, _ := e.RunContainer(t, testenv.ContainerSpec{
		Namespace: workNS, ID: "victim", Image: work, Args: []string{"sleep"},
		Labels: map[string]string{"vigil.io/restart-policy": "always"},
	})
	netns := testenv.NewNetNS(t)
	e.AttachNetNS(t, netns)
	e.RunContainer(t, testenv.ContainerSpec{
		Namespace: workNS, ID: "web", Image: work, Args: []string{"serve", "--http", ":8080"}, NetNSPath: netns.Path,
		Labels: map[string]string{"vigil.io/health-http": "http://:8080/healthz", "vigil.io/health-interval": "1s"},
	})

	// The pod spec, translated.
	stateDir := t.TempDir()
	stand := func(files map[string]string) string {
		dir := t.TempDir()
		for f, content := range files {
			if err := os.WriteFile(filepath.Join(dir, f), []byte(content), 0o400); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	tr, err := Translate(ds.Spec.Template.Spec, "agent", Host{
		Paths: map[string]string{
			"/run/containerd": filepath.Dir(e.Address),
			"/var/lib/vigil":  stateDir,
		},
		Volumes: map[string]string{
			"ca":              stand(caFiles),
			"bootstrap-token": stand(tokenFiles),
			"gossip-key":      stand(map[string]string{"keys": "9Mll7ZCGr63gQrdv6ckJy0Ztn1zwa6VAKTu7H6FyCGM=\n"}),
		},
		NodeName: nodeName,
		PodIP:    "127.0.0.1",
	})
	if err != nil {
		t.Fatalf("translate the DaemonSet's pod spec: %v", err)
	}
	if filepath.Base(e.Address) != "containerd.sock" {
		t.Fatalf("the private containerd's socket is %s: the manifest's --containerd names containerd.sock", e.Address)
	}
	args := overrideArgs(t, tr.Args, grpcAddr, metricsAddr, !bootstrap)
	sort.Strings(tr.Capabilities)
	t.Logf("agent args: %q", args)
	t.Logf("capabilities: %v", tr.Capabilities)
	for _, m := range tr.Mounts {
		t.Logf("mount %s -> %s %v", m.Source, m.Destination, m.Options)
	}

	c := e.Client(t)
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), agentNS), 2*time.Minute)
	defer cancel()
	img, err := c.GetImage(ctx, ref)
	if err != nil {
		t.Fatalf("imported image %s: %v", ref, err)
	}
	if err := img.Unpack(ctx, "overlayfs"); err != nil {
		t.Fatal(err)
	}
	opts := append([]oci.SpecOpts{
		oci.WithImageConfigArgs(img, args),
		oci.WithHostname(nodeName),
		oci.WithCgroup(filepath.Join(e.CgroupParent, agentNS, "vigil-agent")),
	}, tr.Opts...)
	agent, err := c.NewContainer(ctx, "vigil-agent",
		client.WithImage(img),
		client.WithSnapshotter("overlayfs"),
		client.WithNewSnapshot("vigil-agent-snapshot", img),
		client.WithNewSpec(opts...),
	)
	if err != nil {
		t.Fatalf("create the agent's container: %v", err)
	}
	logPath := filepath.Join(t.TempDir(), "agent.log")
	task, err := agent.NewTask(ctx, cio.LogFile(logPath))
	if err != nil {
		t.Fatalf("create the agent's task: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), agentNS), 30*time.Second)
		defer cancel()
		if st, err := task.Status(ctx); err == nil && st.Status == client.Running {
			ch, _ := task.Wait(ctx)
			_ = task.Kill(ctx, syscall.SIGTERM)
			select {
			case <-ch:
			case <-time.After(20 * time.Second):
				_ = task.Kill(ctx, syscall.SIGKILL)
				<-ch
			}
		}
		if _, err := task.Delete(ctx, client.WithProcessKill); err != nil {
			t.Logf("delete the agent's task: %v", err)
		}
		if err := agent.Delete(ctx, client.WithSnapshotCleanup); err != nil {
			t.Errorf("delete the agent's container: %v", err)
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", chain.LogTail(logPath, 60))
		}
	})
	if err := task.Start(ctx); err != nil {
		t.Fatalf("start the agent: %v", err)
	}

	must(t, t.Run("privilege as the manifest says", func(t *testing.T) {
		status := procStatus(t, int(task.Pid()))
		want := capMask(t, tr.Capabilities)
		for _, f := range []string{"CapEff", "CapPrm", "CapBnd"} {
			if got, err := strconv.ParseUint(status[f], 16, 64); err != nil || got != want {
				t.Errorf("%s %s, want %016x (%v)", f, status[f], want, tr.Capabilities)
			}
		}
		if status["NoNewPrivs"] != "1" {
			t.Errorf("NoNewPrivs %q, want 1 (allowPrivilegeEscalation: false)", status["NoNewPrivs"])
		}
		if status["Seccomp"] != "2" {
			t.Errorf("Seccomp %q, want 2, a filter (RuntimeDefault)", status["Seccomp"])
		}
		if !rootReadOnly(t, int(task.Pid())) {
			t.Error("the agent's root filesystem is writable (readOnlyRootFilesystem: true)")
		}
		if uid := strings.Fields(status["Uid"]); len(uid) == 0 || uid[0] != "0" {
			t.Errorf("Uid %q, want 0", status["Uid"])
		}
	}))

	probe := ds.Spec.Template.Spec.Containers[0].ReadinessProbe.HTTPGet.Path
	agentURL := "http://" + metricsAddr
	must(t, t.Run("ready on its health endpoint", func(t *testing.T) {
		waitFor(t, 30*time.Second, "the agent's "+probe+" to say containerd is available", func() (bool, string) {
			body, code := get(agentURL + probe)
			return code == http.StatusOK && strings.Contains(body, "containerd: available"), fmt.Sprintf("%d %q", code, body)
		})
	}))

	must(t, t.Run("sees the other containers", func(t *testing.T) {
		waitFor(t, 30*time.Second, "vigil_container_info of victim and web on the agent's /metrics", func() (bool, string) {
			body, _ := get(agentURL + "/metrics")
			return series(body, "vigil_container_info", `container="victim"`, `namespace="`+workNS+`"`) != "" &&
				series(body, "vigil_container_info", `container="web"`) != "", grepLines(body, "vigil_container_info")
		})
	}))

	must(t, t.Run("probes inside a container's network namespace and reads its links", func(t *testing.T) {
		waitFor(t, 30*time.Second, "web healthy (an HTTP probe from inside its namespace: setns)", func() (bool, string) {
			body, _ := get(agentURL + "/metrics")
			return strings.HasSuffix(series(body, "vigil_container_health_status", `container="web"`, `status="healthy"`), " 1"),
				grepLines(body, "vigil_container_health_status")
		})
		waitFor(t, 30*time.Second, "network series of web's namespace (netlink inside it)", func() (bool, string) {
			body, _ := get(agentURL + "/metrics")
			for _, l := range strings.Split(body, "\n") {
				if strings.HasPrefix(l, "vigil_container_network_receive_bytes_total{") && strings.Contains(l, `container="web"`) && !strings.Contains(l, `interface="lo"`) {
					return true, l
				}
			}
			return false, grepLines(body, "vigil_container_network_receive_bytes_total")
		})
	}))

	must(t, t.Run("restarts a container under its policy", func(t *testing.T) {
		wctx := namespaces.WithNamespace(context.Background(), workNS)
		vt, err := victim.Task(wctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		oldPID := vt.Pid()
		if err := vt.Kill(wctx, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, "victim running again in a new task", func() (bool, string) {
			nt, err := victim.Task(wctx, nil)
			if err != nil {
				return false, err.Error()
			}
			st, err := nt.Status(wctx)
			if err != nil {
				return false, err.Error()
			}
			return st.Status == client.Running && nt.Pid() != oldPID, fmt.Sprintf("pid %d (was %d), %s", nt.Pid(), oldPID, st.Status)
		})
		waitFor(t, 30*time.Second, "vigil_container_restarts_total of victim at 1", func() (bool, string) {
			body, _ := get(agentURL + "/metrics")
			return strings.HasSuffix(series(body, "vigil_container_restarts_total", `container="victim"`), " 1"), grepLines(body, "vigil_container_restarts_total")
		})
	}))

	must(t, t.Run("streams to the aggregator", func(t *testing.T) {
		waitFor(t, 30*time.Second, "the node and its containers on the aggregator's /metrics", func() (bool, string) {
			body, _ := get("http://" + httpAddr + "/metrics")
			return strings.HasSuffix(series(body, "vigil_node_up", `node="`+nodeName+`"`), " 1") &&
					strings.HasSuffix(series(body, "vigil_container_restarts_total", `node="`+nodeName+`"`, `container="victim"`), " 1") &&
					series(body, "vigil_container_info", `node="`+nodeName+`"`, `container="web"`) != "",
				grepLines(body, "vigil_node_up") + grepLines(body, "vigil_container_restarts_total")
		})
	}))

	must(t, t.Run("gossips with the manifest's key and port", func(t *testing.T) {
		// Alone here: no peer answers, so the agent's own gossip metrics
		// say it runs (encrypted with the Secret's key: it would not have
		// started with an unreadable one) and its view is empty.
		waitFor(t, 30*time.Second, "the agent's gossip member on its /metrics", func() (bool, string) {
			body, _ := get(agentURL + "/metrics/self")
			return strings.HasSuffix(series(body, "vigil_agent_gossip_members", `state="alive"`), " 0"),
				grepLines(body, "vigil_agent_gossip_members") + chain.LogTail(logPath, 20)
		})
		if log := chain.LogTail(logPath, 400); !strings.Contains(log, `msg="gossip started"`) || !strings.Contains(log, "encrypted=true") {
			t.Fatalf("the agent's log does not say gossip started encrypted:\n%s", log)
		}
	}))

	must(t, t.Run("keeps its state in the host's state dir", func(t *testing.T) {
		entries, err := os.ReadDir(stateDir)
		if err != nil || len(entries) == 0 {
			t.Fatalf("state dir %s holds %d entries (%v): the agent wrote nothing to its hostPath", stateDir, len(entries), err)
		}
		if bootstrap {
			certs, _ := filepath.Glob(filepath.Join(stateDir, "pki", "*"))
			if len(certs) < 2 {
				t.Fatalf("state dir has %v under pki/: want the node's key and its issued certificate", certs)
			}
			t.Logf("issued by bootstrap, kept in the state dir: %v", certs)
		}
	}))
}

// must stops the test when a step failed: the next steps build on it.
func must(t *testing.T, ok bool) {
	t.Helper()
	if !ok {
		t.FailNow()
	}
}

// series returns the first exposition line of metric whose labels contain
// every matcher, or "".
func series(body, metric string, matchers ...string) string {
	for _, l := range strings.Split(body, "\n") {
		if !strings.HasPrefix(l, metric+"{") {
			continue
		}
		ok := true
		for _, m := range matchers {
			if !strings.Contains(l, m) {
				ok = false
				break
			}
		}
		if ok {
			return l
		}
	}
	return ""
}

func grepLines(body, metric string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, metric) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func get(url string) (string, int) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err.Error(), 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return string(b), resp.StatusCode
}

// waitFor polls cond until it holds or the deadline passes, then fails
// with what cond last said.
func waitFor(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	var last string
	for {
		var ok bool
		if ok, last = cond(); ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s; last:\n%s", what, d, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// capNumbers are the capabilities' bit numbers (linux/capability.h) for
// the names the manifest may use.
var capNumbers = map[string]uint{
	"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3, "CAP_FSETID": 4,
	"CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10,
	"CAP_NET_BROADCAST": 11, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_IPC_LOCK": 14,
	"CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21, "CAP_SYS_RESOURCE": 24,
	"CAP_MKNOD": 27, "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31, "CAP_BPF": 39, "CAP_PERFMON": 38,
}

func capMask(t *testing.T, caps []string) uint64 {
	t.Helper()
	var m uint64
	for _, c := range caps {
		n, ok := capNumbers[c]
		if !ok {
			t.Fatalf("capability %s: add its number to capNumbers", c)
		}
		m |= 1 << n
	}
	return m
}

// rootReadOnly says whether the process's root is mounted read-only.
func rootReadOnly(t *testing.T, pid int) bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 5 && f[4] == "/" {
			for _, o := range strings.Split(f[5], ",") {
				if o == "ro" {
					return true
				}
			}
			return false
		}
	}
	t.Fatalf("no root mount in /proc/%d/mountinfo", pid)
	return false
}
