package network

import "github.com/vigilhq/vigil/internal/container"

// matchPartners fills Link.Partner for the two ends of every veth pair it can
// match: pairs inside one namespace, and pairs with one end in the host and
// the other in a container namespace. owners names, by inode, the container
// each namespace is attributed to.
//
// IFLA_LINK of a veth is its link partner's index in the partner's namespace, and
// IFLA_LINK_NETNSID (>= 0) says the partner is in another namespace without
// saying which one in terms the host can compare cheaply. A host veth h and
// a container veth c are taken as a pair when each names the other's index
// (h.LinkIndex == c.Index and c.LinkIndex == h.Index) and both have a
// foreign partner. Indexes alone can collide (two containers whose veths have
// the same index and whose partners both have index h.Index in different
// namespaces); a host link claimed by more than one container link is left
// unmatched rather than guessed. Pairs between two container namespaces are
// not matched.
func matchPartners(snap *Snapshot, owners map[uint64]container.Key) {
	host := snap.Host()
	var hostByIndex map[int32]*Link
	if host != nil {
		hostByIndex = make(map[int32]*Link, len(host.Links))
		for i := range host.Links {
			hostByIndex[host.Links[i].Index] = &host.Links[i]
		}
	}
	type claim struct {
		c     *Link
		inode uint64
		n     int
	}
	claims := make(map[int32]*claim)
	for i := range snap.Namespaces {
		ns := &snap.Namespaces[i]
		var byIndex map[int32]*Link
		for j := range ns.Links {
			l := &ns.Links[j]
			if l.Kind != "veth" || l.LinkIndex == 0 {
				continue
			}
			if l.LinkNetNSID < 0 { // both ends here
				if byIndex == nil {
					byIndex = make(map[int32]*Link, len(ns.Links))
					for k := range ns.Links {
						byIndex[ns.Links[k].Index] = &ns.Links[k]
					}
				}
				if p := byIndex[l.LinkIndex]; p != nil && p.Kind == "veth" && p.LinkIndex == l.Index && p.LinkNetNSID < 0 {
					l.Partner = &LinkPartner{NetNSInode: ns.Inode, Host: ns.Host, Index: p.Index, Name: p.Name, MTU: p.MTU}
				}
				continue
			}
			if ns.Host || hostByIndex == nil {
				continue
			}
			h := hostByIndex[l.LinkIndex]
			if h == nil || h.Kind != "veth" || h.LinkIndex != l.Index || h.LinkNetNSID < 0 {
				continue
			}
			if c := claims[h.Index]; c != nil {
				c.n++
				continue
			}
			claims[h.Index] = &claim{c: l, inode: ns.Inode, n: 1}
		}
	}
	for hi, cl := range claims {
		if cl.n != 1 {
			continue
		}
		h := hostByIndex[hi]
		cl.c.Partner = &LinkPartner{NetNSInode: host.Inode, Host: true, Index: h.Index, Name: h.Name, MTU: h.MTU}
		h.Partner = &LinkPartner{NetNSInode: cl.inode, Index: cl.c.Index, Name: cl.c.Name, MTU: cl.c.MTU, Owner: owners[cl.inode]}
	}
}
