package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// CA signs certificates: node certificates at bootstrap (LoadCA, from the
// aggregator's --ca-cert/--ca-key), and any identity for tests and the demo
// (NewCA). Production fleets may also bring their own (cert-manager, Vault,
// a corporate CA) and never bootstrap. Safe for concurrent use.
type CA struct {
	cert    *x509.Certificate
	key     crypto.Signer
	certPEM []byte
}

// NewCA creates a self-signed CA valid for a year.
func NewCA(commonName string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// LoadCA reads a CA certificate and its private key (PEM; PKCS#8, EC or
// PKCS#1) from files.
func LoadCA(certFile, keyFile string) (*CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %v: %w", err, errdefs.ErrInvalid)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("CA certificate %s holds no PEM CERTIFICATE block: %w", certFile, errdefs.ErrInvalid)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("CA certificate %s: %v: %w", certFile, err, errdefs.ErrInvalid)
	}
	// A CA needs basicConstraints CA:TRUE. Its keyUsage, when it has one,
	// must allow keyCertSign; RFC 5280 lets it have none (what a plain
	// `openssl req -x509` makes), and Go's verifier does not ask for it.
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return nil, fmt.Errorf("CA certificate %s is not a CA: it lacks basicConstraints CA:TRUE (openssl: -addext basicConstraints=critical,CA:TRUE): %w", certFile, errdefs.ErrInvalid)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("CA certificate %s may not sign certificates: its keyUsage lacks keyCertSign (openssl: -addext keyUsage=critical,keyCertSign,cRLSign): %w", certFile, errdefs.ErrInvalid)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("CA key: %v: %w", err, errdefs.ErrInvalid)
	}
	key, err := parsePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key %s: %w", keyFile, err)
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("CA key %s does not belong to the certificate %s: %w", keyFile, certFile, errdefs.ErrInvalid)
	}
	return &CA{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: block.Bytes})}, nil
}

func parsePrivateKey(keyPEM []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, fmt.Errorf("no PEM block: %w", errdefs.ErrInvalid)
	}
	if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		if s, ok := k.(crypto.Signer); ok {
			return s, nil
		}
	}
	if k, err := x509.ParseECPrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	return nil, fmt.Errorf("PEM block %q is not a PKCS#8, EC or PKCS#1 private key: %w", block.Type, errdefs.ErrInvalid)
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

// CertPEM is the CA certificate in PEM form.
func (ca *CA) CertPEM() []byte { return ca.certPEM }

// Certificate is the CA certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Issue signs a node certificate for commonName (URI SAN
// spiffe://vigil/node/commonName), usable for both server and client
// authentication, with the given DNS names and IP addresses as SANs, valid
// 90 days. It returns the certificate and a new private key in PEM form.
func (ca *CA) Issue(commonName string, dnsNames []string, ips []net.IP) (certPEM, keyPEM []byte, err error) {
	return ca.IssueIdentity(NodeIdentity(commonName), dnsNames, ips)
}

// IssueIdentity is Issue for any identity (CN = the identity's name).
func (ca *CA) IssueIdentity(id Identity, dnsNames []string, ips []net.IP) (certPEM, keyPEM []byte, err error) {
	var uris []*url.URL
	if id.Role != "" {
		uris = []*url.URL{id.URI()}
	}
	return ca.issue(id.Name, uris, dnsNames, ips)
}

func (ca *CA) issue(commonName string, uris []*url.URL, dnsNames []string, ips []net.IP) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: commonName},
		DNSNames:     dnsNames,
		IPAddresses:  ips,
		URIs:         uris,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(90 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}

// SignNode signs a client certificate for node name over pub (a CSR's
// public key, checked by ParseCSR), valid for ttl from now (backdated by a
// tenth of ttl, at most a minute, for clocks a little behind). It returns
// the certificate in PEM form and its expiry.
func (ca *CA) SignNode(name string, pub crypto.PublicKey, ttl time.Duration) ([]byte, time.Time, error) {
	if err := ValidName(name); err != nil {
		return nil, time.Time{}, fmt.Errorf("node name: %w", err)
	}
	now := time.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name},
		URIs:         []*url.URL{NodeIdentity(name).URI()},
		NotBefore:    now.Add(-min(time.Minute, ttl/10)),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("sign certificate for node %s: %v: %w", name, err, errdefs.ErrInvalid)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), notAfter, nil
}

// KeyFingerprint is the hex SHA-256 of a public key's DER
// SubjectPublicKeyInfo: what a node name is bound to.
func KeyFingerprint(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("public key: %v: %w", err, errdefs.ErrInvalid)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// WriteFiles issues a node certificate for commonName (Issue, with
// localhost, commonName, 127.0.0.1 and ::1 as SANs, so that it also serves
// as a test server's certificate) and writes name.crt, name.key and ca.crt
// into dir.
func (ca *CA) WriteFiles(dir, name, commonName string) (Files, error) {
	return ca.WriteIdentity(dir, name, NodeIdentity(commonName))
}

// WriteIdentity is WriteFiles for any identity.
func (ca *CA) WriteIdentity(dir, name string, id Identity) (Files, error) {
	var uris []*url.URL
	if id.Role != "" {
		uris = []*url.URL{id.URI()}
	}
	certPEM, keyPEM, err := ca.issue(id.Name, uris, []string{"localhost", id.Name}, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback})
	if err != nil {
		return Files{}, err
	}
	return ca.write(dir, name, certPEM, keyPEM)
}

// WriteServer writes a server certificate without a role (CN and DNS
// host, with localhost, 127.0.0.1 and ::1) as name.crt, name.key and
// ca.crt into dir: an aggregator's serving certificate.
func (ca *CA) WriteServer(dir, name, host string) (Files, error) {
	certPEM, keyPEM, err := ca.issue(host, nil, []string{"localhost", host}, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback})
	if err != nil {
		return Files{}, err
	}
	return ca.write(dir, name, certPEM, keyPEM)
}

// WriteCA writes the CA's certificate and key as name.crt and name.key
// into dir (what the aggregator's --ca-cert and --ca-key read).
func (ca *CA) WriteCA(dir, name string) (certFile, keyFile string, err error) {
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(certFile, ca.certPEM, 0o644); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

func (ca *CA) write(dir, name string, certPEM, keyPEM []byte) (Files, error) {
	f := Files{
		Cert: filepath.Join(dir, name+".crt"),
		Key:  filepath.Join(dir, name+".key"),
		CA:   filepath.Join(dir, "ca.crt"),
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Files{}, err
	}
	for path, data := range map[string][]byte{f.Cert: certPEM, f.Key: keyPEM, f.CA: ca.certPEM} {
		mode := os.FileMode(0o644)
		if path == f.Key {
			mode = 0o600
		}
		if err := WriteFileAtomic(path, data, mode); err != nil {
			return Files{}, err
		}
	}
	return f, nil
}

// WriteFileAtomic writes data to path through a temporary file in the same
// directory, synced and renamed over path: a reader sees the old or the
// new content, never a part.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}

// WriteKey writes a private key as PKCS#8 PEM, mode 0600, atomically.
func WriteKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return WriteFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// ReadKey reads a private key written by WriteKey (or any PKCS#8, EC or
// PKCS#1 PEM key).
func ReadKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, err := parsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}
