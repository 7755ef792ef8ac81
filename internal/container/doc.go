// Package container names a container on a node: the (containerd
// namespace, id) pair that the runtime's inventory, the network monitor's
// attachments, the agent's state and the metrics' samples are all keyed by.
//
// It is a leaf: it imports nothing of Vigil's and nothing of containerd or
// protobuf, so that any package can name a container without linking the
// package that found it (the metrics renderer must not link the runtime).
package container
