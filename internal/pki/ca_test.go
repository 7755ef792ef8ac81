package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// TestLoadCAKeyUsage: a CA certificate needs basicConstraints CA:TRUE; its
// keyUsage, when present, must allow keyCertSign, and may be absent (RFC
// 5280; what `openssl req -x509` makes without -addext). The accepted one
// signs node certificates that verify against it.
func TestLoadCAKeyUsage(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, isCA bool, usage x509.KeyUsage) (string, string) {
		t.Helper()
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			BasicConstraintsValid: true, IsCA: isCA, KeyUsage: usage}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
		if err != nil {
			t.Fatal(err)
		}
		certFile, keyFile := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		if err := WriteFileAtomic(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := WriteKey(keyFile, key); err != nil {
			t.Fatal(err)
		}
		return certFile, keyFile
	}
	for _, tc := range []struct {
		name  string
		isCA  bool
		usage x509.KeyUsage
		want  string // "" when accepted
	}{
		{"no-key-usage", true, 0, ""},
		{"cert-sign", true, x509.KeyUsageCertSign | x509.KeyUsageCRLSign, ""},
		{"digital-signature-only", true, x509.KeyUsageDigitalSignature, "keyUsage lacks keyCertSign"},
		{"not-a-ca", false, x509.KeyUsageCertSign, "lacks basicConstraints CA:TRUE"},
	} {
		certFile, keyFile := write(tc.name, tc.isCA, tc.usage)
		ca, err := LoadCA(certFile, keyFile)
		if tc.want != "" {
			if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: err = %v, want ErrInvalid saying %q", tc.name, err, tc.want)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		nodeKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		certPEM, _, err := ca.SignNode("node-a", nodeKey.Public(), time.Hour)
		if err != nil {
			t.Fatalf("%s: sign a node: %v", tc.name, err)
		}
		block, _ := pem.Decode(certPEM)
		if block == nil {
			t.Fatalf("%s: signed node certificate is no PEM", tc.name)
		}
		leaf, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		roots := x509.NewCertPool()
		roots.AddCert(ca.Certificate())
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s: the node certificate does not verify against the CA: %v", tc.name, err)
		}
	}
}
