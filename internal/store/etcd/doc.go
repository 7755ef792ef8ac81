// Package etcd implements store.Store on an etcd cluster
// (go.etcd.io/etcd/client/v3), for several aggregator replicas that must
// agree on the remediation journal, deduplication keys, budgets and which
// replica holds which node.
//
// The store's model is etcd's own, so the mapping is direct: revisions are
// etcd's, a Txn is an etcd transaction comparing mod revisions, leases are
// etcd leases (TTLs rounded up to whole seconds and to the server's
// minimum), and Watch is an etcd watch (a compacted revision gives
// store.ErrCompacted). Every key lives under Config.Prefix, which List and
// Watch strip. Errors are translated once, here: a cluster without quorum
// or no endpoint answering within Config.RequestTimeout is
// errdefs.ErrUnavailable; the caller's own context errors are kept.
//
// It is tested against the etcd 3.4 server that Debian ships (etcdtest
// starts real clusters of it); the client is etcd's v3.7 client.
package etcd
