package runtime

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/testenv"
)

// TestRestartLogRotatedAndRemoved: a restarted container that writes ten
// times its log cap (40 writes of 8 KiB over about 8 s, against a 32 KiB
// cap checked every 100 ms) is rotated again and again: at the end its
// log is within the cap, one older generation is kept, and together they
// hold less than it wrote. Deleting the container removes both files.
func TestRestartLogRotatedAndRemoved(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	ns := uniqueNS(t)
	image := env.BusyboxImage(t, ns)
	logDir := t.TempDir()
	const capBytes, chunk, chunks = 32 << 10, 8 << 10, 40
	w := startRuntime(t, env, Config{Namespaces: []string{ns}, LogDir: logDir, LogMaxBytes: capBytes, LogRotateInterval: 100 * time.Millisecond, CallTimeout: 30 * time.Second})
	const id = "chatty"
	script := fmt.Sprintf(`[ -e /tmp/second ] || { touch /tmp/second; exit 0; }; i=0; while [ $i -lt %d ]; do head -c %d /dev/zero | tr '\000' x; i=$((i+1)); sleep 0.2; done; echo; echo done; exec sleep 600`, chunks, chunk-1)
	cont, _ := env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: id, Image: image, Args: []string{"sh", "-c", script}})
	k := container.Key{Namespace: ns, ID: id}
	w.waitForKey(k, EventExited)
	env.DeleteTask(t, ns, id)
	w.waitForKey(k, EventTaskDeleted)
	// The old task's log was the harness's; deleted, the new task's output
	// goes to LogDir.
	if err := w.Restart(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(logDir, ns, id+".log")
	size := func(p string) int64 {
		fi, err := os.Stat(p)
		if err != nil {
			return 0
		}
		return fi.Size()
	}
	eventually(t, 60*time.Second, "the workload done, its log within the cap after two rotations or more", func() bool {
		b, _ := os.ReadFile(logFile)
		b1, _ := os.ReadFile(logFile + rotatedSuffix)
		return (strings.Contains(string(b), "done") || strings.Contains(string(b1), "done")) &&
			w.metrics.logRotations.Load() >= 2 && size(logFile) <= capBytes
	}, func() string {
		return fmt.Sprintf("log %d bytes, %s %d bytes, %d rotations", size(logFile), rotatedSuffix, size(logFile+rotatedSuffix), w.metrics.logRotations.Load())
	})
	written := int64(chunks*(chunk-1) + len("\ndone\n"))
	kept := size(logFile) + size(logFile+rotatedSuffix)
	t.Logf("wrote %d bytes; kept %d (log %d, %s %d) after %d rotations", written, kept, size(logFile), rotatedSuffix, size(logFile+rotatedSuffix), w.metrics.logRotations.Load())
	if kept >= written || size(logFile+rotatedSuffix) == 0 {
		t.Errorf("kept %d bytes of %d written, %s has %d: want less than written, and a rotated generation", kept, written, rotatedSuffix, size(logFile+rotatedSuffix))
	}

	// Deleted with its container.
	ctx := namespaces.WithNamespace(context.Background(), ns)
	env.DeleteTask(t, ns, id)
	if err := cont.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	w.waitForKey(k, EventRemoved)
	for _, p := range []string{logFile, logFile + rotatedSuffix} {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s after the container's delete: %v, want gone", p, err)
		}
	}
}
