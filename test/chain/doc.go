// Package chain runs Vigil's whole data path on one machine the way a user
// runs it: a containerd, the real vigil-aggregator and vigil-agent binaries
// as processes, Debian's Prometheus scraping the aggregator, and containers
// started with ctr and through CRI. The demo (test/demo) and the end-to-end
// test (test/e2e) both drive it, so that what the README promises and what
// CI checks are the same thing.
//
// Every process the chain starts is recorded by pid in its directory, so a
// later, separate program (`demo down`) can stop exactly those processes.
package chain
