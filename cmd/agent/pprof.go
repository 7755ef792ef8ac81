//go:build pprof

package main

import (
	"fmt"
	"net/http"
	_ "net/http/pprof" // profiling endpoints, only in binaries built with -tags pprof
	"os"
	"runtime"
	"runtime/metrics"
	"strings"
)

// A binary built with -tags pprof serves net/http/pprof on $VIGIL_PPROF
// (for example 127.0.0.1:6060), for measuring where the agent's memory
// and CPU go, and /debug/memory: every /memory/classes/ and /gc/ value of
// runtime/metrics (what the Go runtime holds, by class, which
// /proc/PID/status cannot tell apart). Release builds do not link it.
func init() {
	if os.Getenv("VIGIL_MEMPROFILERATE") == "1" {
		runtime.MemProfileRate = 1
	}
	if addr := os.Getenv("VIGIL_PPROF"); addr != "" {
		http.HandleFunc("/debug/memory", serveMemoryClasses)
		go func() { _ = http.ListenAndServe(addr, nil) }()
	}
}

func serveMemoryClasses(w http.ResponseWriter, _ *http.Request) {
	var samples []metrics.Sample
	for _, d := range metrics.All() {
		if d.Kind == metrics.KindUint64 && (strings.HasPrefix(d.Name, "/memory/classes/") || strings.HasPrefix(d.Name, "/gc/")) {
			samples = append(samples, metrics.Sample{Name: d.Name})
		}
	}
	metrics.Read(samples)
	for _, s := range samples {
		fmt.Fprintf(w, "%-55s %10d\n", s.Name, s.Value.Uint64())
	}
}
