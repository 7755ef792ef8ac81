package etcd

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/store"
	"github.com/vigilhq/vigil/internal/store/etcd/etcdtest"
)

func TestNormalizePrefix(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/x", "/x/"}, {"/x/", "/x/"}, {"/x//", "/x/"}, {"x", "x/"}, {"/a/b", "/a/b/"},
		{"", ""}, {"/", ""}, {"//", ""},
	} {
		got, err := NormalizePrefix(tc.in)
		if tc.want == "" {
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("NormalizePrefix(%q) = %q, %v; want refused as invalid", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("NormalizePrefix(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// TestPrefixWithOrWithoutSlash: stores under "/x" and "/x/" write the same
// etcd key, with one "/" between prefix and key, and see each other's
// keys; a prefix of slashes only is refused.
func TestPrefixWithOrWithoutSlash(t *testing.T) {
	c := etcdtest.StartCluster(t, 1)
	ctx := context.Background()
	base := fmt.Sprintf("/test-slash-%d", prefixes.Add(1))
	bare := newStore(t, c, Config{Prefix: base})
	slash := newStore(t, c, Config{Prefix: base + "/"})
	if _, err := bare.Txn(ctx, nil, []store.Op{store.Put("nodes/n1/holder", []byte("r1"))}); err != nil {
		t.Fatal(err)
	}
	kv, err := slash.Get(ctx, "nodes/n1/holder")
	if err != nil || string(kv.Value) != "r1" || kv.Key != "nodes/n1/holder" {
		t.Fatalf("through %q: %+v %v", base+"/", kv, err)
	}
	resp, err := bare.Client().Get(ctx, base+"/nodes/n1/holder")
	if err != nil || resp.Count != 1 {
		t.Fatalf("etcd key %s/nodes/n1/holder: %v %v", base, resp, err)
	}
	if _, err := New(Config{Endpoints: c.Endpoints(), Prefix: "/"}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("prefix \"/\": %v, want refused", err)
	}
}
