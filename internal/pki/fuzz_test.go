package pki

import (
	"errors"
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
