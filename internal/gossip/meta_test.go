package gossip

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/vigilhq/vigil/internal/errdefs"
)

func TestMetaRoundTrip(t *testing.T) {
	for _, m := range []Meta{
		{},
		{AgentVersion: "v1.4.2", StreamUp: true, Containerd: HealthOK},
		{AgentVersion: "dev", Containerd: HealthUnavailable, Leaving: true},
	} {
		b := m.Encode()
		if len(b) > 4+MaxVersionLen {
			t.Errorf("%+v encodes to %d bytes", m, len(b))
		}
		got, err := DecodeMeta(b)
		if err != nil || got != m {
			t.Errorf("DecodeMeta(Encode(%+v)) = %+v, %v", m, got, err)
		}
	}
	long := Meta{AgentVersion: strings.Repeat("v", 100)}
	got, err := DecodeMeta(long.Encode())
	if err != nil || len(got.AgentVersion) != MaxVersionLen {
		t.Errorf("a 100-byte version decodes to %d bytes, %v; want cut to %d", len(got.AgentVersion), err, MaxVersionLen)
	}
}

func TestDecodeMetaDefensive(t *testing.T) {
	ok := Meta{AgentVersion: "v1", StreamUp: true}.Encode()
	for _, tc := range []struct {
		name string
		in   []byte
		want Meta
		err  string
	}{
		{name: "empty is none", in: nil},
		{name: "later fields appended are ignored", in: append(bytes.Clone(ok), 9, 9, 9), want: Meta{AgentVersion: "v1", StreamUp: true}},
		{name: "unknown health reads as unknown", in: []byte{1, 0, 77, 0}, want: Meta{}},
		{name: "another version", in: []byte{2, 0, 0, 0}, err: "version 2"},
		{name: "short header", in: []byte{1, 0}, err: "shorter than the 4-byte header"},
		{name: "version length past the end", in: []byte{1, 0, 0, 5, 'a'}, err: "5 bytes, 1 present"},
		{name: "version too long", in: append([]byte{1, 0, 0, 200}, bytes.Repeat([]byte{'a'}, 200)...), err: "more than 64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeMeta(tc.in)
			if tc.err != "" {
				if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("DecodeMeta = %+v, %v; want ErrInvalid with %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("DecodeMeta = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

// FuzzDecodeMeta: any bytes a peer sends decode without panicking, and
// what decodes encodes back to a prefix-compatible form that decodes the
// same.
func FuzzDecodeMeta(f *testing.F) {
	f.Add([]byte{})
	f.Add(Meta{AgentVersion: "v1.2.3", StreamUp: true, Containerd: HealthOK}.Encode())
	f.Add([]byte{1, 3, 2, 0})
	f.Add([]byte{1, 0, 0, 64})
	f.Add([]byte{2, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMeta(b)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		again, err := DecodeMeta(m.Encode())
		if err != nil || again != m {
			t.Fatalf("re-encoding %+v decodes to %+v, %v", m, again, err)
		}
	})
}
