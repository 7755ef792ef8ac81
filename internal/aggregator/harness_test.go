package aggregator_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/pki"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// harness runs a real aggregator on loopback with mTLS.
type harness struct {
	t    *testing.T
	agg  *aggregator.Aggregator
	reg  *prometheus.Registry
	ca   *pki.CA
	dir  string
	done chan error

	mu    sync.Mutex
	certs map[string]pki.Files
}

func startAggregator(t *testing.T, mutate func(*aggregator.Config)) *harness {
	t.Helper()
	ca, err := pki.NewCA("vigil-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	serverFiles, err := ca.WriteServer(dir, "aggregator", "aggregator")
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := pki.ServerConfig(serverFiles)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cfg := aggregator.Config{
		GRPCListen:      "127.0.0.1:0",
		HTTPListen:      "127.0.0.1:0",
		TLS:             tlsCfg,
		Registry:        reg,
		AckInterval:     20 * time.Millisecond,
		ShutdownTimeout: 5 * time.Second,
		Logger:          testLogger(t),
	}
	if mutate != nil {
		mutate(&cfg)
	}
	agg, err := aggregator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, agg: agg, reg: reg, ca: ca, dir: dir, done: make(chan error, 1), certs: map[string]pki.Files{}}
	go func() { h.done <- agg.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-h.done:
			if err != nil {
				t.Errorf("aggregator Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("aggregator did not stop within 15s")
		}
	})
	waitFor(t, 5*time.Second, "aggregator ready", func() bool {
		resp, err := http.Get(h.url("/readyz"))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return h
}

func (h *harness) url(path string) string { return "http://" + h.agg.HTTPAddr().String() + path }

// clientTLS returns a client TLS config whose certificate names who:
// "ROLE/NAME" (operator/alice, viewer/bob), or a node's name.
func (h *harness) clientTLS(who string) (*tls.Config, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f, ok := h.certs[who]
	if !ok {
		id := pki.NodeIdentity(who)
		if role, name, found := strings.Cut(who, "/"); found {
			id = pki.Identity{Role: pki.Role(role), Name: name}
		}
		var err error
		f, err = h.ca.WriteIdentity(filepath.Join(h.dir, "clients"), strings.ReplaceAll(who, "/", "_"), id)
		if err != nil {
			return nil, err
		}
		h.certs[who] = f
	}
	return pki.ClientConfig(f, "localhost")
}

// httpsClient is an HTTPS client of the aggregator presenting who's
// certificate ("" presents none).
func (h *harness) httpsClient(who string) *http.Client {
	h.t.Helper()
	var tc *tls.Config
	if who == "" {
		var err error
		tc, err = pki.ServerOnlyConfig(filepath.Join(h.dir, "ca.crt"), "localhost")
		if err != nil {
			h.t.Fatal(err)
		}
	} else {
		var err error
		tc, err = h.clientTLS(who)
		if err != nil {
			h.t.Fatal(err)
		}
	}
	tr := &http.Transport{TLSClientConfig: tc}
	h.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// httpsURL is an HTTPS URL of the aggregator's HTTP listener.
func (h *harness) httpsURL(path string) string { return "https://" + h.agg.HTTPAddr().String() + path }

// dial opens a gRPC connection presenting a certificate for who (see
// clientTLS).
func (h *harness) dial(who string) *grpc.ClientConn {
	h.t.Helper()
	tc, err := h.clientTLS(who)
	if err != nil {
		h.t.Fatal(err)
	}
	return h.dialTLS(tc)
}

// dialFiles opens a gRPC connection presenting the certificate of f
// (f.CA is ignored: the server is verified against the harness's CA).
func (h *harness) dialFiles(f pki.Files) *grpc.ClientConn {
	h.t.Helper()
	f.CA = filepath.Join(h.dir, "ca.crt")
	tc, err := pki.ClientConfig(f, "localhost")
	if err != nil {
		h.t.Fatal(err)
	}
	return h.dialTLS(tc)
}

func (h *harness) dialTLS(tc *tls.Config) *grpc.ClientConn {
	h.t.Helper()
	conn, err := grpc.NewClient(h.agg.GRPCAddr().String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { conn.Close() })
	return conn
}

// testAgent drives one Connect stream by hand.
type testAgent struct {
	t      *testing.T
	node   string
	stream vigilv1.AgentGateway_ConnectClient
	ack    *vigilv1.HelloAck
	cancel context.CancelFunc
	msgs   chan *vigilv1.AggregatorMessage
	err    chan error
	acked  uint64
}

// connect opens a stream with a certificate for certNode and a hello for
// helloNode, and waits for the HelloAck (or the stream's error).
func (h *harness) connect(certNode, helloNode, instance string) (*testAgent, error) {
	h.t.Helper()
	conn := h.dial(certNode)
	ctx, cancel := context.WithCancel(context.Background())
	h.t.Cleanup(cancel)
	s, err := vigilv1.NewAgentGatewayClient(conn).Connect(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	if err := s.Send(&vigilv1.AgentMessage{SentAt: timestamppb.Now(), Body: &vigilv1.AgentMessage_Hello{Hello: &vigilv1.Hello{
		NodeName: helloNode, InstanceId: instance, AgentVersion: "test", ProtocolVersion: 1,
	}}}); err != nil && !errors.Is(err, io.EOF) {
		cancel()
		return nil, err
	} // io.EOF: the stream was refused; Recv returns its status

	first, err := s.Recv()
	if err != nil {
		cancel()
		return nil, err
	}
	a := &testAgent{t: h.t, node: helloNode, stream: s, ack: first.GetHelloAck(), cancel: cancel,
		msgs: make(chan *vigilv1.AggregatorMessage, 1024), err: make(chan error, 1)}
	if a.ack == nil {
		cancel()
		return nil, errors.New("first answer is not a HelloAck")
	}
	go func() {
		for {
			m, err := s.Recv()
			if err != nil {
				a.err <- err
				return
			}
			a.msgs <- m
		}
	}()
	return a, nil
}

func (h *harness) mustConnect(node, instance string) *testAgent {
	h.t.Helper()
	a, err := h.connect(node, node, instance)
	if err != nil {
		h.t.Fatalf("connect %s: %v", node, err)
	}
	return a
}

func (a *testAgent) send(seq uint64, m *vigilv1.AgentMessage) {
	a.t.Helper()
	m.Seq = seq
	m.SentAt = timestamppb.Now()
	if err := a.stream.Send(m); err != nil {
		a.t.Fatalf("%s: send seq %d: %v", a.node, seq, err)
	}
}

// waitAck reads the stream until an ack of at least seq arrives.
func (a *testAgent) waitAck(seq uint64) {
	a.t.Helper()
	deadline := time.After(5 * time.Second)
	for a.acked < seq {
		select {
		case m := <-a.msgs:
			if ack := m.GetAck(); ack != nil {
				if ack.GetSeq() < a.acked {
					a.t.Fatalf("%s: ack went backwards: %d after %d", a.node, ack.GetSeq(), a.acked)
				}
				a.acked = ack.GetSeq()
			}
		case err := <-a.err:
			a.t.Fatalf("%s: stream ended waiting for ack %d: %v", a.node, seq, err)
		case <-deadline:
			a.t.Fatalf("%s: no ack of seq %d within 5s (last ack %d)", a.node, seq, a.acked)
		}
	}
}

// waitErr waits for the stream to end and returns its error.
func (a *testAgent) waitErr() error {
	a.t.Helper()
	for {
		select {
		case <-a.msgs:
		case err := <-a.err:
			return err
		case <-time.After(5 * time.Second):
			a.t.Fatalf("%s: stream did not end within 5s", a.node)
			return nil
		}
	}
}

func (a *testAgent) close() {
	_ = a.stream.CloseSend()
	if err := a.waitErr(); err != nil && !errors.Is(err, io.EOF) {
		a.t.Logf("%s: stream ended with %v", a.node, err)
	}
	a.cancel()
}

func snapshotMsg(containers ...*vigilv1.Container) *vigilv1.AgentMessage {
	return &vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_Snapshot{Snapshot: &vigilv1.Snapshot{Containers: containers}}}
}

func eventMsg(typ vigilv1.ContainerEventType, c *vigilv1.Container) *vigilv1.AgentMessage {
	return &vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_ContainerEvent{ContainerEvent: &vigilv1.ContainerEvent{
		Type: typ, Time: timestamppb.Now(), Container: c,
	}}}
}

func plainContainer(id string, state vigilv1.ContainerState, exits uint64) *vigilv1.Container {
	c := &vigilv1.Container{Id: id, Namespace: "default", Image: "busybox", State: state,
		Health: &vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_NONE}}
	if exits > 0 {
		c.Counters = &vigilv1.ContainerCounters{Exits: []*vigilv1.ExitCount{{Reason: vigilv1.ExitReason_EXIT_REASON_ERROR, Code: 1, Count: exits}}}
	}
	return c
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func scrape(t *testing.T, h *harness, query string) string {
	t.Helper()
	resp, err := http.Get(h.url("/metrics" + query))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics%s: %d %s", query, resp.StatusCode, b)
	}
	return string(b)
}

func seriesLines(text, name string) []string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
			out = append(out, line)
		}
	}
	return out
}

// requireRoot is for tests that start outside programs: not needed for
// loopback gRPC, but Prometheus is a prerequisite that may be missing.
func requireBinary(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required in CI: %v", path, err)
		}
		t.Skipf("%s not installed (apt-get install -y prometheus): %v", path, err)
	}
}
