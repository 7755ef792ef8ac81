package netns

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	goruntime "runtime"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// newNamespace makes a named network namespace with `ip netns add` for the
// test and returns its path; it is deleted when the test ends.
func newNamespace(tb testing.TB) string {
	tb.Helper()
	// testenv.Unavailable's rule (testenv imports this package): a missing
	// prerequisite skips, and fails under CI=true.
	missing := func(reason string) {
		if os.Getenv("CI") == "true" && !testing.Short() {
			tb.Fatal(reason)
		}
		tb.Skip(reason)
	}
	if os.Geteuid() != 0 {
		missing("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		missing("ip (iproute2) is missing (scripts/install-prereqs.sh installs it)")
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "vigil-netns-" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		tb.Fatalf("ip netns add: %v: %s", err, out)
	}
	tb.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			tb.Errorf("ip netns del: %v: %s", err, out)
		}
	})
	return "/run/netns/" + name
}

// linkNames lists the interfaces of the calling thread's namespace, through
// /proc/thread-self/net/dev (a file of the thread's namespace).
func linkNames(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/thread-self/net/dev")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, line := range strings.Split(string(b), "\n")[2:] {
		if name, _, ok := strings.Cut(line, ":"); ok {
			names = append(names, strings.TrimSpace(name))
		}
	}
	return names
}

func TestOfPid(t *testing.T) {
	if got := OfPid(42); got != "/proc/42/ns/net" {
		t.Errorf("OfPid(42) = %q", got)
	}
}

func TestIDOf(t *testing.T) {
	path := newNamespace(t)
	self, err := IDOf(Self)
	if err != nil {
		t.Fatal(err)
	}
	other, err := IDOf(path)
	if err != nil {
		t.Fatal(err)
	}
	if self == other || other.Ino == 0 {
		t.Errorf("IDOf(%s) = %+v, own %+v: want a different namespace", path, other, self)
	}
	h, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if h.ID() != other {
		t.Errorf("Open(%s).ID() = %+v, IDOf = %+v", path, h.ID(), other)
	}
	if _, err := IDOf("/proc/4294967295/ns/net"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("IDOf of a missing process: %v, want ErrNotFound", err)
	}
	if _, err := Open(t.TempDir()); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Open of a directory: %v, want ErrInvalid", err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := h.Do(func() error { return nil }); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Do on a closed handle: %v, want ErrInvalid", err)
	}
}

// TestDoRunsInside: fn sees the namespace's interfaces (a new namespace has
// only lo), and the caller's thread never leaves its own.
func TestDoRunsInside(t *testing.T) {
	path := newNamespace(t)
	want, _ := IDOf(path)
	own, _ := IDOf(Self)
	var inside ID
	var links []string
	if err := Do(path, func() error {
		var err error
		inside, err = IDOf(Self)
		links = linkNames(t)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if inside != want {
		t.Errorf("fn ran in %+v, want %+v", inside, want)
	}
	if len(links) != 1 || links[0] != "lo" {
		t.Errorf("interfaces inside: %v, want [lo]", links)
	}
	if now, _ := IDOf(Self); now != own {
		t.Errorf("caller's thread in %+v after Do, want %+v", now, own)
	}
	// A socket made inside belongs to the namespace after Do returns
	// (SIOCGSKNS opens the namespace of a socket).
	var fd int
	if err := Do(path, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	nsfd, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(nsfd)
	var st unix.Stat_t
	if err := unix.Fstat(nsfd, &st); err != nil {
		t.Fatal(err)
	}
	if (ID{Dev: st.Dev, Ino: st.Ino}) != want {
		t.Errorf("socket made in Do belongs to %d, want %+v", st.Ino, want)
	}
}

// TestFailingFunctionRestores: a function that fails or panics leaves the
// thread back in its own namespace; the error (and the panic) reach the
// caller.
func TestFailingFunctionRestores(t *testing.T) {
	path := newNamespace(t)
	h, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	goruntime.LockOSThread()
	defer goruntime.UnlockOSThread()
	own, _ := IDOf(Self)
	boom := errors.New("boom")

	var ferr error
	restored := runOnThisThread(h.Fd(), func() error { return boom }, &ferr)
	if !restored || !errors.Is(ferr, boom) {
		t.Errorf("failing fn: restored %v, err %v", restored, ferr)
	}
	if now, _ := IDOf(Self); now != own {
		t.Fatalf("thread in %+v after a failing fn, want its own %+v", now, own)
	}

	func() {
		defer func() {
			if p := recover(); p != "kaboom" {
				t.Errorf("recovered %v, want the fn's panic", p)
			}
		}()
		_ = h.Do(func() error { panic("kaboom") })
	}()
	// Do's thread is not this one; check a fresh Do starts from the host.
	if err := h.Do(func() error { return boom }); !errors.Is(err, boom) {
		t.Errorf("Do: %v, want %v", err, boom)
	}
	if now, _ := IDOf(Self); now != own {
		t.Errorf("caller's thread moved: %+v, want %+v", now, own)
	}
}

// TestRestoreFailureRetiresThread: when the way back fails (forced, as no
// real namespace can be made to refuse it on demand), the error says so
// alongside fn's, and the thread is not unlocked: Do's goroutine exits
// locked, so the runtime ends the thread. Other goroutines keep running in
// the agent's namespace.
func TestRestoreFailureRetiresThread(t *testing.T) {
	path := newNamespace(t)
	own, _ := IDOf(Self)
	var calls int
	var mu sync.Mutex
	setns = func(fd, nstype int) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == 2 { // the way back
			return unix.EPERM
		}
		return unix.Setns(fd, nstype)
	}
	defer func() { setns = unix.Setns }()
	boom := errors.New("boom")
	err := Do(path, func() error { return boom })
	if !errors.Is(err, ErrRestore) || !errors.Is(err, boom) || !errors.Is(err, unix.EPERM) {
		t.Fatalf("Do with a failing way back: %v, want ErrRestore, EPERM and fn's error", err)
	}
	setns = unix.Setns
	// Many goroutines, many threads: none of them is in the namespace.
	var wg sync.WaitGroup
	var bad sync.Map
	for range 50 {
		wg.Go(func() {
			goruntime.LockOSThread()
			defer goruntime.UnlockOSThread()
			if id, _ := IDOf(Self); id != own {
				bad.Store(id, true)
			}
		})
	}
	wg.Wait()
	bad.Range(func(k, _ any) bool {
		t.Errorf("a thread of the process runs in %+v after a failed restore", k)
		return true
	})
}

// BenchmarkDo: enter, run a function that does nothing, leave; against
// the same function on a fresh locked goroutine without setns.
func BenchmarkDo(b *testing.B) {
	path := newNamespace(b)
	h, err := Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	nop := func() error { return nil }
	b.Run("enter+run+leave", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := h.Do(nop); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("open+enter+run+leave", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := Do(path, nop); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("baseline-locked-goroutine", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			ch := make(chan error, 1)
			go func() {
				goruntime.LockOSThread()
				ch <- nop()
				goruntime.UnlockOSThread()
			}()
			if err := <-ch; err != nil {
				b.Fatal(err)
			}
		}
	})
}
