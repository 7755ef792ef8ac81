// Package runtimebench measures what collecting container resource usage
// costs: the CPU of the collecting process and the extra CPU it causes in
// containerd and the shims, per collection cycle, for the cgroup path and
// the task Metrics API path, at 100 and 500 running containers.
//
// It is a test that skips unless given -containers, so that `make test`
// never starts hundreds of containers:
//
//	go test -timeout 60m -v ./test/bench/runtime -containers 100,500
//
// The collector runs in a child process (./collector, built by the test)
// that links only the runtime package, so that its CPU and RSS are the
// collector's alone; the parent starts the containers
// (through testenv) and reads /proc/PID/stat of the child, containerd and
// every shim over an idle window and a collecting window of the same
// length.
package runtimebench
