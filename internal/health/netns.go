package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	goruntime "runtime"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// NetNSOfPid returns the path of the network namespace of process pid, for
// Target.NetNS.
func NetNSOfPid(pid uint32) string {
	return "/proc/" + strconv.FormatUint(uint64(pid), 10) + "/ns/net"
}

// dialTCP connects to addr inside the network namespace at nsPath ("" is
// the agent's own), honouring ctx's deadline and cancellation.
//
// The socket is created inside the namespace and connected from anywhere: a
// socket belongs to the namespace it was created in for its whole life. So
// only the socket(2) call runs on a thread moved into the namespace, on a
// goroutine of its own (see socketIn), and the connect runs on the runtime's
// poller like any other.
func dialTCP(ctx context.Context, nsPath string, addr netip.AddrPort) (net.Conn, error) {
	if nsPath == "" {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr.String())
	}
	family := unix.AF_INET
	if addr.Addr().Is6() {
		family = unix.AF_INET6
	}
	fd, err := socketIn(nsPath, family)
	if err != nil {
		return nil, err
	}
	return connect(ctx, fd, addr)
}

// socketIn creates a non-blocking TCP socket inside the network namespace at
// nsPath.
//
// It runs on a new goroutine locked to its thread: the thread enters the
// namespace, creates the socket and goes back to its original namespace. If
// it cannot go back, the goroutine exits still locked, and the Go runtime
// then terminates the thread instead of reusing it: no other goroutine ever
// runs in the wrong namespace.
func socketIn(nsPath string, family int) (int, error) {
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		goruntime.LockOSThread()
		fd, restored, err := socketOnThisThread(nsPath, family)
		ch <- result{fd, err}
		if restored {
			goruntime.UnlockOSThread()
		}
	}()
	r := <-ch
	return r.fd, r.err
}

// socketOnThisThread does socketIn's work on the calling, locked thread.
// restored is false only when the thread could not return to its original
// namespace.
func socketOnThisThread(nsPath string, family int) (fd int, restored bool, err error) {
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, true, fmt.Errorf("open own network namespace: %w", err)
	}
	defer unix.Close(orig)
	target, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, true, fmt.Errorf("open network namespace %s: %w", nsPath, err)
	}
	defer unix.Close(target)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		return -1, true, fmt.Errorf("enter network namespace %s: %w", nsPath, err)
	}
	fd, serr := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		if serr == nil {
			unix.Close(fd)
		}
		return -1, false, fmt.Errorf("return from network namespace %s: %w", nsPath, err)
	}
	if serr != nil {
		return -1, true, fmt.Errorf("socket in network namespace %s: %w", nsPath, serr)
	}
	return fd, true, nil
}

// longAgo is a deadline in the past, to interrupt a pending connect.
var longAgo = time.Unix(1, 0)

// connect connects the non-blocking socket fd to addr and returns it as a
// net.Conn; it takes ownership of fd.
func connect(ctx context.Context, fd int, addr netip.AddrPort) (net.Conn, error) {
	var sa unix.Sockaddr
	if addr.Addr().Is4() {
		sa = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}
	} else {
		sa = &unix.SockaddrInet6{Port: int(addr.Port()), Addr: addr.Addr().As16()}
	}
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(addr), Err: err}
	}
	cerr := unix.Connect(fd, sa)
	if cerr != nil && !errors.Is(cerr, unix.EINPROGRESS) {
		unix.Close(fd)
		return nil, opErr(os.NewSyscallError("connect", cerr))
	}
	f := os.NewFile(uintptr(fd), "tcp-probe "+addr.String()) // owns fd; pollable as it is non-blocking
	defer f.Close()                                          // net.FileConn holds a dup
	if cerr != nil {
		stop := context.AfterFunc(ctx, func() { _ = f.SetDeadline(longAgo) })
		defer stop()
		rc, err := f.SyscallConn()
		if err != nil {
			return nil, opErr(err)
		}
		var connErr error
		werr := rc.Write(func(fd uintptr) bool {
			v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
			if err != nil {
				connErr = os.NewSyscallError("getsockopt", err)
				return true
			}
			switch e := syscall.Errno(v); e {
			case 0:
				// Writable with no error means connected; before the first
				// wait it may just mean "not yet".
				_, err := unix.Getpeername(int(fd))
				return err == nil
			case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
				return false
			default:
				connErr = os.NewSyscallError("connect", e)
				return true
			}
		})
		if werr != nil {
			if ctx.Err() != nil {
				return nil, opErr(ctx.Err())
			}
			return nil, opErr(werr)
		}
		if connErr != nil {
			return nil, opErr(connErr)
		}
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, opErr(err)
	}
	return c, nil
}
