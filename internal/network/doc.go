// Package network reads network health through netlink: links, addresses,
// routes and counters on the host and inside every container's network
// namespace, link events from netlink subscriptions, and the conditions derived
// from them (link down, no default route, MTU mismatch, errors rising).
//
// A Monitor keeps two netlink sockets per namespace, opened once from inside
// it: one for requests and one subscribed to link, address and route
// notifications. One goroutine reads the notifications of every namespace,
// waiting on all subscriptions with epoll. The agent tells it which
// containers live where (Attach, Detach); containers sharing a namespace (a
// pod) share one entry, and host-network containers join the host's. Read
// is one cycle over every namespace (a Snapshot); Events delivers link
// changes as they happen while Run runs; LinkUp is the remediation
// primitive. Domain types convert to the protocol with their Proto methods.
package network
