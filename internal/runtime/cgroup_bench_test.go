package runtime

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/testenv"
)

// realCgroup creates an empty cgroup named after the benchmark in every
// controller of the host's hierarchy (root only) and returns the layout and
// its relative path; it is removed when the benchmark ends.
func realCgroup(b *testing.B) (cgroupLayout, string) {
	b.Helper()
	testenv.Require(b) // root, to create a cgroup
	l, err := detectCgroupLayout(DefaultCgroupRoot)
	if err != nil {
		b.Fatal(err)
	}
	rel := fmt.Sprintf("/vigil-bench-%d", os.Getpid())
	var dirs []string
	for _, d := range []string{l.cpu, l.cpuacct, l.memory, l.pids, l.blkio, l.unified} {
		if d == "" {
			continue
		}
		p := filepath.Join(d, rel)
		if err := os.Mkdir(p, 0o755); err != nil && !os.IsExist(err) {
			b.Fatal(err)
		}
		dirs = append(dirs, p)
	}
	b.Cleanup(func() {
		for _, d := range dirs {
			_ = syscall.Rmdir(d)
		}
	})
	return l, rel
}

// BenchmarkCgroupRead compares one container's reading with its files kept
// open (pread at offset 0) against opening, reading and closing each file
// every time, on a real cgroup of the host.
func BenchmarkCgroupRead(b *testing.B) {
	l, rel := realCgroup(b)
	b.Run("kept-open", func(b *testing.B) {
		r, err := openCgroup(l, rel)
		if err != nil {
			b.Fatal(err)
		}
		defer r.Close()
		buf := make([]byte, 4096)
		var s Stats
		now := time.Now()
		b.ReportAllocs()
		for b.Loop() {
			if err := r.read(&s, &buf, now); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("reopen", func(b *testing.B) {
		buf := make([]byte, 4096)
		var s Stats
		now := time.Now()
		b.ReportAllocs()
		for b.Loop() {
			r, err := openCgroup(l, rel)
			if err != nil {
				b.Fatal(err)
			}
			if err := r.read(&s, &buf, now); err != nil {
				b.Fatal(err)
			}
			r.Close()
		}
	})
}

// BenchmarkCgroupFile is the cost of one pread of each file the collector
// reads, to see which ones matter.
func BenchmarkCgroupFile(b *testing.B) {
	l, rel := realCgroup(b)
	paths := cgroupFiles(l, rel)
	buf := make([]byte, 8192)
	for _, p := range paths {
		if p == "" {
			continue
		}
		b.Run(filepath.Base(filepath.Dir(filepath.Dir(p)))+"/"+filepath.Base(p), func(b *testing.B) {
			fd, err := syscall.Open(p, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer syscall.Close(fd)
			for b.Loop() {
				if _, err := syscall.Pread(fd, buf, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
