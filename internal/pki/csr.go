package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// maxCSRBytes bounds a CSR's DER: a P-256 request is about 250 bytes, an
// RSA-4096 one under 1.5 KiB.
const maxCSRBytes = 8 << 10

// CSR is what the aggregator takes from a certificate signing request: the
// node name asked for (the Subject Common Name) and the public key. Nothing
// else in the request reaches a certificate.
type CSR struct {
	NodeName  string
	PublicKey crypto.PublicKey
}

// ParseCSR parses a DER certificate signing request and checks it: its
// signature (the sender holds the private key), a P-256/P-384 ECDSA,
// Ed25519 or RSA (2048 to 8192 bits) key, and a Common Name that is a valid
// node name. Errors wrap errdefs.ErrInvalid and say what was wrong.
func ParseCSR(der []byte) (CSR, error) {
	if len(der) == 0 {
		return CSR{}, fmt.Errorf("certificate request is empty: %w", errdefs.ErrInvalid)
	}
	if len(der) > maxCSRBytes {
		return CSR{}, fmt.Errorf("certificate request is %d bytes, the limit is %d: %w", len(der), maxCSRBytes, errdefs.ErrInvalid)
	}
	req, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return CSR{}, fmt.Errorf("certificate request: %v: %w", err, errdefs.ErrInvalid)
	}
	if err := req.CheckSignature(); err != nil {
		return CSR{}, fmt.Errorf("certificate request signature: %v: %w", err, errdefs.ErrInvalid)
	}
	switch k := req.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return CSR{}, fmt.Errorf("certificate request: ECDSA curve %s is not P-256 or P-384: %w", k.Curve.Params().Name, errdefs.ErrInvalid)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < 2048 || n > 8192 {
			return CSR{}, fmt.Errorf("certificate request: RSA key of %d bits (want 2048 to 8192): %w", n, errdefs.ErrInvalid)
		}
	default:
		return CSR{}, fmt.Errorf("certificate request: unsupported key type %T: %w", req.PublicKey, errdefs.ErrInvalid)
	}
	if err := ValidName(req.Subject.CommonName); err != nil {
		return CSR{}, fmt.Errorf("certificate request common name (the node name): %w", err)
	}
	return CSR{NodeName: req.Subject.CommonName, PublicKey: req.PublicKey}, nil
}

// NewCSR makes a DER certificate signing request for node name with key.
func NewCSR(name string, key crypto.Signer) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return nil, fmt.Errorf("certificate request for %s: %w", name, err)
	}
	return der, nil
}
