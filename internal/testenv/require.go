package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// prereqs remembers the outcome of installing the prerequisites, so that a
// test binary runs the install script at most once.
var prereqs struct {
	once sync.Once
	err  error
}

// Require skips the test unless the machine can run integration tests: Linux,
// root, and the system packages of scripts/install-prereqs.sh installed (it
// runs that script once per test binary to install what is missing). When the
// environment variable CI is "true", a missing prerequisite fails the test
// instead, so that CI never passes by skipping. Safe for concurrent use.
func Require(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		unavailable(tb, "integration test skipped in -short mode")
	}
	if runtime.GOOS != "linux" {
		unavailable(tb, "integration test needs Linux, this is "+runtime.GOOS)
	}
	if os.Geteuid() != 0 {
		unavailable(tb, "integration test needs root (containerd, network namespaces): run `sudo go test` or as root")
	}
	prereqs.once.Do(func() { prereqs.err = installPrereqs() })
	if prereqs.err != nil {
		unavailable(tb, "integration test prerequisites missing: "+prereqs.err.Error())
	}
}

// LookPath returns the path of the program name, or skips the test when it
// is not installed, failing it instead under CI=true, where
// scripts/install-prereqs.sh has installed everything. It does not run the
// install script: use it for programs a test needs beyond containerd.
func LookPath(tb testing.TB, name string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		unavailable(tb, fmt.Sprintf("%s not installed (scripts/install-prereqs.sh installs it): %v", name, err))
	}
	return p
}

// Unavailable skips the test for a missing prerequisite, or fails it under
// CI=true (where nothing may be missing), with the reason.
func Unavailable(tb testing.TB, reason string) {
	tb.Helper()
	unavailable(tb, reason)
}

// unavailable skips, or fails under CI=true, with the reason.
func unavailable(tb testing.TB, reason string) {
	tb.Helper()
	if os.Getenv("CI") == "true" && !testing.Short() {
		tb.Fatal(reason)
	}
	tb.Skip(reason)
}

// installPrereqs runs scripts/install-prereqs.sh under a file lock (parallel
// test binaries would otherwise race on apt) and checks the result.
func installPrereqs() error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(os.TempDir(), "vigil-testenv-prereqs.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("open prerequisites lock: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock prerequisites: %w", err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN) //nolint:errcheck // closing the file releases it anyway

	cmd := exec.Command("bash", filepath.Join(root, "scripts", "install-prereqs.sh"))
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("scripts/install-prereqs.sh: %w: %s", err, lastLines(out, 20))
	}
	for _, bin := range []string{"containerd", "runc", "containerd-shim-runc-v2"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s not found in PATH after scripts/install-prereqs.sh", bin)
		}
	}
	for _, file := range []string{cniBinDir + "/bridge", cniBinDir + "/host-local", cniBinDir + "/loopback", busyboxPath} {
		if _, err := os.Stat(file); err != nil {
			return fmt.Errorf("after scripts/install-prereqs.sh: %w", err)
		}
	}
	return nil
}

// repoRoot walks up from the working directory (a test runs in its package's
// directory) to the directory holding go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory: run the tests from inside the repository")
		}
		dir = parent
	}
}
