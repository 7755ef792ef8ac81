package bolt

import (
	"bytes"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/store"
)

// FuzzDecodeRecord: records read back from a file that may be damaged give
// a record or an error, never a panic, and a record re-encodes to itself.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeKV(store.KV{Value: []byte("v"), CreateRevision: 2, ModRevision: 5, Lease: 7}), u64(3))
	f.Add(encodeLease(&lease{ttl: time.Second, deadline: time.Unix(1700000000, 5)}), u64(1))
	f.Add([]byte{}, []byte{})
	f.Add([]byte{1, 0x80}, []byte{1, 2})
	f.Fuzz(func(t *testing.T, rec, key []byte) {
		if kv, err := decodeKV("k", rec); err == nil {
			kv.Key = "k"
			if got := encodeKV(kv); !bytes.Equal(got, rec) && len(rec) > 0 && rec[0] == recordV1 {
				// Varints have more than one encoding; decoding the
				// re-encoded record must give the same values.
				again, err := decodeKV("k", got)
				if err != nil || again.CreateRevision != kv.CreateRevision || again.ModRevision != kv.ModRevision ||
					again.Lease != kv.Lease || !bytes.Equal(again.Value, kv.Value) {
					t.Fatalf("record %x decoded to %+v, re-encoded to %x, decoded to %+v, %v", rec, kv, got, again, err)
				}
			}
		}
		if _, l, err := decodeLease(key, rec); err == nil && l.ttl <= 0 {
			t.Fatalf("lease record %x decoded to a TTL of %v", rec, l.ttl)
		}
	})
}
