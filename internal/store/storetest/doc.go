// Package storetest is the conformance suite that every implementation of
// store.Store passes, in the manner of containerd's snapshotter test suite:
// an implementation's test calls Run with a function that opens a fresh,
// empty store, and the suite checks each promise of store.Store's doc
// comments against it (revisions, create-if-absent under contention,
// compare-and-swap, transaction atomicity, list and watch by prefix,
// compaction, leases and their expiry, contexts, Close).
//
// Revisions are store-wide, so a check expects that nothing else writes to
// the store while it runs (an etcd test gives each check a prefix of its
// own on one cluster and runs them one after the other).
//
// It also ships Faulty, a wrapper that fails a real store's calls on
// demand, for tests of what the aggregator does when its store stops
// answering at an exact moment (the journal unwritable, quorum lost).
// Benchmarks of the operations remediation waits on (BenchCreate,
// BenchCreateAtRate, BenchWatch) run the same loops on every store.
package storetest
