package gossip

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/hashicorp/memberlist"

	"github.com/vigilhq/vigil/internal/errdefs"
)

func key(seed byte, n int) []byte { return bytes.Repeat([]byte{seed}, n) }

func b64(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

func TestParseKeys(t *testing.T) {
	k1, k2, k3 := key(1, 16), key(2, 24), key(3, 32)
	for _, tc := range []struct {
		name, in string
		want     [][]byte
		errLine  string // in the error, when one is expected
	}{
		{name: "one", in: b64(k1) + "\n", want: [][]byte{k1}},
		{name: "ring, comments, blanks, CRLF", in: "# primary\r\n" + b64(k3) + "\r\n\n  " + b64(k2) + "  \n" + b64(k1), want: [][]byte{k3, k2, k1}},
		{name: "duplicate kept once", in: b64(k1) + "\n" + b64(k1), want: [][]byte{k1}},
		{name: "empty", in: "\n# nothing\n", errLine: "no key in it"},
		{name: "not base64", in: b64(k1) + "\nnot*base64\n", errLine: "line 2: not base64"},
		{name: "wrong size", in: b64(key(9, 20)), errLine: "line 1: a key of 20 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseKeys("keys.txt", []byte(tc.in))
			if tc.errLine != "" {
				if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "keys.txt") || !strings.Contains(err.Error(), tc.errLine) {
					t.Fatalf("ParseKeys = %v, want ErrInvalid naming keys.txt and %q", err, tc.errLine)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d keys, want %d", len(got), len(tc.want))
			}
			for i := range got {
				if !bytes.Equal(got[i], tc.want[i]) {
					t.Errorf("key %d differs", i)
				}
			}
		})
	}
}

func TestApplyKeys(t *testing.T) {
	k1, k2, k3 := key(1, 16), key(2, 16), key(3, 32)
	ring, err := memberlist.NewKeyring(nil, k1)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		keys [][]byte
	}{
		{[][]byte{k1, k2}}, // 1. install the new key
		{[][]byte{k2, k1}}, // 2. make it primary
		{[][]byte{k2}},     // 3. remove the old one
		{[][]byte{k3}},     // a replacement all at once
	}
	for i, s := range steps {
		if _, err := applyKeys(ring, s.keys); err != nil {
			t.Fatalf("step %d: %v", i+1, err)
		}
		got := ring.GetKeys()
		if len(got) != len(s.keys) || !bytes.Equal(ring.GetPrimaryKey(), s.keys[0]) {
			t.Fatalf("step %d: ring has %d keys, primary %x; want %d, primary %x", i+1, len(got), ring.GetPrimaryKey(), len(s.keys), s.keys[0])
		}
		for _, k := range s.keys {
			if !hasKey(got, k) {
				t.Errorf("step %d: key %x missing", i+1, k[:1])
			}
		}
	}
	if changed, _ := applyKeys(ring, [][]byte{k3}); changed {
		t.Error("applying the same keys again changed the ring")
	}
}

// FuzzParseKeys: any key file content parses to valid keys or to an error
// wrapping ErrInvalid that names the file; never a panic.
func FuzzParseKeys(f *testing.F) {
	f.Add([]byte(b64(key(1, 16)) + "\n" + b64(key(2, 32)) + "\n"))
	f.Add([]byte("# comment\r\n\r\n" + b64(key(3, 24))))
	f.Add([]byte("not base64\n"))
	f.Add([]byte(b64(key(4, 20))))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := ParseKeys("k", data)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "gossip key file k") {
				t.Fatalf("error %q does not wrap ErrInvalid naming the file", err)
			}
			return
		}
		if len(keys) == 0 {
			t.Fatal("no error and no key")
		}
		for _, k := range keys {
			if memberlist.ValidateKey(k) != nil {
				t.Fatalf("invalid key of %d bytes accepted", len(k))
			}
		}
		if _, err := memberlist.NewKeyring(keys[1:], keys[0]); err != nil {
			t.Fatalf("keys do not make a keyring: %v", err)
		}
	})
}
