package pki

import (
	"crypto/tls"
	"fmt"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// Files names PEM files: a certificate, its private key, and the CA bundle
// that verifies the other side.
type Files struct {
	Cert string
	Key  string
	CA   string
	// Pending says that the certificate and key may not exist yet: they are
	// being issued (the agent's bootstrap writes them into its state dir).
	// ClientConfig then does not load them up front; handshakes fail until
	// they exist. Without it, missing files are an error at once.
	Pending bool
}

func (f Files) check() error {
	if f.Cert == "" || f.Key == "" || f.CA == "" {
		return fmt.Errorf("tls: certificate, key and CA files are all required (got cert=%q key=%q ca=%q): %w", f.Cert, f.Key, f.CA, errdefs.ErrInvalid)
	}
	return nil
}

// ServerConfig is the aggregator's TLS configuration: it presents its own
// certificate, reloaded from its files when they change, and verifies a
// client certificate against the CA when the client gives one. Whether a
// call needs one is the aggregator's decision, per method (bootstrap
// needs none; everything else does). The CA bundle is read once.
func ServerConfig(f Files) (*tls.Config, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	kp := &keyPair{certPath: f.Cert, keyPath: f.Key}
	if _, err := kp.get(); err != nil {
		return nil, err
	}
	pool, err := loadPool(f.CA)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return kp.get()
		},
		ClientCAs:  pool,
		ClientAuth: tls.VerifyClientCertIfGiven,
	}, nil
}

// ClientConfig is a client's TLS configuration (the agent's, vigilctl's):
// it presents the certificate of f, reloaded from its files when they
// change (so a renewed certificate is used by the next connection while
// the live ones continue), and verifies the server's against the CA.
// serverName overrides the name checked in the server certificate ("" uses
// the dialed host).
func ClientConfig(f Files, serverName string) (*tls.Config, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	kp := &keyPair{certPath: f.Cert, keyPath: f.Key}
	if !f.Pending {
		if _, err := kp.get(); err != nil {
			return nil, err
		}
	}
	pool, err := loadPool(f.CA)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return kp.get()
		},
		RootCAs:    pool,
		ServerName: serverName,
	}, nil
}

// ServerOnlyConfig is a client's TLS configuration without a client
// certificate: it only verifies the server against the CA file (the
// agent's bootstrap, before it has a certificate).
func ServerOnlyConfig(caFile, serverName string) (*tls.Config, error) {
	pool, err := loadPool(caFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, ServerName: serverName}, nil
}
