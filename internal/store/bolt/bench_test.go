package bolt

import (
	"fmt"
	"testing"

	"github.com/vigilhq/vigil/internal/store/storetest"
)

// The file lives in the test's temp dir, on the disk the aggregator's data
// dir would be on: every create is one fsync'd bbolt commit.
func BenchmarkCreate(b *testing.B) {
	for _, workers := range []int{1, 16} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			storetest.BenchCreate(b, openTemp(b, Options{}), workers)
		})
	}
}

func BenchmarkWatch(b *testing.B) {
	storetest.BenchWatch(b, openTemp(b, Options{}))
}
