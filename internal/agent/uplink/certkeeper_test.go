package uplink_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/agent/uplink"
	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/pki"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// bootstrapScene is an aggregator with node bootstrap on, over real TLS on
// loopback.
type bootstrapScene struct {
	dir    string
	ca     *pki.CA
	caFile string
	tokens string
	agg    *aggregator.Aggregator
	reg    *prometheus.Registry
}

func startBootstrapScene(t *testing.T, ttl time.Duration) *bootstrapScene {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.NewCA("vigil test CA")
	if err != nil {
		t.Fatal(err)
	}
	sf, err := ca.WriteServer(dir, "aggregator", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	caCert, caKey, err := ca.WriteCA(dir, "signer")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := pki.LoadCA(caCert, caKey)
	if err != nil {
		t.Fatal(err)
	}
	s := &bootstrapScene{dir: dir, ca: ca, caFile: sf.CA, tokens: filepath.Join(dir, "bootstrap-tokens"), reg: prometheus.NewRegistry()}
	if err := os.WriteFile(s.tokens, []byte("daemonset-token-0123456789 daemonset\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tf, err := pki.OpenBootstrapTokens(s.tokens)
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, err := pki.ServerConfig(sf)
	if err != nil {
		t.Fatal(err)
	}
	cfg := aggregator.Config{GRPCListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", TLS: serverTLS,
		ShutdownTimeout: 2 * time.Second, Logger: testLogger(t), Registry: s.reg,
		Bootstrap: &aggregator.BootstrapConfig{CA: signer, Tokens: tf, NodeCertTTL: ttl, BindingsFile: filepath.Join(dir, "node-bindings.json")}}
	s.agg, err = aggregator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.agg.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("aggregator Run: %v", err)
		}
	})
	return s
}

// tokenFile writes the agent's side of the Secret: the token alone.
func (s *bootstrapScene) tokenFile(t *testing.T, token string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func (s *bootstrapScene) keeper(t *testing.T, name, tokenFile, dir string) *uplink.Keeper {
	t.Helper()
	return s.keeperWith(t, uplink.KeeperConfig{Address: s.agg.GRPCAddr().String(), TokenFile: tokenFile, Dir: dir, NodeName: name})
}

// keeperWith returns a keeper of cfg, with the scene's CA and the tests'
// retry pace where cfg leaves them zero.
func (s *bootstrapScene) keeperWith(t *testing.T, cfg uplink.KeeperConfig) *uplink.Keeper {
	t.Helper()
	cfg.ServerName, cfg.CAFile = "localhost", s.caFile
	if cfg.RetryInitial == 0 {
		cfg.RetryInitial, cfg.RetryMax = 20*time.Millisecond, 200*time.Millisecond
	}
	cfg.CallTimeout = 10 * time.Second
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	k, err := uplink.NewKeeper(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func runKeeper(t *testing.T, k *uplink.Keeper) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("keeper Run: %v", err)
		}
	})
}

// TestBootstrapRenewWhileStreaming: an agent with only the bootstrap token
// gets its certificate and streams; with a certificate lifetime of three
// seconds it renews several times during a burst of exits, on the live
// stream (no reconnect), and the aggregator counts every exit exactly once.
func TestBootstrapRenewWhileStreaming(t *testing.T) {
	s := startBootstrapScene(t, 3*time.Second)
	k := s.keeper(t, node, s.tokenFile(t, "daemonset-token-0123456789"), filepath.Join(t.TempDir(), "pki"))
	runKeeper(t, k)

	clientTLS, err := pki.ClientConfig(k.Files(), "localhost")
	if err != nil {
		t.Fatal(err)
	}
	st := &exitCounter{containers: map[string]*vigilv1.Container{}}
	cfg := testConfig(t, s.agg.GRPCAddr().String())
	cfg.TLS = clientTLS
	u, err := uplink.New(cfg, st.snapshot)
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	waitReady(t, u)
	if info, err := os.Stat(k.Files().Key); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("node key: %v, %v; want mode 0600", info, err)
	}
	reconnects := u.Stats().Reconnects

	const exits = 400
	start := time.Now()
	for i := range exits {
		st.exit(t, u, fmt.Sprintf("app-%d", i%10))
		time.Sleep(20 * time.Millisecond) // about 8 s: two to three lifetimes
	}
	waitFor(t, "every exit acknowledged", func() bool { return u.Stats().Buffered == 0 })
	var sum uint64
	for _, nc := range s.agg.Fleet().Containers(&vigilv1.ListContainersRequest{Node: node, PageSize: 100}) {
		for _, ec := range nc.GetContainer().GetCounters().GetExits() {
			sum += ec.GetCount()
		}
	}
	if sum != exits {
		t.Fatalf("exits counted = %d, want %d", sum, exits)
	}
	if r := k.Renewals(); r < 2 {
		t.Fatalf("renewals during %v of 3 s certificates = %d, want at least 2", time.Since(start).Round(time.Second), r)
	}
	if got := u.Stats().Reconnects; got != reconnects {
		t.Fatalf("the stream reconnected %d times during the renewals", got-reconnects)
	}
	if got := counterValue(t, s.reg, "vigil_aggregator_node_certificates_issued_total", "kind", "renew"); got < 2 {
		t.Fatalf("aggregator counted %v renewals", got)
	}
	t.Logf("%d exits over %v, %d certificates (%d renewals), no reconnect", exits, time.Since(start).Round(time.Millisecond), k.Issued(), k.Renewals())
}

// TestBootstrapRefusals: a revoked token is refused; a second bootstrap of
// a bound node name with another key is refused until an operator
// releases it; a renewal cannot ask for another node.
func TestBootstrapRefusals(t *testing.T) {
	s := startBootstrapScene(t, time.Hour)
	ctx := context.Background()
	token := s.tokenFile(t, "daemonset-token-0123456789")

	first := s.keeper(t, "node-b", token, filepath.Join(t.TempDir(), "pki"))
	runKeeper(t, first)
	waitFor(t, "node-b bootstrapped", func() bool { return first.Issued() == 1 })

	// Another machine (another key) claims node-b.
	thiefDir := filepath.Join(t.TempDir(), "pki")
	thief := s.keeper(t, "node-b", token, thiefDir)
	ctxT, cancelT := context.WithCancel(ctx)
	logs := make(chan error, 1)
	go func() { logs <- thief.Run(ctxT) }()
	time.Sleep(300 * time.Millisecond) // several attempts at the keeper's retry pace
	if thief.Issued() != 0 {
		t.Fatal("a second key bootstrapped a bound node name")
	}
	if got := counterValue(t, s.reg, "vigil_aggregator_bootstrap_refused_total", "reason", "bound"); got < 1 {
		t.Fatalf("bootstrap_refused{reason=bound} = %v", got)
	}

	// An operator releases the name: the new machine takes it.
	op, err := s.ca.WriteIdentity(s.dir, "op", pki.Identity{Role: pki.RoleOperator, Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	opTLS, err := pki.ClientConfig(op, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(s.agg.GRPCAddr().String(), grpc.WithTransportCredentials(credentials.NewTLS(opTLS)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rel, err := vigilv1.NewBootstrapClient(conn).ReleaseNode(ctx, &vigilv1.ReleaseNodeRequest{NodeName: "node-b"})
	if err != nil || !rel.GetReleased() {
		t.Fatalf("ReleaseNode: %v, %v", rel, err)
	}
	waitFor(t, "the new machine bootstrapped after the release", func() bool { return thief.Issued() == 1 })
	cancelT()
	if err := <-logs; err != nil {
		t.Fatal(err)
	}

	// A revoked token (its line deleted) is refused.
	if err := pki.WriteFileAtomic(s.tokens, []byte("another-token-0123456789 spare\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	noCA, err := pki.ServerOnlyConfig(s.caFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	anon, err := grpc.NewClient(s.agg.GRPCAddr().String(), grpc.WithTransportCredentials(credentials.NewTLS(noCA)))
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	csr := newCSR(t, "node-c")
	_, err = vigilv1.NewBootstrapClient(anon).Bootstrap(ctx, &vigilv1.BootstrapRequest{Token: "daemonset-token-0123456789", Csr: csr})
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "unknown or revoked") {
		t.Fatalf("revoked token: %v, want Unauthenticated", err)
	}
	// A garbage CSR is refused with a clear error.
	_, err = vigilv1.NewBootstrapClient(anon).Bootstrap(ctx, &vigilv1.BootstrapRequest{Token: "another-token-0123456789", Csr: []byte("junk")})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "certificate request") {
		t.Fatalf("junk CSR: %v, want InvalidArgument", err)
	}
	// Renew is for the caller's node only.
	nodeTLS, err := pki.ClientConfig(func() pki.Files { f := thief.Files(); f.Pending = false; return f }(), "localhost")
	if err != nil {
		t.Fatal(err)
	}
	nconn, err := grpc.NewClient(s.agg.GRPCAddr().String(), grpc.WithTransportCredentials(credentials.NewTLS(nodeTLS)))
	if err != nil {
		t.Fatal(err)
	}
	defer nconn.Close()
	_, err = vigilv1.NewBootstrapClient(nconn).Renew(ctx, &vigilv1.RenewRequest{Csr: newCSR(t, "node-a")})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "certificate is for node node-b") {
		t.Fatalf("renew for another node: %v", err)
	}
	_, err = vigilv1.NewBootstrapClient(nconn).ReleaseNode(ctx, &vigilv1.ReleaseNodeRequest{NodeName: "node-b"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a node released a name: %v", err)
	}
	if !errors.Is(errdefs.FromGRPC(err), errdefs.ErrPermission) {
		t.Fatal(err)
	}
}

func newCSR(t *testing.T, name string) []byte {
	t.Helper()
	key, err := newKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := pki.NewCSR(name, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// counterValue reads one child of a labelled counter in reg (0 if absent).
func counterValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func newKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }
