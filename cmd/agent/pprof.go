//go:build pprof

package main

import (
	"net/http"
	_ "net/http/pprof" // profiling endpoints, only in binaries built with -tags pprof
	"os"
	"runtime"
)

// A binary built with -tags pprof serves net/http/pprof on $VIGIL_PPROF
// (for example 127.0.0.1:6060), for measuring where the agent's memory
// and CPU go. Release builds do not link it.
func init() {
	if os.Getenv("VIGIL_MEMPROFILERATE") == "1" {
		runtime.MemProfileRate = 1
	}
	if addr := os.Getenv("VIGIL_PPROF"); addr != "" {
		go func() { _ = http.ListenAndServe(addr, nil) }()
	}
}
