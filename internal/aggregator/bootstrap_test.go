package aggregator_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/pki"
	"github.com/vigilhq/vigil/internal/store/bolt"
	"github.com/vigilhq/vigil/internal/store/etcd/etcdtest"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

const bootToken = "bootstrap-token-0123456789"

// bootEnv is what bootstrap tests share: one CA that signs the aggregators'
// serving certificates, the operator's and the nodes' certificates, and a
// token file.
type bootEnv struct {
	t      *testing.T
	ca     *pki.CA
	dir    string
	tokens *pki.TokenFile
	log    *logBuffer
}

func newBootEnv(t *testing.T) *bootEnv {
	t.Helper()
	ca, err := pki.NewCA("vigil-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "bootstrap-tokens")
	if err := os.WriteFile(path, []byte(bootToken+" daemonset\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokens, err := pki.OpenBootstrapTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	return &bootEnv{t: t, ca: ca, dir: dir, tokens: tokens, log: &logBuffer{t: t}}
}

// configure turns on TLS and bootstrap; bindingsFile may be "".
func (e *bootEnv) configure(id, bindingsFile string) func(*aggregator.Config) {
	return func(c *aggregator.Config) {
		f, err := e.ca.WriteIdentity(e.dir, "aggregator-"+id, pki.Identity{Role: pki.RoleViewer, Name: "aggregator-" + id})
		if err != nil {
			e.t.Fatal(err)
		}
		if c.TLS, err = pki.ServerConfig(f); err != nil {
			e.t.Fatal(err)
		}
		c.Insecure = false
		c.Logger = slog.New(slog.NewTextHandler(e.log, &slog.HandlerOptions{Level: slog.LevelInfo})).With("replica", id)
		c.Bootstrap = &aggregator.BootstrapConfig{CA: e.ca, Tokens: e.tokens, NodeCertTTL: time.Hour, BindingsFile: bindingsFile}
	}
}

// client is the Bootstrap service of the aggregator at addr, called as an
// operator (Bootstrap itself needs no certificate, only the token).
func (e *bootEnv) client(addr string) vigilv1.BootstrapClient {
	e.t.Helper()
	f, err := e.ca.WriteIdentity(e.dir, "operator", pki.Identity{Role: pki.RoleOperator, Name: "alice"})
	if err != nil {
		e.t.Fatal(err)
	}
	tc, err := pki.ClientConfig(f, "")
	if err != nil {
		e.t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	return vigilv1.NewBootstrapClient(conn)
}

// nodeKey is a node's key: what a state dir holds.
type nodeKey struct {
	key *ecdsa.PrivateKey
	fp  string
}

func newNodeKey(t *testing.T) nodeKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	fp, err := pki.KeyFingerprint(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return nodeKey{key: k, fp: fp}
}

// bootstrap asks c for a certificate for node with k and the token.
func bootstrap(t *testing.T, c vigilv1.BootstrapClient, node string, k nodeKey) error {
	t.Helper()
	csr, err := pki.NewCSR(node, k.key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Bootstrap(ctx, &vigilv1.BootstrapRequest{Token: bootToken, Csr: csr})
	if err == nil && len(resp.GetCertificate()) == 0 {
		t.Fatalf("bootstrap of %s: no certificate", node)
	}
	return err
}

// wantBound checks that err refuses node as bound to another key.
func wantBound(t *testing.T, err error, node, where string) {
	t.Helper()
	if status.Code(err) != codes.AlreadyExists || !strings.Contains(err.Error(), "vigilctl nodes release "+node) {
		t.Fatalf("%s: another key for %s: %v, want AlreadyExists naming vigilctl nodes release %s", where, node, err, node)
	}
}

func release(t *testing.T, c vigilv1.BootstrapClient, node string) *vigilv1.ReleaseNodeResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.ReleaseNode(ctx, &vigilv1.ReleaseNodeRequest{NodeName: node})
	if err != nil {
		t.Fatalf("release %s: %v", node, err)
	}
	return resp
}

// TestBootstrapBindingsAcrossReplicas: two replicas on a real etcd. A node
// name bootstrapped on one is refused to another key on the other (logged
// at Warn with the node and counted), the same key passes on both; a
// release on one lets a new key bootstrap on the other; the binding
// survives a replica's restart.
func TestBootstrapBindingsAcrossReplicas(t *testing.T) {
	cluster := etcdtest.StartCluster(t, 1)
	env := newBootEnv(t)
	prefix := fmt.Sprintf("/vigil-replicas-%d/", replicaPrefixes.Add(1))
	r0 := startReplica(t, cluster, prefix, "r0", 3*time.Second, env.configure("r0", ""))
	r1 := startReplica(t, cluster, prefix, "r1", 3*time.Second, env.configure("r1", ""))
	c0, c1 := env.client(r0.agg.GRPCAddr().String()), env.client(r1.agg.GRPCAddr().String())
	first, second := newNodeKey(t), newNodeKey(t)

	if err := bootstrap(t, c0, "node-c", first); err != nil {
		t.Fatalf("first bootstrap on r0: %v", err)
	}
	wantBound(t, bootstrap(t, c1, "node-c", second), "node-c", "r1")
	if l := seriesLines(r1.scrape(), "vigil_aggregator_bootstrap_refused_total"); !strings.Contains(strings.Join(l, "\n"), `{reason="bound"} 1`) {
		t.Fatalf("r1 refused count: %q", l)
	}
	if !env.log.has("level=WARN", "bootstrap refused", "node=node-c", "reason=bound", "replica=r1") {
		t.Fatalf("r1 did not log the refusal at Warn with the node and the reason:\n%s", env.log)
	}
	if err := bootstrap(t, c1, "node-c", first); err != nil {
		t.Fatalf("the first key again, on r1: %v", err)
	}

	// A release on r0 frees the name fleet-wide.
	if resp := release(t, c0, "node-c"); !resp.GetReleased() || resp.GetKeySha256() != first.fp {
		t.Fatalf("release on r0: %v", resp)
	}
	if err := bootstrap(t, c1, "node-c", second); err != nil {
		t.Fatalf("the second key on r1 after the release: %v", err)
	}
	wantBound(t, bootstrap(t, c0, "node-c", first), "node-c", "r0")

	// A restarted replica keeps it.
	r1.stop()
	r1 = startReplica(t, cluster, prefix, "r1", 3*time.Second, env.configure("r1", ""))
	c1 = env.client(r1.agg.GRPCAddr().String())
	wantBound(t, bootstrap(t, c1, "node-c", first), "node-c", "r1 after its restart")
	if err := bootstrap(t, c1, "node-c", second); err != nil {
		t.Fatalf("the bound key on r1 after its restart: %v", err)
	}
}

// TestBootstrapUnknownTokenLogged: an unknown token is refused, logged at
// Warn with the node name the request asked for, and counted.
func TestBootstrapUnknownTokenLogged(t *testing.T) {
	env := newBootEnv(t)
	st, err := bolt.Open(filepath.Join(t.TempDir(), "vigil.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	h := startAggregator(t, func(c *aggregator.Config) {
		env.configure("a", "")(c)
		c.Store = st
	})
	csr, err := pki.NewCSR("node-t", newNodeKey(t).key)
	if err != nil {
		t.Fatal(err)
	}
	_, err = env.client(h.agg.GRPCAddr().String()).Bootstrap(context.Background(), &vigilv1.BootstrapRequest{Token: "not-a-token-0123456789", Csr: csr})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("unknown token: %v", err)
	}
	if !env.log.has("level=WARN", "bootstrap refused", "node=node-t", "reason=token") {
		t.Fatalf("the refusal was not logged at Warn with the node and the reason:\n%s", env.log)
	}
	if got := counter2(t, h, "vigil_aggregator_bootstrap_refused_total", "reason", "token", "reason", "token"); got != 1 {
		t.Fatalf("token refusals counted: %v", got)
	}
}

// TestBootstrapBindingsBolt: one aggregator on its bbolt store. Bindings
// survive a restart; a node-bindings.json left by an older aggregator is
// moved into the store at start (a name the store binds keeps the store's
// key), then renamed, so that a name released later stays released.
func TestBootstrapBindingsBolt(t *testing.T) {
	env := newBootEnv(t)
	dir := t.TempDir()
	dbPath, file := filepath.Join(dir, "vigil.db"), filepath.Join(dir, "node-bindings.json")
	keyA, keyA2, keyB1, keyB2 := newNodeKey(t), newNodeKey(t), newNodeKey(t), newNodeKey(t)
	start := func(t *testing.T) vigilv1.BootstrapClient {
		st, err := bolt.Open(dbPath, bolt.Options{})
		if err != nil {
			t.Fatal(err)
		}
		h := startAggregator(t, func(c *aggregator.Config) {
			env.configure("a", file)(c)
			c.Store = st
		})
		t.Cleanup(func() { st.Close() }) // after the aggregator stopped
		return env.client(h.agg.GRPCAddr().String())
	}

	t.Run("first start", func(t *testing.T) {
		c := start(t)
		if err := bootstrap(t, c, "node-b", keyB2); err != nil {
			t.Fatal(err)
		}
	})
	// An older aggregator's file: node-a, and node-b bound to another key.
	data, err := json.Marshal(map[string]any{"nodes": map[string]any{
		"node-a": map[string]any{"key_sha256": keyA.fp, "bound_at": time.Now().UTC(), "by": "token daemonset"},
		"node-b": map[string]any{"key_sha256": keyB1.fp, "bound_at": time.Now().UTC(), "by": "token daemonset"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Run("restart with a bindings file", func(t *testing.T) {
		c := start(t)
		if !env.log.has("node bindings moved from their file into the store", "migrated=[node-a]", "kept_from_store=[node-b]") {
			t.Fatalf("the migration was not logged:\n%s", env.log)
		}
		if _, err := os.Stat(file + ".migrated"); err != nil {
			t.Fatalf("the file was not renamed: %v", err)
		}
		wantBound(t, bootstrap(t, c, "node-a", keyA2), "node-a", "migrated")
		if err := bootstrap(t, c, "node-a", keyA); err != nil {
			t.Fatalf("node-a with its migrated key: %v", err)
		}
		wantBound(t, bootstrap(t, c, "node-b", keyB1), "node-b", "the store's binding wins")
		if err := bootstrap(t, c, "node-b", keyB2); err != nil {
			t.Fatalf("node-b with the store's key: %v", err)
		}
		if resp := release(t, c, "node-a"); !resp.GetReleased() || resp.GetKeySha256() != keyA.fp {
			t.Fatalf("release node-a: %v", resp)
		}
	})
	t.Run("restart", func(t *testing.T) {
		c := start(t)
		wantBound(t, bootstrap(t, c, "node-b", keyB1), "node-b", "after a restart")
		if err := bootstrap(t, c, "node-a", keyA2); err != nil {
			t.Fatalf("released node-a came back from the migrated file: %v", err)
		}
	})
}

// logBuffer keeps an aggregator's log for the test to search, and passes
// it on to the test's output.
type logBuffer struct {
	t  *testing.T
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Write(p)
	_, _ = io.Writer(l.t.Output()).Write(p)
	return len(p), nil
}

// has reports whether one line holds every part.
func (l *logBuffer) has(parts ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range strings.Split(l.b.String(), "\n") {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			return true
		}
	}
	return false
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
