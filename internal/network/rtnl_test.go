package network

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Encoders for hand-made netlink messages.

func attr(typ uint16, val []byte) []byte {
	b := binary.NativeEndian.AppendUint16(nil, uint16(unix.SizeofRtAttr+len(val)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, val...)
	for len(b)%unix.RTA_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func message(typ uint16, seq uint32, payload []byte) []byte {
	b := binary.NativeEndian.AppendUint32(nil, uint32(unix.NLMSG_HDRLEN+len(payload)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, 0)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0)
	b = append(b, payload...)
	for len(b)%unix.NLMSG_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

func ifinfo(index int32, ifiType uint16, flags uint32, attrs ...[]byte) []byte {
	b := make([]byte, unix.SizeofIfInfomsg)
	binary.NativeEndian.PutUint16(b[2:], ifiType)
	binary.NativeEndian.PutUint32(b[4:], uint32(index))
	binary.NativeEndian.PutUint32(b[8:], flags)
	for _, a := range attrs {
		b = append(b, a...)
	}
	return b
}

func stats64(vals ...uint64) []byte {
	b := make([]byte, 0, 8*len(vals))
	for _, v := range vals {
		b = binary.NativeEndian.AppendUint64(b, v)
	}
	return b
}

func vethMessage() []byte {
	return ifinfo(7, unix.ARPHRD_ETHER, unix.IFF_UP|unix.IFF_LOWER_UP,
		attr(unix.IFLA_IFNAME, []byte("eth0\x00")),
		attr(unix.IFLA_ADDRESS, []byte{0x02, 0x42, 0xac, 0x11, 0x00, 0x02}),
		attr(unix.IFLA_MTU, u32(1450)),
		attr(unix.IFLA_LINK, u32(12)),
		attr(unix.IFLA_LINK_NETNSID, u32(0)),
		attr(unix.IFLA_OPERSTATE, []byte{6}),
		attr(unix.IFLA_CARRIER_CHANGES, u32(3)),
		attr(unix.IFLA_STATS64, stats64(10, 20, 1000, 2000, 1, 2, 3, 4, 0, 0, 0)),
		attr(unix.IFLA_LINKINFO|unix.NLA_F_NESTED, attr(unix.IFLA_INFO_KIND, []byte("veth"))),
	)
}

func TestParseLink(t *testing.T) {
	var rl rawLink
	if err := parseLink(vethMessage(), &rl); err != nil {
		t.Fatal(err)
	}
	l := rawToLink(&rl, internedLink{})
	want := Link{
		Index: 7, Name: "eth0", Kind: "veth", MAC: "02:42:ac:11:00:02", MTU: 1450, OperState: OperUp,
		AdminUp: true, Carrier: true, CarrierChanges: 3, LinkIndex: 12, LinkNetNSID: 0,
		Counters: Counters{RxPackets: 10, TxPackets: 20, RxBytes: 1000, TxBytes: 2000, RxErrors: 1, TxErrors: 2, RxDropped: 3, TxDropped: 4},
	}
	if l.Index != want.Index || l.Name != want.Name || l.Kind != want.Kind || l.MAC != want.MAC || l.MTU != want.MTU ||
		l.OperState != want.OperState || l.AdminUp != want.AdminUp || l.Carrier != want.Carrier ||
		l.CarrierChanges != want.CarrierChanges || l.LinkIndex != want.LinkIndex || l.LinkNetNSID != want.LinkNetNSID ||
		l.Counters != want.Counters {
		t.Errorf("parsed %+v\nwant   %+v", l, want)
	}

	// Interned strings are reused when unchanged.
	in := internedLink{name: l.Name, mac: l.MAC, kind: l.Kind}
	again := rawToLink(&rl, in)
	if !sameString(again.Name, in.name) || !sameString(again.MAC, in.mac) || !sameString(again.Kind, in.kind) {
		t.Error("unchanged name or MAC was not reused from the interned strings")
	}

	// Loopback without a kind, 32-bit stats, no IFLA_LINK_NETNSID.
	lo := ifinfo(1, unix.ARPHRD_LOOPBACK, unix.IFF_UP,
		attr(unix.IFLA_IFNAME, []byte("lo\x00")),
		attr(unix.IFLA_STATS, []byte{5, 0, 0, 0, 6, 0, 0, 0, 7, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}))
	if err := parseLink(lo, &rl); err != nil {
		t.Fatal(err)
	}
	l = rawToLink(&rl, internedLink{})
	if l.Kind != "loopback" || l.LinkNetNSID != -1 || l.Counters.RxPackets != 5 || l.Counters.TxBytes != 8 || l.MAC != "" || l.Carrier {
		t.Errorf("loopback parsed as %+v", l)
	}
	if err := parseLink(make([]byte, 4), &rl); err == nil {
		t.Error("a message shorter than ifinfomsg parsed without error")
	}
}

// sameString reports whether a and b share their bytes (no new allocation).
func sameString(a, b string) bool { return a == b && unsafe.StringData(a) == unsafe.StringData(b) }

func TestParseAddrAndDefaultRoute(t *testing.T) {
	addr := func(family, plen uint8, index uint32, attrs ...[]byte) []byte {
		b := []byte{family, plen, 0, 0}
		b = binary.NativeEndian.AppendUint32(b, index)
		for _, a := range attrs {
			b = append(b, a...)
		}
		return b
	}
	cases := []struct {
		name string
		msg  []byte
		want string
		ok   bool
	}{
		{"v4", addr(unix.AF_INET, 24, 3, attr(unix.IFA_ADDRESS, []byte{10, 0, 0, 2}), attr(unix.IFA_LOCAL, []byte{10, 0, 0, 2})), "10.0.0.2/24", true},
		{"v4 point-to-point prefers local", addr(unix.AF_INET, 32, 3, attr(unix.IFA_ADDRESS, []byte{10, 0, 0, 9}), attr(unix.IFA_LOCAL, []byte{10, 0, 0, 2})), "10.0.0.2/32", true},
		{"v6", addr(unix.AF_INET6, 64, 3, attr(unix.IFA_ADDRESS, netip.MustParseAddr("fe80::1").AsSlice())), "fe80::1/64", true},
		{"bad prefix", addr(unix.AF_INET, 40, 3, attr(unix.IFA_ADDRESS, []byte{10, 0, 0, 2})), "", false},
		{"wrong length", addr(unix.AF_INET, 24, 3, attr(unix.IFA_ADDRESS, []byte{10, 0, 0})), "", false},
		{"short", []byte{2, 24}, "", false},
	}
	for _, tc := range cases {
		a, ok := parseAddr(tc.msg)
		if ok != tc.ok || (ok && (a.prefix.String() != tc.want || a.index != 3)) {
			t.Errorf("%s: parseAddr = %v %v, want %q %v", tc.name, a, ok, tc.want, tc.ok)
		}
	}

	route := func(family, dstLen, table, typ uint8, attrs ...[]byte) []byte {
		b := []byte{family, dstLen, 0, 0, table, 0, 0, typ, 0, 0, 0, 0}
		for _, a := range attrs {
			b = append(b, a...)
		}
		return b
	}
	routes := []struct {
		name string
		msg  []byte
		want bool
	}{
		{"v4 default", route(unix.AF_INET, 0, unix.RT_TABLE_MAIN, unix.RTN_UNICAST), true},
		{"v6 default", route(unix.AF_INET6, 0, unix.RT_TABLE_MAIN, unix.RTN_UNICAST), true},
		{"subnet", route(unix.AF_INET, 24, unix.RT_TABLE_MAIN, unix.RTN_UNICAST), false},
		{"local table", route(unix.AF_INET, 0, unix.RT_TABLE_LOCAL, unix.RTN_UNICAST), false},
		{"table attribute overrides", route(unix.AF_INET, 0, unix.RT_TABLE_COMPAT, unix.RTN_UNICAST, attr(unix.RTA_TABLE, u32(unix.RT_TABLE_MAIN))), true},
		{"table attribute elsewhere", route(unix.AF_INET, 0, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, attr(unix.RTA_TABLE, u32(100))), false},
		{"unreachable", route(unix.AF_INET, 0, unix.RT_TABLE_MAIN, unix.RTN_UNREACHABLE), false},
		{"multicast family", route(128, 0, unix.RT_TABLE_MAIN, unix.RTN_UNICAST), false},
		{"short", []byte{2, 0}, false},
	}
	for _, tc := range routes {
		if got := isDefaultRoute(tc.msg); got != tc.want {
			t.Errorf("%s: isDefaultRoute = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestParseStats(t *testing.T) {
	msg := make([]byte, sizeofIfStatsMsg)
	binary.NativeEndian.PutUint32(msg[4:], 9)
	msg = append(msg, attr(unix.IFLA_STATS_LINK_64, stats64(1, 2, 3, 4, 5, 6, 7, 8, 0, 0))...)
	idx, c, ok := parseStats(msg)
	want := Counters{RxPackets: 1, TxPackets: 2, RxBytes: 3, TxBytes: 4, RxErrors: 5, TxErrors: 6, RxDropped: 7, TxDropped: 8}
	if !ok || idx != 9 || c != want {
		t.Errorf("parseStats = %d %+v %v, want 9 %+v true", idx, c, ok, want)
	}
	if _, _, ok := parseStats(msg[:sizeofIfStatsMsg]); ok {
		t.Error("a stats message without IFLA_STATS_LINK_64 parsed as ok")
	}
	if _, _, ok := parseStats(msg[:sizeofIfStatsMsg+20]); ok {
		t.Error("a truncated IFLA_STATS_LINK_64 parsed as ok")
	}
}

func TestWalkMessages(t *testing.T) {
	enodev := -int32(unix.ENODEV)
	errMsg := message(unix.NLMSG_ERROR, 5, u32(uint32(enodev)))
	ack := message(unix.NLMSG_ERROR, 5, u32(0))
	cases := []struct {
		name     string
		in       []byte
		seq      uint32
		wantN    int
		wantDone bool
		wantErr  bool
	}{
		{"two links then done", append(append(message(unix.RTM_NEWLINK, 5, vethMessage()), message(unix.RTM_NEWLINK, 5, vethMessage())...), message(unix.NLMSG_DONE, 5, u32(0))...), 5, 2, true, false},
		{"stale sequence skipped", message(unix.RTM_NEWLINK, 4, vethMessage()), 5, 0, false, false},
		{"any sequence", message(unix.RTM_NEWLINK, 4, vethMessage()), anySeq, 1, false, false},
		{"error", errMsg, 5, 0, true, true},
		{"ack", ack, 5, 0, true, false},
		{"length beyond buffer", message(unix.RTM_NEWLINK, 5, vethMessage())[:40], 5, 0, false, true},
		{"interrupted, not done", interrupted(message(unix.RTM_NEWLINK, 5, vethMessage())), 5, 1, false, true},
		{"length below header", []byte{4, 0, 0, 0, 16, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0}, 5, 0, false, true},
	}
	for _, tc := range cases {
		n := 0
		done, err := walkMessages(tc.in, tc.seq, func(uint16, []byte) { n++ })
		if n != tc.wantN || done != tc.wantDone || (err != nil) != tc.wantErr {
			t.Errorf("%s: walk = %d messages, done %v, err %v; want %d, %v, err %v", tc.name, n, done, err, tc.wantN, tc.wantDone, tc.wantErr)
		}
	}
	if _, err := walkMessages(errMsg, 5, func(uint16, []byte) {}); err != unix.ENODEV {
		t.Errorf("error message gave %v, want ENODEV", err)
	}
}

// interrupted sets NLM_F_DUMP_INTR on the netlink message m.
func interrupted(m []byte) []byte {
	m = slices.Clone(m)
	binary.NativeEndian.PutUint16(m[6:8], binary.NativeEndian.Uint16(m[6:8])|unix.NLM_F_DUMP_INTR)
	return m
}

// TestReadReplies checks the loop over a dump's datagrams: an interruption
// flagged on any datagram, not only the last, makes the dump interrupted, and
// the whole dump is still read.
func TestReadReplies(t *testing.T) {
	link := message(unix.RTM_NEWLINK, 5, vethMessage())
	done := message(unix.NLMSG_DONE, 5, u32(0))
	enodev := -int32(unix.ENODEV)
	errMsg := message(unix.NLMSG_ERROR, 5, u32(uint32(enodev)))
	cases := []struct {
		name      string
		datagrams [][]byte
		wantN     int
		wantErr   error
	}{
		{"clean", [][]byte{link, append(slices.Clone(link), done...)}, 2, nil},
		{"flag on the first datagram only", [][]byte{interrupted(link), append(slices.Clone(link), done...)}, 2, errDumpInterrupted},
		{"flag on the last datagram", [][]byte{link, append(slices.Clone(link), interrupted(done)...)}, 2, errDumpInterrupted},
		{"error after an interruption", [][]byte{interrupted(link), errMsg}, 1, unix.ENODEV},
		{"stale datagram then done", [][]byte{message(unix.RTM_NEWLINK, 4, vethMessage()), done}, 0, nil},
	}
	for _, tc := range cases {
		n, read := 0, 0
		next := func() ([]byte, error) {
			if read == len(tc.datagrams) {
				return nil, errors.New("read past the end of the answer")
			}
			read++
			return tc.datagrams[read-1], nil
		}
		err := readReplies(next, 5, func(uint16, []byte) { n++ })
		if n != tc.wantN || !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) || read != len(tc.datagrams) {
			t.Errorf("%s: %d messages from %d datagrams, err %v; want %d from %d, err %v", tc.name, n, read, err, tc.wantN, len(tc.datagrams), tc.wantErr)
		}
	}
	recvErr := errors.New("receive failed")
	if err := readReplies(func() ([]byte, error) { return nil, recvErr }, 5, func(uint16, []byte) {}); err != recvErr {
		t.Errorf("a failed receive gave %v, want %v", err, recvErr)
	}
}

// FuzzParseNetlink feeds arbitrary bytes through the parsers of kernel
// messages: none may panic, and what they return stays inside the input.
func FuzzParseNetlink(f *testing.F) {
	f.Add(message(unix.RTM_NEWLINK, 0, vethMessage()))
	f.Add(append(message(unix.RTM_NEWLINK, 1, vethMessage()), message(unix.NLMSG_DONE, 1, u32(0))...))
	f.Fuzz(func(t *testing.T, data []byte) {
		var rl rawLink
		_, _ = walkMessages(data, anySeq, func(typ uint16, p []byte) {
			if parseLink(p, &rl) == nil {
				if len(rl.name) > len(p) || len(rl.mac) > len(p) || len(rl.kind) > len(p) {
					t.Fatalf("parsed fields longer than the message")
				}
				_ = rawToLink(&rl, internedLink{})
			}
			if a, ok := parseAddr(p); ok && !a.prefix.IsValid() {
				t.Fatalf("parseAddr returned an invalid prefix for %x", p)
			}
			_ = isDefaultRoute(p)
			_, _, _ = parseStats(p)
		})
	})
}
