package runtime

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	tasktypes "github.com/containerd/containerd/api/types/task"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
)

// TestRestartIO: where a restarted task's output goes, for each kind of
// output the old task had. The integration tests run the file cases
// through containerd; this covers the rest (FIFOs, a file the agent cannot
// see, a logging binary, a terminal, a log file that cannot be made).
func TestRestartIO(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	existing := filepath.Join(dir, "existing.log")
	if err := os.WriteFile(existing, []byte("kept\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(dir, "fresh.log")
	unreachable := "file:///nonexistent-vigil-dir/x.log"
	binary := "binary:///usr/local/bin/logger?tag=x"

	for name, tc := range map[string]struct {
		old     *tasktypes.Process
		path    string // the file both streams go to
		uri     string // else the URI both get
		logDir  bool   // else the LogDir file
		created string // a file that must exist afterwards
	}{
		"no old task":                  {old: nil, logDir: true},
		"terminal":                     {old: &tasktypes.Process{Stdout: existing, Terminal: true}, logDir: true},
		"a client's FIFO":              {old: &tasktypes.Process{Stdout: fifo, Stderr: fifo}, logDir: true},
		"a relative path":              {old: &tasktypes.Process{Stdout: "x.log"}, logDir: true},
		"a path that is gone":          {old: &tasktypes.Process{Stdout: filepath.Join(dir, "gone.log")}, logDir: true},
		"unparsable":                   {old: &tasktypes.Process{Stdout: "file://%zz"}, logDir: true},
		"a file from a restart":        {old: &tasktypes.Process{Stdout: existing, Stderr: filepath.Dir(existing) + "/./existing.log"}, path: existing},
		"file:// of an existing file":  {old: &tasktypes.Process{Stdout: "file://" + existing}, path: existing},
		"file:// of a file to be made": {old: &tasktypes.Process{Stdout: "file://" + fresh}, path: fresh, created: fresh},
		"file:// the agent cannot see": {old: &tasktypes.Process{Stdout: unreachable}, uri: unreachable},
		"file:// of a FIFO":            {old: &tasktypes.Process{Stdout: "file://" + fifo}, uri: "file://" + fifo},
		"binary://":                    {old: &tasktypes.Process{Stdout: binary, Stderr: binary}, uri: binary},
	} {
		t.Run(name, func(t *testing.T) {
			logDir := t.TempDir()
			r := &Runtime{cfg: Config{LogDir: logDir}}
			k := container.Key{Namespace: "ns", ID: "c"}
			stdout, stderr, err := r.restartIO(k, tc.old)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.path
			if tc.logDir {
				want = filepath.Join(logDir, "ns", "c.log")
			}
			switch {
			case tc.uri != "":
				if stdout != tc.uri || stderr != tc.uri {
					t.Errorf("got %q, %q; want the URI %q for both", stdout, stderr, tc.uri)
				}
			default:
				if stdout != want || stderr == stdout {
					t.Errorf("got %q, %q; want %q and another spelling of it", stdout, stderr, want)
				}
				a, errA := os.Stat(stdout)
				b, errB := os.Stat(stderr)
				if errA != nil || errB != nil || !a.Mode().IsRegular() || !os.SameFile(a, b) {
					t.Errorf("%q and %q are not one regular file: %v, %v", stdout, stderr, errA, errB)
				}
			}
			if tc.created != "" {
				if _, err := os.Stat(tc.created); err != nil {
					t.Errorf("%s not made: %v", tc.created, err)
				}
			}
		})
	}
	if b, _ := os.ReadFile(existing); string(b) != "kept\n" {
		t.Errorf("an existing log was changed: %q", b)
	}

	t.Run("no LogDir", func(t *testing.T) {
		r := &Runtime{}
		if stdout, stderr, err := r.restartIO(container.Key{Namespace: "ns", ID: "c"}, &tasktypes.Process{Stdout: fifo}); err != nil || stdout != "" || stderr != "" {
			t.Errorf("got %q, %q, %v; want the output discarded", stdout, stderr, err)
		}
	})
	t.Run("LogDir file cannot be made", func(t *testing.T) {
		logDir := t.TempDir()
		if err := os.MkdirAll(filepath.Join(logDir, "ns", "c.log"), 0o755); err != nil {
			t.Fatal(err)
		}
		r := &Runtime{cfg: Config{LogDir: logDir}}
		if _, _, err := r.restartIO(container.Key{Namespace: "ns", ID: "c"}, nil); !errors.Is(err, errdefs.ErrPermission) {
			t.Errorf("err = %v, want ErrPermission naming the log file", err)
		}
	})
}
