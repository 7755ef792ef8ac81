package network

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// portOf is the netlink port id the kernel gave socket fd.
func portOf(t *testing.T, fd int) uint32 {
	t.Helper()
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return sa.(*unix.SockaddrNetlink).Pid
}

// forge sends a netlink datagram from a socket of this process (not the
// kernel) to port.
func forge(t *testing.T, port uint32, msg []byte) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Pid: port}); err != nil {
		t.Fatalf("forge: %v", err)
	}
}

// TestRepliesMustComeFromTheKernel: a datagram another process sends to
// the agent's netlink sockets (sender port not 0) is dropped: a forged
// notification is never seen, and a forged end of dump does not end a real
// dump early.
func TestRepliesMustComeFromTheKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("sending to another netlink socket needs root")
	}
	sub, err := openSubscription()
	if err != nil {
		t.Fatal(err)
	}
	defer sub.close()
	forge(t, portOf(t, sub.fd), message(unix.RTM_NEWLINK, 0, make([]byte, unix.SizeofIfInfomsg)))
	buf := make([]byte, 64<<10)
	if n, _, err := sub.receive(buf); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("a forged notification was received (%d bytes, err %v)", n, err)
	}

	c, err := openConn()
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	// The next request carries seq c.seq+1: a forged NLMSG_DONE with it,
	// queued before the request, would end the dump with no link.
	forge(t, portOf(t, c.fd), message(unix.NLMSG_DONE, c.seq+1, u32(0)))
	links := 0
	if err := c.dump(buf, unix.RTM_GETLINK, linkDumpBody, func(typ uint16, _ []byte) {
		if typ == unix.RTM_NEWLINK {
			links++
		}
	}); err != nil {
		t.Fatal(err)
	}
	if links == 0 {
		t.Fatal("the forged NLMSG_DONE ended the dump: no link read")
	}
}
