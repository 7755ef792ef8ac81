// Package network reads network health through netlink: links, addresses,
// routes and counters on the host and inside every container's network
// namespace, link events from netlink subscriptions, and the conditions derived
// from them (link down, no default route, MTU mismatch, errors rising).
package network
