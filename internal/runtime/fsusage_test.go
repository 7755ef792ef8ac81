package runtime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/procstat"
	"github.com/vigilhq/vigil/internal/testenv"
)

func TestUpperDirOf(t *testing.T) {
	for _, tc := range []struct {
		opts []string
		want string
		err  error
	}{
		{[]string{"index=off", "workdir=/s/1/work", "upperdir=/s/1/fs", "lowerdir=/s/0/fs"}, "/s/1/fs", nil},
		{[]string{"rbind", "ro"}, "", errdefs.ErrInvalid},          // a bind mount (native snapshotter, a view)
		{[]string{"upperdir=relative/fs"}, "", errdefs.ErrInvalid}, // never a relative path
		{nil, "", errdefs.ErrInvalid},
	} {
		got, err := upperDirOf(tc.opts)
		if got != tc.want || !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
			t.Errorf("upperDirOf(%q) = %q, %v; want %q, %v", tc.opts, got, err, tc.want, tc.err)
		}
	}
}

func TestDirUsage(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "a", "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 256<<10)
	for i := range data {
		data[i] = byte(i) // not sparse, not zeros
	}
	if err := os.WriteFile(filepath.Join(dir, "a", "b", "f"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	// A hard link is counted once; a symbolic link is not followed.
	if err := os.Link(filepath.Join(dir, "a", "b", "f"), filepath.Join(dir, "a", "g")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/usr", filepath.Join(dir, "usr")); err != nil {
		t.Fatal(err)
	}
	u, err := DirUsage(dir)
	if err != nil {
		t.Fatal(err)
	}
	if u.Bytes < 256<<10 || u.Bytes > 256<<10+64<<10 {
		t.Errorf("DirUsage = %d bytes, want 256 KiB and its directories' blocks", u.Bytes)
	}
	if u.Inodes != 5 { // dir, a, a/b, f (once), usr
		t.Errorf("DirUsage = %d inodes, want 5", u.Inodes)
	}
	if _, err := DirUsage(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("DirUsage of a missing dir: %v, want not exist", err)
	}
}

// TestWritableLayerUsage: 1 MiB written by a container of the private
// containerd shows in its writable layer's usage, from the snapshotter and
// from walking its upper directory, and the two agree.
func TestWritableLayerUsage(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	ns := uniqueNS(t)
	w := startRuntime(t, env, Config{Namespaces: []string{ns}})
	env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "writer", Image: env.BusyboxImage(t, ns), Args: []string{"sh", "-c",
		"dd if=/dev/urandom of=/f bs=4096 count=256 && touch /done && sleep 1000000"}})
	k := container.Key{Namespace: ns, ID: "writer"}
	w.waitForKey(k, EventStarted)
	ctx := context.Background()
	upper, err := w.UpperDir(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(upper, "done")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the container did not write /done into %s in 30 s", upper)
		}
		time.Sleep(100 * time.Millisecond)
	}
	walked, err := DirUsage(upper)
	if err != nil {
		t.Fatal(err)
	}
	api, err := w.SnapshotUsage(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	const written = 1 << 20
	if walked.Bytes < written || api.Bytes < written {
		t.Fatalf("usage after 1 MiB written: walked %d B, snapshotter %d B", walked.Bytes, api.Bytes)
	}
	if d := int64(walked.Bytes) - int64(api.Bytes); d > 64<<10 || d < -64<<10 {
		t.Errorf("walked %d B, snapshotter %d B: more than 64 KiB apart", walked.Bytes, api.Bytes)
	}
	if _, err := w.SnapshotUsage(ctx, container.Key{Namespace: ns, ID: "nosuch"}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("SnapshotUsage of no container: %v, want not found", err)
	}
}

// TestWritableLayerUsageCost measures both ways at N containers (a
// benchmark: it skips unless VIGIL_FSUSAGE_CONTAINERS=N is set), each
// container having written VIGIL_FSUSAGE_FILES small files (default 100):
// the CPU of this process and of containerd per read of every container's
// layer, idle subtracted. Figures in docs/benchmarks/runtime.md.
func TestWritableLayerUsageCost(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("VIGIL_FSUSAGE_CONTAINERS"))
	if n <= 0 {
		t.Skip("benchmark: set VIGIL_FSUSAGE_CONTAINERS=100 (starts that many containers)")
	}
	files := 100
	if v, err := strconv.Atoi(os.Getenv("VIGIL_FSUSAGE_FILES")); err == nil && v >= 0 {
		files = v
	}
	env := testenv.Containerd(t)
	ns := uniqueNS(t)
	w := startRuntime(t, env, Config{Namespaces: []string{ns}})
	image := env.BusyboxImage(t, ns)
	keys := make([]container.Key, n)
	for i := range keys {
		keys[i] = container.Key{Namespace: ns, ID: fmt.Sprintf("w%03d", i)}
		env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: keys[i].ID, Image: image, Args: []string{"sh", "-c",
			fmt.Sprintf("mkdir /data && i=0; while [ $i -lt %d ]; do echo $i > /data/f$i; i=$((i+1)); done; touch /done; sleep 1000000", files)}})
	}
	ctx := context.Background()
	uppers := make([]string, n)
	deadline := time.Now().Add(5 * time.Minute)
	for i, k := range keys {
		var err error
		for uppers[i], err = w.UpperDir(ctx, k); err != nil; uppers[i], err = w.UpperDir(ctx, k) {
			if time.Now().After(deadline) {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		for _, err := os.Stat(filepath.Join(uppers[i], "done")); err != nil; _, err = os.Stat(filepath.Join(uppers[i], "done")) {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not finish writing", k.ID)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	containerd := containerdPid(t, env)
	self := func() time.Duration {
		var ru syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	ticks := func() uint64 { st, _ := procstat.Read(strconv.Itoa(containerd)); return st.UTime + st.STime }
	const rounds = 10
	measure := func(name string, read func(i int) (LayerUsage, error)) {
		idle0, idleStart := ticks(), time.Now()
		time.Sleep(3 * time.Second)
		idleRate := float64(ticks()-idle0) / time.Since(idleStart).Seconds()
		c0, s0, start := ticks(), self(), time.Now()
		var total uint64
		for range rounds {
			for i := range keys {
				u, err := read(i)
				if err != nil {
					t.Fatal(err)
				}
				total += u.Bytes
			}
		}
		wall := time.Since(start)
		own := self() - s0
		cd := (float64(ticks()-c0) - idleRate*wall.Seconds()) * 10 // ms
		t.Logf("%s at %d containers of %d files: per read of every layer: this process %.1f ms, containerd %+.1f ms, wall %.1f ms; %.1f µs of CPU per container (mean usage %d B)",
			name, n, files, float64(own.Microseconds())/1000/rounds, cd/rounds, float64(wall.Microseconds())/1000/rounds,
			(float64(own.Microseconds())+cd*1000)/rounds/float64(n), total/rounds/uint64(n))
	}
	measure("walk of the upper dir (DirUsage)", func(i int) (LayerUsage, error) { return DirUsage(uppers[i]) })
	measure("snapshotter Usage API (SnapshotUsage)", func(i int) (LayerUsage, error) { return w.SnapshotUsage(ctx, keys[i]) })
}

// FuzzUpperDirOf: any mount options (joined by commas here) give an
// absolute upper directory or an error wrapping errdefs.ErrInvalid, never
// a panic.
func FuzzUpperDirOf(f *testing.F) {
	f.Add("index=off,workdir=/s/1/work,upperdir=/s/1/fs,lowerdir=/s/0/fs")
	f.Add("rbind,ro")
	f.Fuzz(func(t *testing.T, opts string) {
		dir, err := upperDirOf(strings.Split(opts, ","))
		switch {
		case err != nil && !errors.Is(err, errdefs.ErrInvalid):
			t.Fatalf("upperDirOf(%q): %v, not invalid", opts, err)
		case err == nil && !filepath.IsAbs(dir):
			t.Fatalf("upperDirOf(%q) = %q, not absolute", opts, dir)
		}
	})
}
