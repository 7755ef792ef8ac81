package network

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
)

// internedLink keeps a link's strings between cycles so that an unchanged
// name, MAC or kind costs no allocation.
type internedLink struct {
	name, mac, kind string
}

// rawToLink converts a parsed link message, reusing the interned strings
// when they still match.
func rawToLink(rl *rawLink, in internedLink) Link {
	l := Link{
		Index:          rl.index,
		MTU:            rl.mtu,
		OperState:      OperState(rl.oper),
		AdminUp:        rl.flags&unix.IFF_UP != 0,
		Carrier:        rl.flags&unix.IFF_LOWER_UP != 0,
		CarrierChanges: uint64(rl.carrierChanges),
		Counters:       rl.counters,
		LinkIndex:      rl.link,
		LinkNetNSID:    rl.netnsid,
	}
	if string(rl.name) == in.name {
		l.Name = in.name
	} else {
		l.Name = string(rl.name)
	}
	kind := "device"
	switch {
	case len(rl.kind) > 0:
		if string(rl.kind) == in.kind {
			kind = in.kind
		} else {
			kind = string(rl.kind)
		}
	case rl.ifiType == unix.ARPHRD_LOOPBACK:
		kind = "loopback"
	}
	l.Kind = kind
	if len(rl.mac) > 0 {
		if in.mac != "" && macEqual(in.mac, rl.mac) {
			l.MAC = in.mac
		} else {
			l.MAC = net.HardwareAddr(rl.mac).String()
		}
	}
	return l
}

// macEqual compares a formatted MAC with raw bytes without allocating.
func macEqual(s string, b []byte) bool {
	const hexdigits = "0123456789abcdef"
	if len(s) != 3*len(b)-1 {
		return false
	}
	for i, c := range b {
		if s[3*i] != hexdigits[c>>4] || s[3*i+1] != hexdigits[c&0xf] {
			return false
		}
	}
	return true
}

// Read reads every open namespace once: links with counters, addresses
// (re-read only after an address notification), the default route
// (re-read only after a route or link notification), veth link partners across
// namespaces and the conditions that hold. A namespace that cannot be read
// is left out and its error added to Snapshot.Errors; Read itself fails
// only when ctx is done or the monitor is closed (errdefs.ErrUnavailable).
// Containers whose namespace file has disappeared are detached first.
//
// Calls are serialised. The returned snapshot belongs to the caller, but its
// Addresses slices are shared with later snapshots and must not be modified.
func (m *Monitor) Read(ctx context.Context) (*Snapshot, error) {
	m.readMu.Lock()
	defer m.readMu.Unlock()
	start := time.Now()
	m.pruneStale()

	type item struct {
		ns         *namespace
		containers []container.Key
		owner      container.Key
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, fmt.Errorf("network monitor: closed: %w", errdefs.ErrUnavailable)
	}
	items := make([]item, 0, 1+len(m.namespaces))
	items = append(items, item{ns: m.host})
	for _, ns := range m.namespaces {
		items = append(items, item{ns: ns})
	}
	slices.SortFunc(items[1:], func(a, b item) int { return cmp.Compare(a.ns.id.Ino, b.ns.id.Ino) })
	for i := range items {
		ns := items[i].ns
		if len(ns.containers) > 0 {
			items[i].containers = make([]container.Key, len(ns.containers))
			for j, a := range ns.containers {
				items[i].containers[j] = a.ref
			}
		}
		items[i].owner = ns.ownerLocked()
	}
	m.mu.Unlock()

	snap := &Snapshot{Time: start, Namespaces: make([]NamespaceState, 0, len(items))}
	owners := make(map[uint64]container.Key, len(items))
	read := make([]*namespace, 0, len(items))
	for _, it := range items {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		st := NamespaceState{Inode: it.ns.id.Ino, Host: it.ns.host, Containers: it.containers}
		if err := m.readNamespace(it.ns, &st); err != nil {
			m.stats.readErrors.Add(1)
			snap.Errors = append(snap.Errors, fmt.Errorf("network namespace %d (%s): %w", it.ns.id.Ino, it.ns.path, err))
			continue
		}
		snap.Namespaces = append(snap.Namespaces, st)
		owners[st.Inode] = it.owner
		read = append(read, it.ns)
	}
	matchPartners(snap, owners)
	for i := range snap.Namespaces {
		st, ns := &snap.Namespaces[i], read[i]
		st.Conditions = deriveConditions(st, ns.samples, m.cfg.Limits)
		stampSince(st.Conditions, ns.since, st.Time)
		clear(ns.nextSamples)
		for j := range st.Links {
			ns.nextSamples[st.Links[j].Index] = sampleOf(st.Links[j].Counters, st.Time)
		}
		ns.samples, ns.nextSamples = ns.nextSamples, ns.samples
	}
	m.stats.cycle.Observe(time.Since(start).Seconds())
	return snap, nil
}

// readNamespace fills st from ns. m.readMu must be held.
func (m *Monitor) readNamespace(ns *namespace, st *NamespaceState) error {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.closed {
		return fmt.Errorf("closed: %w", errdefs.ErrUnavailable)
	}
	links, err := m.readLinks(ns)
	if err != nil {
		return err
	}
	st.Time = time.Now()

	if dirty := ns.addrsDirty.Swap(false); dirty || !ns.haveAddrs {
		addrs := make(map[int32][]string)
		err := ns.conn.dump(m.buf, unix.RTM_GETADDR, addrDumpBody, func(typ uint16, p []byte) {
			if typ != unix.RTM_NEWADDR {
				return
			}
			if a, ok := parseAddr(p); ok {
				addrs[a.index] = append(addrs[a.index], a.prefix.String())
			}
		})
		if err != nil {
			ns.addrsDirty.Store(true)
			if !errors.Is(err, errDumpInterrupted) {
				return fmt.Errorf("list addresses: %w", err)
			}
		}
		ns.addrs, ns.haveAddrs = addrs, true
	}
	if dirty := ns.routesDirty.Swap(false); dirty || !ns.haveRoutes {
		found := false
		err := ns.conn.dump(m.buf, unix.RTM_GETROUTE, routeDumpBody, func(typ uint16, p []byte) {
			if typ == unix.RTM_NEWROUTE && !found && isDefaultRoute(p) {
				found = true
			}
		})
		if err != nil {
			ns.routesDirty.Store(true)
			if !errors.Is(err, errDumpInterrupted) {
				return fmt.Errorf("list routes: %w", err)
			}
		}
		ns.hasDefault, ns.haveRoutes = found, true
	}
	for i := range links {
		links[i].Addresses = ns.addrs[links[i].Index]
	}
	st.Links = links
	st.HasDefaultRoute = ns.hasDefault
	return nil
}

// readLinks returns ns's links with fresh counters. After a link
// notification (or on the first read) it dumps the links in full; otherwise
// link state is as last dumped and only counters are read, with an
// RTM_GETSTATS dump of IFLA_STATS_LINK_64 that costs the kernel a fraction
// of a full link dump. A stats dump that does not match the cached links
// (a notification was missed) falls back to a full dump. m.readMu and ns.mu
// must be held.
func (m *Monitor) readLinks(ns *namespace) ([]Link, error) {
	// Notifications already queued but not yet taken by the reader would
	// make the cached state stale: treat them as read. Under subMu, which
	// the reader holds from taking datagrams until it has marked what they
	// changed: so every notification sent before this point is either
	// still queued or marked.
	ns.subMu.Lock()
	pending := ns.sub.pending()
	ns.subMu.Unlock()
	if pending {
		ns.linksDirty.Store(true)
		ns.addrsDirty.Store(true)
		ns.routesDirty.Store(true)
	}
	if !ns.linksDirty.Swap(false) && ns.haveLinks {
		links := slices.Clone(ns.links)
		matched := 0
		err := ns.conn.dump(m.buf, unix.RTM_GETSTATS, statsDumpBody, func(typ uint16, p []byte) {
			if typ != unix.RTM_NEWSTATS {
				return
			}
			idx, c, ok := parseStats(p)
			if i, known := ns.linkPos[idx]; ok && known {
				links[i].Counters = c
				matched++
			} else {
				matched = -len(links) - 1 // an unknown link: dump in full
			}
		})
		if err == nil && matched == len(links) {
			m.stats.statsDumps.Add(1)
			return links, nil
		}
		if err != nil && !errors.Is(err, errDumpInterrupted) && !errors.Is(err, unix.EOPNOTSUPP) {
			return nil, fmt.Errorf("link stats: %w", err)
		}
	}
	links := make([]Link, 0, len(ns.links))
	var rl rawLink
	err := ns.conn.dump(m.buf, unix.RTM_GETLINK, linkDumpBody, func(typ uint16, p []byte) {
		if typ != unix.RTM_NEWLINK || parseLink(p, &rl) != nil {
			return
		}
		in := ns.interned[rl.index]
		l := rawToLink(&rl, in)
		if l.Name != in.name || l.MAC != in.mac || l.Kind != in.kind {
			ns.interned[rl.index] = internedLink{name: l.Name, mac: l.MAC, kind: l.Kind}
		}
		links = append(links, l)
	})
	if err != nil {
		ns.linksDirty.Store(true)
		if !errors.Is(err, errDumpInterrupted) {
			return nil, fmt.Errorf("list links: %w", err)
		}
	}
	m.stats.linkDumps.Add(1)
	clear(ns.linkPos)
	for i := range links {
		ns.linkPos[links[i].Index] = i
	}
	for idx := range ns.interned { // forget links that are gone
		if _, ok := ns.linkPos[idx]; !ok {
			delete(ns.interned, idx)
		}
	}
	ns.links, ns.haveLinks = links, true
	return slices.Clone(links), nil
}
