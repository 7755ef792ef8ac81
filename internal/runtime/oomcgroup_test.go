package runtime

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestSIGKILLExitReadsTheCgroupsOOMKills: a SIGKILL exit whose TaskOOM
// event has not arrived yet is an OOM kill when the task's cgroup counted
// one (v1 memory.oom_control, v2 memory.events), and stays a kill by a
// signal otherwise. Cgroup fixtures, as a real OOM event cannot be made to
// come late on demand; TestExitClassification covers the real kill.
func TestSIGKILLExitReadsTheCgroupsOOMKills(t *testing.T) {
	write := func(t *testing.T, path, body string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const rel = "/ns/c1"
	at := time.Unix(1_800_000_000, 0)
	for _, tc := range []struct {
		name  string
		setup func(root string)
		code  uint32
		want  ExitReason
	}{
		{"v2 oom_kill 1", func(root string) {
			write(t, filepath.Join(root, "cgroup.controllers"), "memory pids\n")
			write(t, filepath.Join(root, rel, "memory.events"), "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
		}, 137, ExitOOMKilled},
		{"v1 oom_kill 1", func(root string) {
			write(t, filepath.Join(root, "memory", rel, "memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
		}, 137, ExitOOMKilled},
		{"v1 oom_kill 0: an operator's kill", func(root string) {
			write(t, filepath.Join(root, "memory", rel, "memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
		}, 137, ExitSignal},
		{"cgroup gone: a kill by a signal", func(root string) {
			write(t, filepath.Join(root, "cgroup.controllers"), "memory\n")
		}, 137, ExitSignal},
		{"not a SIGKILL: the cgroup is not read", func(root string) {
			write(t, filepath.Join(root, "cgroup.controllers"), "memory\n")
			write(t, filepath.Join(root, rel, "memory.events"), "oom_kill 1\n")
		}, 128 + uint32(syscall.SIGTERM), ExitSignal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			tc.setup(root)
			r := &Runtime{cfg: Config{CgroupRoot: root}}
			en := &entry{cgroupRel: rel, c: Container{State: StateRunning}}
			_, ex := r.exited(en, tc.code, at)
			if ex == nil || ex.Reason != tc.want {
				t.Fatalf("exit %d: %+v, want reason %v", tc.code, ex, tc.want)
			}
		})
	}
}
