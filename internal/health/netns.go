package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/vigilhq/vigil/internal/netns"
	"golang.org/x/sys/unix"
)

// NetNSOfPid returns the path of the network namespace of process pid, for
// Target.NetNS (netns.OfPid).
func NetNSOfPid(pid uint32) string { return netns.OfPid(pid) }

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
// nsPath, through netns.Do: only the socket(2) call runs on a thread moved
// into the namespace.
func socketIn(nsPath string, family int) (int, error) {
	fd := -1
	err := netns.Do(nsPath, func() error {
		var err error
		fd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		if err != nil {
			fd = -1
			return fmt.Errorf("socket in network namespace %s: %w", nsPath, err)
		}
		return nil
	})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd) // made, but the thread could not go back
		}
		return -1, err
	}
	return fd, nil
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
