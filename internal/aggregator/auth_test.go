package aggregator_test

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/pki"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// TestRolesOnEveryCall: over real mutual TLS on loopback, the role table
// decides each call, refusals name the role needed and are counted.
func TestRolesOnEveryCall(t *testing.T) {
	h := startAggregator(t, nil)
	ctx := context.Background()

	// A node certificate cannot read the fleet.
	_, err := vigilv1.NewVigilClient(h.dial("node-a")).ListNodes(ctx, &vigilv1.ListNodesRequest{})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "needs role viewer; the certificate is node/node-a") {
		t.Fatalf("node ListNodes: %v, want PermissionDenied naming role viewer", err)
	}
	// A node certificate cannot connect as another node.
	if _, err := h.connect("node-a", "node-b", "i"); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "certificate is for node-a, hello claims node-b") {
		t.Fatalf("node-a as node-b: %v", err)
	}
	// Operators and viewers cannot stream as a node.
	for _, who := range []string{"operator/alice", "viewer/bob"} {
		if _, err := h.connect(who, "alice", "i"); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "needs role node") {
			t.Fatalf("%s Connect: %v, want PermissionDenied naming role node", who, err)
		}
	}
	// A viewer reads but cannot ask for an action; an operator passes the
	// check (remediation itself is not built yet).
	viewer := vigilv1.NewVigilClient(h.dial("viewer/bob"))
	if _, err := viewer.ListContainers(ctx, &vigilv1.ListContainersRequest{}); err != nil {
		t.Fatalf("viewer ListContainers: %v", err)
	}
	_, err = viewer.RequestRemediation(ctx, &vigilv1.RequestRemediationRequest{})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "needs role operator") {
		t.Fatalf("viewer RequestRemediation: %v, want PermissionDenied naming role operator", err)
	}
	_, err = vigilv1.NewVigilClient(h.dial("operator/alice")).RequestRemediation(ctx, &vigilv1.RequestRemediationRequest{})
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("operator RequestRemediation: %v, want it past the role check (Unimplemented)", err)
	}
	// A viewer cannot release a node name; a node cannot renew as nothing.
	_, err = vigilv1.NewBootstrapClient(h.dial("viewer/bob")).ReleaseNode(ctx, &vigilv1.ReleaseNodeRequest{NodeName: "x"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("viewer ReleaseNode: %v", err)
	}

	// A certificate with only a common name (issued before roles) is not
	// a node by default.
	plain, err := h.ca.WriteIdentity(filepath.Join(h.dir, "clients"), "plain", pki.Identity{Name: "plain-node"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := vigilv1.NewAgentGatewayClient(h.dialFiles(plain)).Connect(ctx)
	if err == nil {
		_ = s.Send(&vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_Hello{Hello: &vigilv1.Hello{NodeName: "plain-node"}}})
		_, err = s.Recv()
	}
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "--allow-cn-nodes") {
		t.Fatalf("plain CN certificate: %v, want PermissionDenied pointing at --allow-cn-nodes", err)
	}

	// No certificate at all: Unauthenticated.
	noCert, err := pki.ServerOnlyConfig(filepath.Join(h.dir, "ca.crt"), "localhost")
	if err != nil {
		t.Fatal(err)
	}
	anon, err := grpc.NewClient(h.agg.GRPCAddr().String(), grpc.WithTransportCredentials(credentials.NewTLS(noCert)))
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	if _, err := vigilv1.NewVigilClient(anon).ListNodes(ctx, &vigilv1.ListNodesRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no certificate: %v, want Unauthenticated", err)
	}

	for _, c := range []struct{ role, method string }{
		{"node", vigilv1.Vigil_ListNodes_FullMethodName},
		{"operator", vigilv1.AgentGateway_Connect_FullMethodName},
		{"viewer", vigilv1.AgentGateway_Connect_FullMethodName},
		{"viewer", vigilv1.Vigil_RequestRemediation_FullMethodName},
		{"none", vigilv1.Vigil_ListNodes_FullMethodName},
	} {
		if got := counter2(t, h, "vigil_aggregator_auth_refused_total", "role", c.role, "method", c.method); got != 1 {
			t.Errorf("auth_refused{role=%s,method=%s} = %v, want 1", c.role, c.method, got)
		}
	}
}

// TestCommonNameNodesWhenAllowed: with AllowCommonNameNodes, a plain-CN
// certificate streams as its node.
func TestCommonNameNodesWhenAllowed(t *testing.T) {
	h := startAggregator(t, func(c *aggregator.Config) { c.AllowCommonNameNodes = true })
	if _, err := h.ca.WriteIdentity(filepath.Join(h.dir, "clients"), "legacy", pki.Identity{Name: "legacy"}); err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	h.certs["legacy"] = pki.Files{Cert: filepath.Join(h.dir, "clients", "legacy.crt"), Key: filepath.Join(h.dir, "clients", "legacy.key"), CA: filepath.Join(h.dir, "clients", "ca.crt")}
	h.mu.Unlock()
	a := h.mustConnect("legacy", "i")
	a.send(1, snapshotMsg())
	a.waitAck(1)
}

// TestHTTPAPIAuth: /api/v1/* needs TLS and a credential with a role;
// /metrics, /healthz and /readyz stay plain.
func TestHTTPAPIAuth(t *testing.T) {
	tokens := filepath.Join(t.TempDir(), "api-tokens")
	if err := os.WriteFile(tokens, []byte("viewer-token-0123456789 viewer grafana\nalert-token-0123456789 alertmanager am\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tf, err := pki.OpenAPITokens(tokens)
	if err != nil {
		t.Fatal(err)
	}
	h := startAggregator(t, func(c *aggregator.Config) { c.APITokens = tf })
	h.agg.HandleAPI("POST /api/v1/test-action", pki.RoleOperator, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _ := aggregator.Caller(r.Context())
		_, _ = io.WriteString(w, "done by "+id.String())
	}))

	do := func(who, method, path, bearer string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, h.httpsURL(path), nil)
		if err != nil {
			t.Fatal(err)
		}
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := h.httpsClient(who).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, c := range []struct {
		name, who, method, path, bearer string
		want                            int
		body                            string
	}{
		{"no credential", "", "GET", "/api/v1/containers", "", 401, "no credential"},
		{"node certificate", "node-a", "GET", "/api/v1/containers", "", 403, "needs role viewer"},
		{"viewer certificate", "viewer/v", "GET", "/api/v1/containers", "", 200, "{"},
		{"operator certificate", "operator/o", "GET", "/api/v1/nodes", "", 200, "{"},
		{"viewer token", "", "GET", "/api/v1/containers", "viewer-token-0123456789", 200, "{"},
		{"alertmanager token reads nothing", "", "GET", "/api/v1/nodes", "alert-token-0123456789", 403, "needs role viewer"},
		{"unknown token", "", "GET", "/api/v1/nodes", "nope-nope-nope-nope-nope", 401, "unknown or revoked"},
		{"viewer cannot act", "viewer/v", "POST", "/api/v1/test-action", "", 403, "needs role operator"},
		{"operator acts", "operator/o", "POST", "/api/v1/test-action", "", 200, "done by operator/o"},
		{"metrics stay plain over TLS", "", "GET", "/metrics", "", 200, "vigil_aggregator_insecure 0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, body := do(c.who, c.method, c.path, c.bearer)
			if code != c.want || !strings.Contains(body, c.body) {
				t.Fatalf("%s %s as %q: %d %s; want %d containing %q", c.method, c.path, c.who, code, body, c.want, c.body)
			}
		})
	}
	// Plain HTTP: the API refuses (a token sent in the clear is not
	// taken), /metrics and /healthz answer.
	resp, err := http.Get(h.url("/api/v1/nodes"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 || !strings.Contains(string(b), "needs TLS") {
		t.Fatalf("plain /api/v1/nodes: %d %s", resp.StatusCode, b)
	}
	for _, p := range []string{"/metrics", "/healthz", "/readyz"} {
		resp, err := http.Get(h.url(p))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("plain %s: %d", p, resp.StatusCode)
		}
	}
	if got := counter2(t, h, "vigil_aggregator_auth_refused_total", "role", "node", "method", "GET /api/v1/containers"); got != 1 {
		t.Fatalf("auth_refused{role=node,method=GET /api/v1/containers} = %v, want 1", got)
	}

	// Revoking the viewer token (deleting its line) takes effect at once.
	if err := pki.WriteFileAtomic(tokens, []byte("alert-token-0123456789 alertmanager am\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _ := do("", "GET", "/api/v1/nodes", "viewer-token-0123456789"); code != 401 {
		t.Fatalf("revoked token: %d, want 401", code)
	}
}

// TestMetricsRequireAuth: with MetricsRequireAuth, /metrics needs a viewer
// credential; /healthz stays plain.
func TestMetricsRequireAuth(t *testing.T) {
	h := startAggregator(t, func(c *aggregator.Config) { c.MetricsRequireAuth = true })
	resp, err := http.Get(h.url("/metrics"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("plain /metrics: %d, want 403", resp.StatusCode)
	}
	resp, err = h.httpsClient("viewer/prometheus").Get(h.httpsURL("/metrics"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics as a viewer: %d", resp.StatusCode)
	}
}

// TestInsecureLoopbackOnly: insecure mode refuses to listen beyond
// loopback, and shows in vigil_aggregator_insecure.
func TestInsecureLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "10.1.2.3:0"} {
		_, err := aggregator.New(aggregator.Config{GRPCListen: addr, HTTPListen: "127.0.0.1:0", Insecure: true})
		if err == nil || !strings.Contains(err.Error(), "insecure mode serves loopback only") {
			t.Fatalf("insecure on %s: %v", addr, err)
		}
	}
	cfg := aggregator.Config{GRPCListen: "127.0.0.1:0", HTTPListen: "[::1]:0", Insecure: true, Logger: testLogger(t)}
	if _, err := aggregator.New(cfg); err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	cfg.HTTPListen = "127.0.0.1:0"
	agg, err := aggregator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agg.Run(ctx) }()
	defer func() { cancel(); <-done }()
	var body string
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + agg.HTTPAddr().String() + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(body, "vigil_aggregator_insecure 1") {
		t.Fatalf("vigil_aggregator_insecure 1 not exposed:\n%.2000s", body)
	}
}

// counter2 reads a counter with two labels from the harness registry.
func counter2(t *testing.T, h *harness, name, l1, v1, l2, v2 string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			if got[l1] == v1 && got[l2] == v2 {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestServingCertificateReloaded: the aggregator's serving certificate,
// replaced on disk (as cert-manager does), is presented by the next
// connection on both listeners, without a restart; live calls go on.
func TestServingCertificateReloaded(t *testing.T) {
	h := startAggregator(t, nil)
	viewer := vigilv1.NewVigilClient(h.dial("viewer/v"))
	if _, err := viewer.ListNodes(context.Background(), &vigilv1.ListNodesRequest{}); err != nil {
		t.Fatal(err)
	}
	served := func(addr string) string {
		t.Helper()
		tc, err := h.clientTLS("viewer/v")
		if err != nil {
			t.Fatal(err)
		}
		tc.NextProtos = []string{"h2", "http/1.1"}
		c, err := tls.Dial("tcp", addr, tc)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if cn := served(h.agg.GRPCAddr().String()); cn != "aggregator" {
		t.Fatalf("serving certificate %q", cn)
	}
	if _, err := h.ca.WriteServer(h.dir, "aggregator", "aggregator-renewed"); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{h.agg.GRPCAddr().String(), h.agg.HTTPAddr().String()} {
		if cn := served(addr); cn != "aggregator-renewed" {
			t.Fatalf("%s after the files changed: serving certificate %q, want aggregator-renewed", addr, cn)
		}
	}
	if _, err := viewer.ListNodes(context.Background(), &vigilv1.ListNodesRequest{}); err != nil {
		t.Fatalf("the connection opened before the change: %v", err)
	}
}
