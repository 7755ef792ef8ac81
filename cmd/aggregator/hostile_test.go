package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/agent/uplink"
	"github.com/vigilhq/vigil/internal/pki"
	"github.com/vigilhq/vigil/internal/testenv"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// rssBoundMiB is the bound stated for the aggregator's peak RSS in
// TestHostileAgentIsCutOff: every attack, had it been applied, would hold
// more than this on its own.
const rssBoundMiB = 128

// TestHostileAgentIsCutOff runs the release aggregator binary with its
// default quotas over mutual TLS on loopback. A hostile client holding a
// valid node certificate sends 100,000 containers (one event each, every
// container with 2 KB of labels: about 200 MB if it were all kept), then
// label values of 1 MiB (300 of them), then 10,000 interfaces in one
// namespace, and a snapshot of 100,000 containers. Each attack is cut off with ResourceExhausted naming the cap,
// counted per node and cap, while a real uplink on another node streams
// exits the whole time and every one of them is counted. The aggregator's
// peak RSS (VmHWM) stays under rssBoundMiB.
func TestHostileAgentIsCutOff(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the aggregator binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "vigil-aggregator")
	testenv.BuildRelease(t, "github.com/vigilhq/vigil/cmd/aggregator", bin)
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	sf, err := ca.WriteServer(dir, "aggregator", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr, httpAddr := freeAddr(t), freeAddr(t)
	cmd := exec.Command(bin, "--grpc-listen", grpcAddr, "--http-listen", httpAddr,
		"--tls-cert", sf.Cert, "--tls-key", sf.Key, "--tls-ca", sf.CA, "--log-level", "warn")
	logs, err := os.Create(filepath.Join(dir, "aggregator.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logs.Name())
			t.Logf("aggregator log:\n%s", b)
		}
	})
	waitHTTP(t, "http://"+httpAddr+"/readyz")

	// The honest node streams exits for the whole test.
	goodFiles, err := ca.WriteFiles(dir, "good", "good")
	if err != nil {
		t.Fatal(err)
	}
	goodTLS, err := pki.ClientConfig(goodFiles, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	var good honestNode
	u, err := uplink.New(uplink.Config{Address: grpcAddr, NodeName: "good", TLS: goodTLS, AgentVersion: "test",
		BackoffInitial: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)}, good.snapshot)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	wg.Add(2)
	go func() { defer wg.Done(); _ = u.Run(ctx) }()
	stopExits := make(chan struct{})
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stopExits:
				return
			case <-time.After(5 * time.Millisecond):
				good.exit(t, u)
			}
		}
	}()

	evilFiles, err := ca.WriteFiles(dir, "evil", "evil")
	if err != nil {
		t.Fatal(err)
	}
	evilTLS, err := pki.ClientConfig(evilFiles, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(evilTLS)),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	labels := map[string]string{}
	for i := range 16 {
		labels[fmt.Sprintf("label-%02d", i)] = strings.Repeat("v", 128)
	}
	attacks := []struct {
		name, cap string
		send      func(seq uint64) *vigilv1.AgentMessage // nil ends the attack
	}{
		{"100,000 containers", "containers", func(seq uint64) *vigilv1.AgentMessage {
			if seq > 100000 {
				return nil
			}
			return &vigilv1.AgentMessage{Seq: seq, Body: &vigilv1.AgentMessage_ContainerEvent{ContainerEvent: &vigilv1.ContainerEvent{
				Type: vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_ADDED, Container: &vigilv1.Container{
					Id: fmt.Sprintf("c%06d", seq), Namespace: "default", Labels: labels}}}}
		}},
		{"a snapshot of 100,000 containers", "containers", func(seq uint64) *vigilv1.AgentMessage {
			if seq > 1 {
				return nil
			}
			snap := &vigilv1.Snapshot{}
			for i := range 100000 {
				snap.Containers = append(snap.Containers, &vigilv1.Container{Id: fmt.Sprintf("s%06d", i), Namespace: "default"})
			}
			return &vigilv1.AgentMessage{Seq: seq, Body: &vigilv1.AgentMessage_Snapshot{Snapshot: snap}}
		}},
		{"1 MiB label values", "string_bytes", func(seq uint64) *vigilv1.AgentMessage {
			if seq > 300 {
				return nil
			}
			return &vigilv1.AgentMessage{Seq: seq, Body: &vigilv1.AgentMessage_ContainerEvent{ContainerEvent: &vigilv1.ContainerEvent{
				Type: vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_ADDED, Container: &vigilv1.Container{
					Id: fmt.Sprintf("big%d", seq), Namespace: "default", Labels: map[string]string{"x": strings.Repeat("x", 1<<20)}}}}}
		}},
		{"10,000 interfaces", "interfaces_per_namespace", func(seq uint64) *vigilv1.AgentMessage {
			if seq > 20 {
				return nil
			}
			ns := &vigilv1.NetworkNamespace{Host: true}
			for i := range 10000 {
				ns.Interfaces = append(ns.Interfaces, &vigilv1.Interface{Name: fmt.Sprintf("veth%05d", i), Index: int32(i + 1)})
			}
			return &vigilv1.AgentMessage{Seq: seq, Body: &vigilv1.AgentMessage_NetworkSamples{NetworkSamples: &vigilv1.NetworkSamples{Namespaces: []*vigilv1.NetworkNamespace{ns}}}}
		}},
	}
	for i, a := range attacks {
		err := attack(t, conn, fmt.Sprintf("evil-%d", i), a.send)
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "quota "+a.cap+" exceeded") {
			t.Fatalf("%s: the stream ended with %v, want ResourceExhausted naming quota %s", a.name, err, a.cap)
		}
		t.Logf("%s: %s", a.name, status.Convert(err).Message())
		if before := good.sent.Load(); !waitUntil(10*time.Second, func() bool { return good.acked(u) > before }) {
			t.Fatalf("after %s: the honest node's stream stopped", a.name)
		}
	}
	close(stopExits)
	if !waitUntil(20*time.Second, func() bool { return u.Stats().Buffered == 0 }) {
		t.Fatal("the honest node's exits were not all acknowledged")
	}

	metricsText := get(t, "http://"+httpAddr+"/metrics")
	for _, a := range attacks {
		want := fmt.Sprintf(`vigil_aggregator_quota_exceeded_total{cap=%q,node="evil"}`, a.cap)
		if !strings.Contains(metricsText, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	want := fmt.Sprintf(`vigil_container_exits_total{node="good",namespace="default",pod_namespace="",pod="",container="app",reason="error",exit_code="1"} %d`, good.sent.Load())
	if !strings.Contains(metricsText, want) {
		t.Errorf("/metrics lacks the honest node's exits %q:\n%s", want, grepLines(metricsText, "vigil_container_exits_total"))
	}
	hwm := vmHWM(t, cmd.Process.Pid)
	t.Logf("aggregator peak RSS %d MiB (bound %d MiB); honest node's exits: %d", hwm>>20, rssBoundMiB, good.sent.Load())
	if hwm>>20 >= rssBoundMiB {
		t.Errorf("aggregator peak RSS %d MiB, bound %d MiB", hwm>>20, rssBoundMiB)
	}
}

// attack opens a Connect stream as the evil node, sends a hello and then
// messages from send until it returns nil or the stream fails, and returns
// the stream's final status.
func attack(t *testing.T, conn *grpc.ClientConn, instance string, send func(uint64) *vigilv1.AgentMessage) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := vigilv1.NewAgentGatewayClient(conn).Connect(ctx)
	if err != nil {
		return err
	}
	if err := s.Send(&vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_Hello{Hello: &vigilv1.Hello{NodeName: "evil", InstanceId: instance}}}); err != nil {
		return err
	}
	if _, err := s.Recv(); err != nil {
		return err
	}
	recvErr := make(chan error, 1)
	go func() {
		for {
			if _, err := s.Recv(); err != nil {
				recvErr <- err
				return
			}
		}
	}()
	for seq := uint64(1); ; seq++ {
		m := send(seq)
		if m == nil {
			_ = s.CloseSend()
			break
		}
		if err := s.Send(m); err != nil {
			break // the server ended the stream: its status comes from Recv
		}
	}
	select {
	case err := <-recvErr:
		return err
	case <-ctx.Done():
		return errors.New("the stream was never cut off")
	}
}

// honestNode is a node whose one container keeps exiting with code 1.
type honestNode struct {
	mu   sync.Mutex
	c    *vigilv1.Container
	sent atomic.Uint64
}

func (h *honestNode) snapshot() *vigilv1.Snapshot {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := &vigilv1.Snapshot{}
	if h.c != nil {
		s.Containers = []*vigilv1.Container{h.c}
	}
	return s
}

func (h *honestNode) exit(t *testing.T, u *uplink.Uplink) {
	h.mu.Lock()
	n := h.sent.Add(1)
	h.c = &vigilv1.Container{Id: "app", Namespace: "default", State: vigilv1.ContainerState_CONTAINER_STATE_STOPPED,
		Counters: &vigilv1.ContainerCounters{Exits: []*vigilv1.ExitCount{{Reason: vigilv1.ExitReason_EXIT_REASON_ERROR, Code: 1, Count: n}}}}
	c := h.c
	h.mu.Unlock()
	if err := u.SendContainerEvent(&vigilv1.ContainerEvent{Type: vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED, Container: c,
		Exit: &vigilv1.ExitStatus{Code: 1, Reason: vigilv1.ExitReason_EXIT_REASON_ERROR}}); err != nil {
		t.Error(err)
	}
}

// acked is the highest sequence number the aggregator acknowledged.
func (h *honestNode) acked(u *uplink.Uplink) uint64 { return u.Stats().AckedSeq }

func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

func waitHTTP(t *testing.T, url string) {
	t.Helper()
	if !waitUntil(20*time.Second, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}) {
		t.Fatalf("%s never answered 200", url)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func grepLines(text, prefix string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// vmHWM reads a process's peak resident set size in bytes.
func vmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc/PID/status")
	return 0
}
