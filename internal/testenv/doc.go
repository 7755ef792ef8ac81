// Package testenv is the integration-test harness: it installs missing system
// packages, runs a private containerd per test package, builds and imports
// test images without a registry, and creates kubelet-style pods through CRI.
package testenv
