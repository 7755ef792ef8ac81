// Package bolt is the embedded implementation of store.Store: one bbolt file
// (go.etcd.io/bbolt) under the aggregator's data dir, nothing to install.
//
// It keeps etcd's semantics in one process: a store-wide revision persisted
// in the file and advanced by each Txn that changes something, each key's
// create and mod revision and lease stored with its value, leases whose
// deadlines are persisted and which a goroutine owned by the Store expires
// (leases that ran out while the store was closed are expired by Open).
// Every Txn is committed with fsync before it returns: the remediation
// journal must survive a crash.
//
// Watch is served from an in-memory history of recent changes, bounded by
// Options.History events; a Watch from a revision older than the history
// gets store.ErrCompacted, and so does a watcher that falls so far behind
// that the changes it has not read have left the history. Writers never
// wait for watchers, and a watcher never loses a change silently.
//
// A bbolt file is locked by the process that opens it; a second Open of
// the same file (from this or another process) fails after
// Options.LockTimeout with an error naming the file.
package bolt
