package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigilhq/vigil/internal/errdefs"
)

func TestParseTokens(t *testing.T) {
	good := "# bootstrap tokens\n\n0123456789abcdef daemonset\n  fedcba9876543210fedc   spare  \n"
	set, err := ParseBootstrapTokens([]byte(good))
	if err != nil || len(set) != 2 {
		t.Fatalf("ParseBootstrapTokens = %d tokens, %v", len(set), err)
	}
	for _, tt := range []struct {
		name, data, wantErr string
		api                 bool
	}{
		{name: "short", data: "short name\n", wantErr: "line 1: the token is 5 characters"},
		{name: "fields", data: "0123456789abcdef\n", wantErr: "line 1: 1 fields, want TOKEN NAME"},
		{name: "dup", data: "0123456789abcdef a\n0123456789abcdef b\n", wantErr: "line 2: the same token appears twice"},
		{name: "bad name", data: "0123456789abcdef a/b\n", wantErr: "line 1"},
		{name: "api node role", api: true, data: "0123456789abcdef node n1\n", wantErr: "role node is for agents"},
		{name: "api unknown role", api: true, data: "0123456789abcdef admin n1\n", wantErr: `unknown role "admin"`},
		{name: "api fields", api: true, data: "0123456789abcdef viewer\n", wantErr: "want TOKEN ROLE NAME"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			parse := ParseBootstrapTokens
			if tt.api {
				parse = ParseAPITokens
			}
			_, err := parse([]byte(tt.data))
			if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want ErrInvalid containing %q", err, tt.wantErr)
			}
		})
	}
	set, err = ParseAPITokens([]byte("0123456789abcdef viewer grafana\nfedcba9876543210 alertmanager am\n"))
	if err != nil || len(set) != 2 {
		t.Fatalf("ParseAPITokens = %d, %v", len(set), err)
	}
}

// TestTokenFileReload: a line added grants, a line deleted revokes, and a
// file that stops parsing refuses every token until it is fixed.
func TestTokenFileReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	write := func(s string) {
		t.Helper()
		if err := WriteFileAtomic(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("0123456789abcdef first\n")
	f, err := OpenBootstrapTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	if tok, ok, err := f.Lookup("0123456789abcdef"); !ok || err != nil || tok.Name != "first" {
		t.Fatalf("Lookup = %v %v %v", tok, ok, err)
	}
	write("0123456789abcdef first\nabcdefabcdefabcdef second\n")
	if _, ok, _ := f.Lookup("abcdefabcdefabcdef"); !ok {
		t.Fatal("an added token is not granted")
	}
	write("abcdefabcdefabcdef second\n")
	if _, ok, _ := f.Lookup("0123456789abcdef"); ok {
		t.Fatal("a deleted (revoked) token is still granted")
	}
	write("abcdefabcdefabcdef second\nbroken\n")
	if _, ok, err := f.Lookup("abcdefabcdefabcdef"); ok || err == nil {
		t.Fatalf("a broken file: Lookup = %v, %v; want refused with an error", ok, err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := f.Lookup("abcdefabcdefabcdef"); ok || err == nil {
		t.Fatalf("a missing file: Lookup = %v, %v; want refused with an error", ok, err)
	}
	if _, err := OpenBootstrapTokens(path); err == nil {
		t.Fatal("opening a missing file succeeded")
	}
}

func TestParseCSR(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := NewCSR("node-1", key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ParseCSR(der)
	if err != nil || csr.NodeName != "node-1" || !key.PublicKey.Equal(csr.PublicKey) {
		t.Fatalf("ParseCSR = %+v, %v", csr, err)
	}
	tampered := append([]byte(nil), der...)
	tampered[len(tampered)-3] ^= 0xff
	if _, err := ParseCSR(tampered); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("tampered CSR: err = %v, want ErrInvalid", err)
	}
	bad, err := NewCSR("a b", key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseCSR(bad); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "common name") {
		t.Fatalf("CSR with a bad name: err = %v", err)
	}
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	weak, err := NewCSR("n", small)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseCSR(weak); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "1024 bits") {
		t.Fatalf("RSA-1024 CSR: err = %v", err)
	}
}

// TestTokenSwappedForOneOfTheSameSize: a token file replaced at once by one
// of the same size (a revoked token swapped for another of its length, in
// the same clock tick) is read again: the revoked token is refused. Time
// and size alone missed it in most runs.
func TestTokenSwappedForOneOfTheSameSize(t *testing.T) {
	for i := range 30 {
		path := filepath.Join(t.TempDir(), "tokens")
		if err := WriteFileAtomic(path, []byte("0123456789abcdef first\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := OpenBootstrapTokens(path)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := f.Lookup("0123456789abcdef"); !ok {
			t.Fatal("the first token is not granted")
		}
		if err := WriteFileAtomic(path, []byte("fedcba9876543210 first\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := f.Lookup("0123456789abcdef"); ok {
			t.Fatalf("run %d: the revoked token is still granted after a same-size rewrite", i)
		}
		if _, ok, _ := f.Lookup("fedcba9876543210"); !ok {
			t.Fatalf("run %d: the new token is not granted", i)
		}
	}
}
