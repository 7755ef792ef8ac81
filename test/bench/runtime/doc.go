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
//
// Then, at each count, it runs the real vigil-agent (built with the release
// flags, testenv.BuildFlags) standalone on the same containers with every
// part on, at its default 10s interval, and reports its CPU per cycle, the
// extra CPU of containerd and the shims against a window with no agent, and
// its resident memory (VmRSS, split into anonymous and file-backed, and the
// peak: the highest of VmHWM and VmRSS sampled every 250 ms from the
// agent's start) and the containerd calls the agent made in the window;
// then the same agent over a second window of the same length with its
// local /metrics scraped once per interval (the scraped variant: what a
// per-node Prometheus scrape adds, against the unscraped window before it).
// -paths picks what runs (cgroup, metrics-api, agent).
//
// VIGIL_BENCH_HOLD=30m pauses before the agent's measurement with the
// containers and the aggregator running and logs the flags of an agent for
// that scene (containerd's socket, the namespace, the aggregator and its
// TLS files), so that an agent built with -tags pprof can be profiled by
// hand on the same scene.
package runtimebench
