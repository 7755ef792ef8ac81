package pki

import (
	"errors"
	"net/url"
	"testing"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// FuzzParseTokens: any token file parses into tokens that satisfy the
// documented rules, or fails with ErrInvalid; never a panic.
func FuzzParseTokens(f *testing.F) {
	f.Add([]byte("0123456789abcdef daemonset\n"), false)
	f.Add([]byte("# c\n0123456789abcdef viewer grafana\n"), true)
	f.Add([]byte("0123456789abcdef node n\n"), true)
	f.Fuzz(func(t *testing.T, data []byte, api bool) {
		parse := ParseBootstrapTokens
		if api {
			parse = ParseAPITokens
		}
		set, err := parse(data)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		for _, tok := range set {
			if ValidName(tok.Name) != nil {
				t.Fatalf("accepted an invalid name %q", tok.Name)
			}
			if api == (tok.Role == RoleNode) {
				t.Fatalf("role %q accepted (api %v)", tok.Role, api)
			}
		}
	})
}

// FuzzParseCSR: any bytes sent as a CSR are refused with ErrInvalid or give
// a valid node name and a key; never a panic.
func FuzzParseCSR(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, err := ParseCSR(der)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if ValidName(csr.NodeName) != nil || csr.PublicKey == nil {
			t.Fatalf("accepted %+v", csr)
		}
	})
}

// FuzzParsePrivateKey: any bytes read from a key file give a signer or an
// error wrapping ErrInvalid; never a panic.
func FuzzParsePrivateKey(f *testing.F) {
	f.Add([]byte(""))
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Add([]byte("-----BEGIN EC PRIVATE KEY-----\n-----END EC PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := parsePrivateKey(data)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if k == nil || k.Public() == nil {
			t.Fatal("accepted a key without a public half")
		}
	})
}

// FuzzParseIdentityURI: any URI SAN parses into a valid role and name that
// print back to the same identity, or fails with ErrInvalid; never a panic.
func FuzzParseIdentityURI(f *testing.F) {
	f.Add("spiffe://vigil/node/n1")
	f.Add("spiffe://vigil/operator/alice")
	f.Add("spiffe://vigil/node/")
	f.Add("spiffe://other/node/n1")
	f.Add("spiffe://u@vigil:1/node/n1?q#f")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := url.Parse(s)
		if err != nil {
			return // not a URI at all: x509 refuses such a SAN before us
		}
		id, err := ParseIdentityURI(u)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if ValidName(id.Name) != nil {
			t.Fatalf("accepted an invalid name %q from %q", id.Name, s)
		}
		if _, err := ParseRole(string(id.Role)); err != nil {
			t.Fatalf("accepted an invalid role %q from %q", id.Role, s)
		}
		back, err := ParseIdentityURI(id.URI())
		if err != nil || back != id {
			t.Fatalf("%q -> %v -> %v does not round-trip: %v", s, id, id.URI(), err)
		}
	})
}
