// Package etcdtest starts real etcd clusters for tests: Debian's etcd
// server (scripts/install-prereqs.sh installs it), one process per member
// on free loopback ports with its data dir in the test's temp dir, healthy
// before StartCluster returns, killed and restarted on demand, and torn
// down (its logs shown if the test failed) when the test ends.
package etcdtest
