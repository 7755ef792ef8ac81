package testenv

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

var workloadBuild struct {
	once sync.Once
	bin  []byte
	err  error
}

// workloadBinary returns the static test/workload binary, built once per
// process. Builds are cached in the temp dir under a hash of the sources, so
// parallel test binaries build it once between them.
func workloadBinary() ([]byte, error) {
	workloadBuild.once.Do(func() {
		workloadBuild.bin, workloadBuild.err = buildWorkload()
	})
	return workloadBuild.bin, workloadBuild.err
}

func buildWorkload() ([]byte, error) {
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	src := filepath.Join(root, "test", "workload")
	key, err := sourceHash(root, src)
	if err != nil {
		return nil, err
	}
	cacheDir := filepath.Join(os.TempDir(), "vigil-testenv-cache")
	if err := os.MkdirAll(cacheDir, 0o700); err != nil {
		return nil, err
	}
	out := filepath.Join(cacheDir, "workload-"+key)
	if b, err := os.ReadFile(out); err == nil {
		return b, nil
	}
	// One build at a time across test binaries: the others then find it.
	lock, err := os.OpenFile(filepath.Join(cacheDir, "build.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	defer lock.Close() // releases the flock
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("lock workload build: %w", err)
	}
	if b, err := os.ReadFile(out); err == nil {
		return b, nil
	}
	tmp, err := os.CreateTemp(cacheDir, "workload-build-")
	if err != nil {
		return nil, err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	cmd := exec.Command(goTool(), "build", "-o", tmp.Name(), "./test/workload")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOFLAGS=-buildvcs=false")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build ./test/workload: %w: %s", err, lastLines(b, 20))
	}
	// Rename is atomic: a concurrent builder either sees the whole file or none.
	if err := os.Rename(tmp.Name(), out); err != nil {
		return nil, err
	}
	return os.ReadFile(out)
}

// goTool finds the go command: the toolchain running the tests first.
func goTool() string {
	if root := runtime.GOROOT(); root != "" { //nolint:staticcheck // the toolchain of this test binary is the one to use
		if p := filepath.Join(root, "bin", "go"); fileExists(p) {
			return p
		}
	}
	return "go"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// sourceHash hashes the workload's Go files, go.mod, go.sum and the Go
// version: the cache key of a build.
func sourceHash(root, src string) (string, error) {
	files, err := filepath.Glob(filepath.Join(src, "*.go"))
	if err != nil {
		return "", err
	}
	files = append(files, filepath.Join(root, "go.mod"), filepath.Join(root, "go.sum"))
	sort.Strings(files)
	h := sha256.New()
	fmt.Fprintln(h, runtime.Version())
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", filepath.Base(f), len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// BuildFlags are the release build flags (the Makefile's GO_BUILD_FLAGS),
// for tests that build Vigil's binaries and measure or run them as shipped.
var BuildFlags = []string{"-trimpath", "-tags", "grpcnotrace"}

// BuildRelease builds the package pkg (an import path of this module) the
// way the Makefile builds releases (BuildFlags, no cgo) into the file out,
// with the toolchain of the test binary. extra go build flags come after
// BuildFlags (-ldflags, as the Makefile's GO_LDFLAGS). It fails the test if
// the build fails.
func BuildRelease(tb testing.TB, pkg, out string, extra ...string) {
	tb.Helper()
	args := append(append([]string{"build"}, BuildFlags...), extra...)
	cmd := exec.Command(goTool(), append(args, "-o", out, pkg)...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("go build %s: %v\n%s", pkg, err, lastLines(b, 20))
	}
}

// CheckReleaseVersion builds the main package pkg as released with
// main.version set to version (the Makefile's -ldflags -X) and checks that
// its --version prints that version alone on stdout and exits 0.
func CheckReleaseVersion(tb testing.TB, pkg, version string) {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), "bin")
	BuildRelease(tb, pkg, bin, "-ldflags", "-X main.version="+version)
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "--version")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		tb.Fatalf("%s --version: %v (stderr %q), want exit 0", pkg, err, stderr.String())
	}
	if stdout.String() != version+"\n" {
		tb.Fatalf("%s --version printed %q, want %q alone", pkg, stdout.String(), version)
	}
}

// ReleaseDeps lists the packages that the package in the current directory
// links when built with BuildFlags (go list -deps), for tests that guard
// what the shipped binaries carry. It uses the toolchain of the test binary
// (the suite needs it to build the workload anyway) and fails, rather than
// skips, when it cannot list.
func ReleaseDeps(tb testing.TB) []string {
	tb.Helper()
	args := append([]string{"list", "-deps"}, BuildFlags...)
	out, err := exec.Command(goTool(), append(args, ".")...).CombinedOutput()
	if err != nil {
		tb.Fatalf("go list -deps: %v\n%s", err, out)
	}
	return strings.Fields(string(out))
}
