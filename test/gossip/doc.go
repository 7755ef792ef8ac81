// Package gossip tests issue 25's "done when" at the level of the shipped
// agent: real vigil-agent processes (the release build), each in a network
// namespace of its own on a bridge the test makes, gossiping with each
// other and streaming to a real aggregator in a namespace of its own, on
// the private containerd of internal/testenv. Everything runs on addresses
// that exist only inside the test's namespaces. The package holds tests
// only (agents_test.go); run it as root: go test ./test/gossip.
package gossip
