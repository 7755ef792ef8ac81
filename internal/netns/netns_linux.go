package netns

import (
	"errors"
	"fmt"
	"os"
	goruntime "runtime"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// Self is the namespace file of the calling thread. Use it rather than
// /proc/self/ns/net, which names the main thread's namespace: a thread the
// runtime has not reused yet may be elsewhere.
const Self = "/proc/thread-self/ns/net"

// OfPid returns the path of process pid's network namespace file,
// /proc/PID/ns/net. The file names the namespace only while the process
// lives; a caller that keeps it must check its ID again.
func OfPid(pid uint32) string {
	return "/proc/" + strconv.FormatUint(uint64(pid), 10) + "/ns/net"
}

// ID identifies a network namespace: the device and inode of its nsfs file.
// Two paths (a /proc/PID/ns/net and a bind mount under /run/netns) name the
// same namespace exactly when their IDs are equal.
type ID struct {
	Dev, Ino uint64
}

// IDOf returns the ID of the namespace file at path. A path that does not
// exist, or whose process has exited, is errdefs.ErrNotFound.
func IDOf(path string) (ID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return ID{}, pathErr(path, err)
	}
	return ID{Dev: st.Dev, Ino: st.Ino}, nil
}

// Handle is an open namespace file. It keeps the namespace alive while
// open. The zero Handle is not valid; Close is safe to call twice.
type Handle struct {
	fd   int
	id   ID
	path string
}

// Open opens the namespace file at path and reads its ID from the open
// descriptor, so that the two agree even if path is replaced meanwhile.
// Errors wrap errdefs.ErrNotFound (no such file or process) or
// errdefs.ErrInvalid (the file is not a namespace).
func Open(path string) (*Handle, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, pathErr(path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat network namespace %s: %w", path, err)
	}
	// A path that is not an nsfs file (a plain file, a directory) would make
	// setns fail later with EINVAL; say so now.
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err == nil && fs.Type != unix.NSFS_MAGIC && fs.Type != unix.PROC_SUPER_MAGIC {
		unix.Close(fd)
		return nil, fmt.Errorf("%s is not a network namespace: %w", path, errdefs.ErrInvalid)
	}
	return &Handle{fd: fd, id: ID{Dev: st.Dev, Ino: st.Ino}, path: path}, nil
}

// ID returns the namespace's ID.
func (h *Handle) ID() ID { return h.id }

// Fd returns the open descriptor (-1 after Close).
func (h *Handle) Fd() int {
	if h == nil {
		return -1
	}
	return h.fd
}

// Close releases the descriptor. Safe to call twice.
func (h *Handle) Close() error {
	if h == nil || h.fd < 0 {
		return nil
	}
	err := unix.Close(h.fd)
	h.fd = -1
	return err
}

func pathErr(path string, err error) error {
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("network namespace %s: %w: %v", path, errdefs.ErrNotFound, err)
	}
	return fmt.Errorf("network namespace %s: %w", path, err)
}

// ErrRestore: the thread that ran a function in a namespace could not be
// moved back to its own namespace. The function has run; the thread was
// retired (its goroutine exited locked to it), so no other goroutine runs
// in the wrong namespace. Callers should give up what the function made
// if its use depends on the calling thread's namespace (a socket does
// not: it belongs to the namespace it was made in).
var ErrRestore = errors.New("could not return the thread to its own network namespace; thread retired")

// Do runs fn on an OS thread moved into the namespace at path and returns
// fn's error. It opens path for the length of the call; see Handle.Do.
func Do(path string, fn func() error) error {
	h, err := Open(path)
	if err != nil {
		return err
	}
	defer h.Close()
	return h.Do(fn)
}

// Do runs fn on an OS thread moved into h's namespace, blocking until fn
// returns, and returns fn's error.
//
// fn runs on a goroutine of its own, locked to its thread: the thread
// enters the namespace, fn runs, and the thread goes back to the namespace
// it came from whether fn succeeded, failed or panicked (a panic is raised
// again on the caller's goroutine). If the thread cannot go back, the
// goroutine exits still locked, which makes the Go runtime end the thread,
// and the error wraps ErrRestore (joined with fn's). Sockets fn creates
// belong to the namespace for their whole life and can be used from any
// goroutine afterwards. fn must not start goroutines that expect to be in
// the namespace, and must not unlock the thread.
//
// Do is safe for concurrent use; each call gets its own thread.
func (h *Handle) Do(fn func() error) error {
	if h == nil || h.fd < 0 {
		return fmt.Errorf("network namespace handle closed: %w", errdefs.ErrInvalid)
	}
	if err := h.do(fn); err != nil {
		return fmt.Errorf("network namespace %s: %w", h.path, err)
	}
	return nil
}

// do is Do on an open handle, with errors that do not name it.
func (h *Handle) do(fn func() error) error {
	type result struct {
		err   error
		panic any
	}
	ch := make(chan result, 1)
	go func() {
		goruntime.LockOSThread()
		var r result
		restored := runOnThisThread(h.fd, func() (err error) {
			defer func() {
				if p := recover(); p != nil {
					r.panic = p
				}
			}()
			return fn()
		}, &r.err)
		ch <- r
		if restored {
			goruntime.UnlockOSThread()
		}
		// Not restored: return still locked; the runtime ends the thread.
	}()
	r := <-ch
	if r.panic != nil {
		panic(r.panic)
	}
	return r.err
}

// setns is unix.Setns; tests replace it to make the way back fail, which a
// real namespace cannot be made to do on demand.
var setns = unix.Setns

// runOnThisThread moves the calling thread, which must be locked, into the
// namespace target, runs fn there and moves it back. It stores fn's error
// (or why fn did not run, or why the way back failed) in *errp, and returns
// whether the thread is in its original namespace: false only when the way
// back failed.
func runOnThisThread(target int, fn func() error, errp *error) (restored bool) {
	orig, err := unix.Open(Self, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		*errp = fmt.Errorf("open own network namespace: %w", err)
		return true
	}
	defer unix.Close(orig)
	if err := setns(target, unix.CLONE_NEWNET); err != nil {
		*errp = fmt.Errorf("enter network namespace: %w", err)
		return true
	}
	ferr := fn()
	if err := setns(orig, unix.CLONE_NEWNET); err != nil {
		*errp = errors.Join(ferr, fmt.Errorf("%w: %w", ErrRestore, err))
		return false
	}
	*errp = ferr
	return true
}
