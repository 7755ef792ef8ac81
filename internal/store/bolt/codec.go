package bolt

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/store"
)

// A key's record: a version byte, then create revision, mod revision and
// lease as varints, then the value.
const recordV1 = 1

func encodeKV(kv store.KV) []byte {
	b := make([]byte, 1, 1+3*binary.MaxVarintLen64+len(kv.Value))
	b[0] = recordV1
	b = binary.AppendVarint(b, kv.CreateRevision)
	b = binary.AppendVarint(b, kv.ModRevision)
	b = binary.AppendVarint(b, int64(kv.Lease))
	return append(b, kv.Value...)
}

// decodeKV copies what it returns: bbolt's memory is valid only inside its
// transaction.
func decodeKV(key string, b []byte) (store.KV, error) {
	bad := func(what string) (store.KV, error) {
		return store.KV{}, fmt.Errorf("record of key %q damaged (%s): %w", key, what, errdefs.ErrInvalid)
	}
	if len(b) == 0 || b[0] != recordV1 {
		return bad("unknown version")
	}
	b = b[1:]
	var vals [3]int64
	for i := range vals {
		v, n := binary.Varint(b)
		if n <= 0 {
			return bad("short header")
		}
		vals[i] = v
		b = b[n:]
	}
	value := make([]byte, len(b))
	copy(value, b)
	return store.KV{Key: key, Value: value, CreateRevision: vals[0], ModRevision: vals[1], Lease: store.LeaseID(vals[2])}, nil
}

// A lease's record, under its id (8 bytes, big endian): a version byte,
// then its TTL in nanoseconds and its deadline in Unix nanoseconds, as
// varints. The deadline is wall-clock time so that it means the same after
// a restart.
func encodeLease(l *lease) []byte {
	b := []byte{recordV1}
	b = binary.AppendVarint(b, int64(l.ttl))
	return binary.AppendVarint(b, l.deadline.UnixNano())
}

func decodeLease(k, b []byte) (store.LeaseID, *lease, error) {
	if len(k) != 8 {
		return 0, nil, fmt.Errorf("lease record with a key of %d bytes: %w", len(k), errdefs.ErrInvalid)
	}
	id := store.LeaseID(binary.BigEndian.Uint64(k))
	if len(b) == 0 || b[0] != recordV1 {
		return 0, nil, fmt.Errorf("lease %x: record of unknown version: %w", int64(id), errdefs.ErrInvalid)
	}
	ttl, n := binary.Varint(b[1:])
	if n <= 0 {
		return 0, nil, fmt.Errorf("lease %x: damaged record: %w", int64(id), errdefs.ErrInvalid)
	}
	deadline, m := binary.Varint(b[1+n:])
	if m <= 0 || ttl <= 0 {
		return 0, nil, fmt.Errorf("lease %x: damaged record: %w", int64(id), errdefs.ErrInvalid)
	}
	return id, &lease{ttl: time.Duration(ttl), deadline: time.Unix(0, deadline)}, nil
}
