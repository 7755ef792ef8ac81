package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// serveTLS accepts TLS connections and records the client certificate's
// common name of each handshake.
func serveTLS(t *testing.T, cfg *tls.Config) (string, <-chan string) {
	t.Helper()
	lis, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	got := make(chan string, 16)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if err := tc.Handshake(); err == nil {
				cn := ""
				if st := tc.ConnectionState(); len(st.VerifiedChains) > 0 {
					cn = st.VerifiedChains[0][0].Subject.CommonName
				}
				got <- cn
			}
			c.Close()
		}
	}()
	return lis.Addr().String(), got
}

// dialCN connects with cfg and returns the server certificate's common name.
func dialCN(t *testing.T, addr string, cfg *tls.Config) string {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName
}

// TestCertificatesReloadedFromDisk: certificate files replaced on disk (as
// cert-manager and Vault do) are used by the next handshake of both the
// server and the client, without a new tls.Config.
func TestCertificatesReloadedFromDisk(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA("ca")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.WriteServer(dir, "server", "server-one")
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ca.WriteFiles(dir, "client", "client-one")
	if err != nil {
		t.Fatal(err)
	}
	scfg, err := ServerConfig(srv)
	if err != nil {
		t.Fatal(err)
	}
	scfg.ClientAuth = tls.RequireAndVerifyClientCert
	ccfg, err := ClientConfig(cli, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	addr, got := serveTLS(t, scfg)
	if cn := dialCN(t, addr, ccfg); cn != "server-one" {
		t.Fatalf("server certificate %q, want server-one", cn)
	}
	if cn := <-got; cn != "client-one" {
		t.Fatalf("client certificate %q, want client-one", cn)
	}

	if _, err := ca.WriteServer(dir, "server", "server-two"); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.WriteFiles(dir, "client", "client-two"); err != nil {
		t.Fatal(err)
	}
	if cn := dialCN(t, addr, ccfg); cn != "server-two" {
		t.Fatalf("after replacing the files: server certificate %q, want server-two", cn)
	}
	if cn := <-got; cn != "client-two" {
		t.Fatalf("after replacing the files: client certificate %q, want client-two", cn)
	}

	// A half-written replacement keeps the previous pair in use.
	if err := os.WriteFile(srv.Cert, []byte("-----BEGIN CERTIFICATE-----\ntrunc"), 0o644); err != nil {
		t.Fatal(err)
	}
	if cn := dialCN(t, addr, ccfg); cn != "server-two" {
		t.Fatalf("with a broken file: server certificate %q, want the previous server-two", cn)
	}
}

// TestPendingClientCertificate: a client whose certificate is still being
// issued starts, fails its handshakes, and uses the files once they exist.
func TestPendingClientCertificate(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA("ca")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.WriteServer(dir, "server", "server")
	if err != nil {
		t.Fatal(err)
	}
	f := Files{Cert: dir + "/pki/node.crt", Key: dir + "/pki/node.key", CA: srv.CA}
	if _, err := ClientConfig(f, ""); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("missing files without Pending: err = %v, want ErrInvalid", err)
	}
	f.Pending = true
	ccfg, err := ClientConfig(f, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ccfg.GetClientCertificate(nil); err == nil {
		t.Fatal("a pending certificate was returned before it existed")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir+"/pki", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := WriteKey(f.Key, key); err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := ca.SignNode("n1", key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(f.Cert, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := ccfg.GetClientCertificate(nil)
	if err != nil {
		t.Fatalf("after the files appeared: %v", err)
	}
	if id, err := IdentityOf(c.Leaf, false); err != nil || id != NodeIdentity("n1") {
		t.Fatalf("identity %v, %v; want node/n1", id, err)
	}
}
