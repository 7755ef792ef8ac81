package bolt

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

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

// BenchmarkCreateAt500PerSecond: creates arriving at the remediation
// goal's rate, each on its own.
func BenchmarkCreateAt500PerSecond(b *testing.B) {
	storetest.BenchCreateAtRate(b, openTemp(b, Options{}), 500)
}

func BenchmarkWatch(b *testing.B) {
	storetest.BenchWatch(b, openTemp(b, Options{}))
}

// BenchmarkBaselineBboltUpdate is the floor under BenchmarkCreate's
// workers=1: a bare bbolt transaction putting one key, fsync'd, one at a
// time, in the same kind of file.
func BenchmarkBaselineBboltUpdate(b *testing.B) {
	db, err := bbolt.Open(filepath.Join(b.TempDir(), "raw.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	value := make([]byte, 200)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		t0 := time.Now()
		err := db.Update(func(tx *bbolt.Tx) error {
			bk, err := tx.CreateBucketIfNotExists([]byte("b"))
			if err != nil {
				return err
			}
			return bk.Put(fmt.Appendf(nil, "bench/intent/%09d", i), value)
		})
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	elapsed := time.Since(start)
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
	b.ReportMetric(float64(lat[len(lat)/2])/1e6, "p50-ms")
	b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)])/1e6, "p99-ms")
}
