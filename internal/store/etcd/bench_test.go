package etcd

import (
	"fmt"
	"testing"

	"github.com/vigilhq/vigil/internal/store/etcd/etcdtest"
	"github.com/vigilhq/vigil/internal/store/storetest"
)

// Benchmarks on real etcd members on loopback, their data dirs on the
// machine's disk (each write is fsync'd by every member of the quorum).
func BenchmarkCreate(b *testing.B) {
	for _, members := range []int{1, 3} {
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) {
			c := etcdtest.StartCluster(b, members)
			for _, workers := range []int{1, 16} {
				b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
					storetest.BenchCreate(b, newStore(b, c, Config{}), workers)
				})
			}
			b.Run("at500PerSecond", func(b *testing.B) {
				storetest.BenchCreateAtRate(b, newStore(b, c, Config{}), 500)
			})
		})
	}
}

func BenchmarkWatch(b *testing.B) {
	for _, members := range []int{1, 3} {
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) {
			storetest.BenchWatch(b, newStore(b, etcdtest.StartCluster(b, members), Config{}))
		})
	}
}
