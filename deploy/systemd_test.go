package deploy

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSystemdUnit checks deploy/systemd/vigil-agent.service with
// `systemd-analyze verify`, which fails on a bad value and warns (on
// stderr, exit 0) on an unknown key: either fails the test. The unit's
// ExecStart names /usr/local/bin/vigil-agent, which verify wants to exist:
// the copy checked here points at a stand-in executable.
func TestSystemdUnit(t *testing.T) {
	// Where available: systemd is not a prerequisite of the project, so
	// this skips (even in CI) on a machine without it.
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skipf("systemd-analyze not installed (package systemd): the unit is not verified: %v", err)
	}
	src, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/systemd/vigil-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(src, []byte("ExecStart=/usr/local/bin/vigil-agent ")) {
		t.Fatal("the unit's ExecStart no longer runs /usr/local/bin/vigil-agent: update this test")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "vigil-agent")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(dir, "vigil-agent.service")
	if err := os.WriteFile(unit, bytes.ReplaceAll(src, []byte("/usr/local/bin/vigil-agent"), []byte(bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(sa, "verify", unit)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if err != nil || strings.TrimSpace(stderr.String()) != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	for _, want := range []string{"StateDirectory=vigil", "CapabilityBoundingSet=CAP_SYS_ADMIN CAP_SYS_PTRACE CAP_NET_ADMIN", "--state-dir=/var/lib/vigil", "--metrics-listen="} {
		if !bytes.Contains(src, []byte(want)) {
			t.Errorf("the unit lacks %q", want)
		}
	}
}
