package network

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// nsSockets are the two sockets the monitor keeps per namespace.
type nsSockets struct {
	conn *rtnlConn
	sub  *subscription
}

func (s nsSockets) close() {
	s.conn.close()
	s.sub.close()
}

// openSockets opens the request and subscription sockets in the calling
// thread's namespace.
func openSockets() (nsSockets, error) {
	conn, err := openConn()
	if err != nil {
		return nsSockets{}, err
	}
	sub, err := openSubscription()
	if err != nil {
		conn.close()
		return nsSockets{}, err
	}
	return nsSockets{conn: conn, sub: sub}, nil
}

// openSocketsIn opens the sockets inside the namespace ns. A netlink socket
// stays bound to the namespace it was created in, so the namespace is entered
// only here, once: on a fresh goroutine whose OS thread is locked, switched,
// and switched back. If switching back fails the thread stays locked and the
// Go runtime ends it with the goroutine, so no other goroutine ever runs in
// the wrong namespace.
func openSocketsIn(ns netns.NsHandle) (nsSockets, error) {
	type result struct {
		s   nsSockets
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("current network namespace: %w", err)}
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("enter network namespace: %w", err)}
			return
		}
		s, err := openSockets()
		if rerr := netns.Set(orig); rerr != nil {
			// Leave the thread locked: it dies with this goroutine.
			s.close()
			done <- result{err: fmt.Errorf("restore network namespace: %w", rerr)}
			return
		}
		runtime.UnlockOSThread()
		done <- result{s: s, err: err}
	}()
	r := <-done
	return r.s, r.err
}

// nsIdentity is what identifies a network namespace: device and inode of
// its nsfs file.
type nsIdentity struct {
	dev, ino uint64
}

// statNS returns the identity of the namespace file at path
// (/proc/PID/ns/net or a bind mount such as /var/run/netns/NAME).
func statNS(path string) (nsIdentity, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return nsIdentity{}, fmt.Errorf("network namespace %s: %w", path, errdefs.ErrNotFound)
		}
		return nsIdentity{}, fmt.Errorf("network namespace %s: %w", path, err)
	}
	return nsIdentity{dev: st.Dev, ino: st.Ino}, nil
}

// openNS opens the namespace file at path and returns its handle and
// identity, read from the open descriptor so that the two agree.
func openNS(path string) (netns.NsHandle, nsIdentity, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return netns.None(), nsIdentity{}, fmt.Errorf("network namespace %s: %w", path, errdefs.ErrNotFound)
		}
		return netns.None(), nsIdentity{}, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		h.Close()
		return netns.None(), nsIdentity{}, fmt.Errorf("stat network namespace %s: %w", path, err)
	}
	// A path that is not an nsfs file (a plain file, a directory) would make
	// setns fail later with EINVAL; say so now.
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(h), &fs); err == nil && fs.Type != unix.NSFS_MAGIC && fs.Type != unix.PROC_SUPER_MAGIC {
		h.Close()
		return netns.None(), nsIdentity{}, fmt.Errorf("%s is not a network namespace: %w", path, errdefs.ErrInvalid)
	}
	return h, nsIdentity{dev: st.Dev, ino: st.Ino}, nil
}
