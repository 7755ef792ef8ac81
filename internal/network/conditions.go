package network

import (
	"fmt"
	"time"
)

// Condition derivation: pure functions over one namespace's read and the
// previous cycle's counters, so they can be tested on tables.

// Limits are the rates above which counters become conditions.
type Limits struct {
	// ErrorsPerSecond: rx+tx errors per second on one link above which
	// ErrorsRising holds. Negative disables the condition.
	ErrorsPerSecond float64
	// DropsPerSecond: rx+tx drops per second on one link above which
	// DropsRising holds. Negative disables the condition.
	DropsPerSecond float64
}

// fallbackTunnels are the devices the kernel creates, down, in every
// namespace when a tunnel module is loaded; their being down means nothing.
var fallbackTunnels = map[string]bool{
	"tunl0": true, "gre0": true, "gretap0": true, "erspan0": true, "ip_vti0": true,
	"ip6_vti0": true, "sit0": true, "ip6tnl0": true, "ip6gre0": true,
}

// significant reports whether a link takes part in the namespace's
// connectivity: not the loopback device, not a fallback tunnel device.
func significant(l *Link) bool {
	return l.Kind != "loopback" && !fallbackTunnels[l.Name]
}

// linkDownReason says whether l being down is a condition and why.
//
// In a container namespace every significant link that is down, whether an
// operator or a process set it down or it lost its carrier, is a condition:
// the container owns nothing else. On the host a link that is
// administratively down is the operator's choice (spare ports, unused
// devices) and is ignored; a link that is up but operationally down (no
// carrier, the veth partner down, the port down) is a condition. Anywhere, a
// bridge that is up but operationally down is not: a bridge has no carrier
// of its own until a port is up (docker0 or cni0 with no containers), and
// its ports report for themselves.
func linkDownReason(l *Link, host bool) (string, bool) {
	if !significant(l) {
		return "", false
	}
	if !l.AdminUp {
		if host {
			return "", false
		}
		return ReasonAdminDown, true
	}
	if l.Kind == "bridge" {
		return "", false
	}
	switch l.OperState {
	case OperDown, OperNotPresent:
		return ReasonOperDown, true
	case OperLowerLayerDown:
		return ReasonLowerLayerDown, true
	}
	return "", false
}

// needsDefaultRoute reports whether the absence of a default route is a
// condition for the namespace: only in containers, and only when the
// namespace has a significant link (a container started without a network,
// loopback only, means to have no route out).
func needsDefaultRoute(ns *NamespaceState) bool {
	if ns.Host {
		return false
	}
	for i := range ns.Links {
		if significant(&ns.Links[i]) {
			return true
		}
	}
	return false
}

// mtuMismatch reports whether a veth whose link partner was found has a different MTU.
func mtuMismatch(l *Link) bool {
	return l.Partner != nil && l.Partner.MTU != 0 && l.MTU != 0 && l.Partner.MTU != l.MTU
}

// counterSample is the part of a link's counters that rates are computed on.
type counterSample struct {
	at     time.Time
	errors uint64 // rx + tx
	drops  uint64 // rx + tx
}

func sampleOf(c Counters, at time.Time) counterSample {
	return counterSample{at: at, errors: c.RxErrors + c.TxErrors, drops: c.RxDropped + c.TxDropped}
}

// ratePerSecond returns (cur-prev)/dt. ok is false when there is no
// interval to measure over or the counter went backwards (the link was
// re-created under the same index).
func ratePerSecond(prev, cur uint64, dt time.Duration) (rate float64, ok bool) {
	if dt <= 0 || cur < prev {
		return 0, false
	}
	return float64(cur-prev) / dt.Seconds(), true
}

// deriveConditions returns the conditions holding in ns. prev holds the last
// cycle's samples by link index (nil or missing entries: no rate yet).
// Since is left zero; stampSince fills it.
func deriveConditions(ns *NamespaceState, prev map[int32]counterSample, lim Limits) []Condition {
	var out []Condition
	add := func(t ConditionType, reason, iface, msg string) {
		out = append(out, Condition{Type: t, Reason: reason, Message: msg, Interface: iface, NetNSInode: ns.Inode})
	}
	if needsDefaultRoute(ns) && !ns.HasDefaultRoute {
		add(ConditionNoDefaultRoute, ReasonNoDefaultRoute, "", "no IPv4 or IPv6 default route in the main table")
	}
	for i := range ns.Links {
		l := &ns.Links[i]
		if reason, ok := linkDownReason(l, ns.Host); ok {
			add(ConditionLinkDown, reason, l.Name, fmt.Sprintf("link %s is down (admin %s, oper %s, carrier %t)",
				l.Name, upDown(l.AdminUp), l.OperState, l.Carrier))
		}
		// A pair across namespaces is reported once, on the container's end;
		// a pair inside one namespace on the end with the lower index.
		if mtuMismatch(l) && ((!ns.Host && l.Partner.Host) || (l.Partner.NetNSInode == ns.Inode && l.Index < l.Partner.Index)) {
			add(ConditionMTUMismatch, ReasonMTUMismatch, l.Name, fmt.Sprintf("MTU %d on %s, %d on its veth partner %s",
				l.MTU, l.Name, l.Partner.MTU, l.Partner.Name))
		}
		p, ok := prev[l.Index]
		if !ok {
			continue
		}
		cur := sampleOf(l.Counters, ns.Time)
		dt := cur.at.Sub(p.at)
		if r, ok := ratePerSecond(p.errors, cur.errors, dt); ok && lim.ErrorsPerSecond >= 0 && r > lim.ErrorsPerSecond {
			add(ConditionErrorsRising, ReasonErrorsRising, l.Name, fmt.Sprintf("%.1f errors/s on %s (limit %g/s)",
				r, l.Name, lim.ErrorsPerSecond))
		}
		if r, ok := ratePerSecond(p.drops, cur.drops, dt); ok && lim.DropsPerSecond >= 0 && r > lim.DropsPerSecond {
			add(ConditionDropsRising, ReasonDropsRising, l.Name, fmt.Sprintf("%.1f drops/s on %s (limit %g/s)",
				r, l.Name, lim.DropsPerSecond))
		}
	}
	return out
}

func upDown(up bool) string {
	if up {
		return "up"
	}
	return "down"
}

// conditionKey identifies a condition across cycles.
type conditionKey struct {
	typ   ConditionType
	iface string
}

// stampSince sets Since on each condition from since (the first time each
// was seen), records new ones at now, and forgets those that no longer hold.
func stampSince(conds []Condition, since map[conditionKey]time.Time, now time.Time) {
	seen := make(map[conditionKey]bool, len(conds))
	for i := range conds {
		k := conditionKey{conds[i].Type, conds[i].Interface}
		seen[k] = true
		t, ok := since[k]
		if !ok {
			t = now
			since[k] = t
		}
		conds[i].Since = t
	}
	for k := range since {
		if !seen[k] {
			delete(since, k)
		}
	}
}
