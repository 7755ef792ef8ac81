package metrics

import (
	"fmt"
	"strconv"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// MaxShards bounds the shards parameter of /metrics.
const MaxShards = 1024

// Shard selects part of the fleet: the nodes whose ShardOf(name, Of) equals
// Index. The zero value (and Of == 1) selects everything.
type Shard struct {
	Index int
	Of    int
}

// All reports whether the shard selects the whole fleet.
func (s Shard) All() bool { return s.Of <= 1 }

// First reports whether this is shard 0 (or everything): the shard that also
// carries the fleet-level series and the self-metrics.
func (s Shard) First() bool { return s.All() || s.Index == 0 }

// Holds reports whether node belongs to the shard.
func (s Shard) Holds(node string) bool { return s.All() || ShardOf(node, s.Of) == s.Index }

// String is "I/N", or "all".
func (s Shard) String() string {
	if s.All() {
		return "all"
	}
	return strconv.Itoa(s.Index) + "/" + strconv.Itoa(s.Of)
}

// ParseShard parses the shard and shards query parameters of /metrics. Both
// empty select everything; otherwise both must be given, with
// 0 <= shard < shards <= MaxShards. Errors wrap errdefs.ErrInvalid and say
// what was wrong.
func ParseShard(shard, shards string) (Shard, error) {
	if shard == "" && shards == "" {
		return Shard{Of: 1}, nil
	}
	if shard == "" || shards == "" {
		return Shard{}, fmt.Errorf("shard and shards must be given together (got shard=%q shards=%q): %w", shard, shards, errdefs.ErrInvalid)
	}
	n, err := strconv.Atoi(shards)
	if err != nil || n < 1 || n > MaxShards {
		return Shard{}, fmt.Errorf("shards=%q: want an integer from 1 to %d: %w", shards, MaxShards, errdefs.ErrInvalid)
	}
	i, err := strconv.Atoi(shard)
	if err != nil || i < 0 || i >= n {
		return Shard{}, fmt.Errorf("shard=%q: want an integer from 0 to %d (shards=%d): %w", shard, n-1, n, errdefs.ErrInvalid)
	}
	return Shard{Index: i, Of: n}, nil
}
