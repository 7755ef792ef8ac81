package aggregator_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/store/bolt"
)

// TestReplicaRefusesWildcardAdvertise: a replica that would register a
// wildcard address for the others' fleet-wide reads refuses to start (the
// others would dial their own host and take its answer for this one's).
func TestReplicaRefusesWildcardAdvertise(t *testing.T) {
	st, err := bolt.Open(filepath.Join(t.TempDir(), "vigil.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, tc := range []struct {
		listen, advertise string
		ok                bool
	}{
		{":7400", "", false},
		{"0.0.0.0:7400", "", false},
		{"[::]:7400", "", false},
		{"127.0.0.1:7400", "0.0.0.0:7400", false},
		{":7400", "10.0.0.5:7400", true},
		{":7400", "vigil-aggregator-0.vigil:7400", true},
		{"10.0.0.5:7400", "", true},
	} {
		cfg := aggregator.Config{Insecure: true, Replicated: true, Store: st, GRPCListen: tc.listen, AdvertiseAPI: tc.advertise}
		err := cfg.Validate()
		wildcard := err != nil && strings.Contains(err.Error(), "wildcard")
		if wildcard == tc.ok || (err != nil && !errors.Is(err, errdefs.ErrInvalid)) {
			t.Errorf("listen %q advertise %q: %v; want refused as a wildcard: %v", tc.listen, tc.advertise, err, !tc.ok)
		}
	}
}
