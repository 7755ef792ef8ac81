package agent

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/vigilhq/vigil/internal/metrics"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// httpHandler serves the agent's optional local endpoints:
//
//	/metrics       this node's container and network series (the same names
//	               as the aggregator's), for clusters that prefer per-node scraping
//	/metrics/self  the agent's own metrics (collection and probe cost, buffer, reconnects)
//	/healthz       200 while the agent runs, with containerd's availability in the body
func (a *Agent) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", a.serveNodeMetrics)
	mux.HandleFunc("/metrics/self", a.serveSelfMetrics)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if a.rt.Available() {
			_, _ = w.Write([]byte("ok\ncontainerd: available\n"))
			return
		}
		_, _ = w.Write([]byte("ok\ncontainerd: unavailable\n"))
	})
	return mux
}

// serveSelfMetrics writes what it can collect; a family that cannot be
// written is logged and named in a comment, the others are still served.
func (a *Agent) serveSelfMetrics(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	if _, err := a.reg.WriteTo(w); err != nil {
		a.log.Warn("write /metrics/self", "err", err)
		_, _ = fmt.Fprintf(w, "# vigil: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
	}
}

func (a *Agent) serveNodeMetrics(w http.ResponseWriter, r *http.Request) {
	in := a.nodeInput()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	if err := metrics.WriteNode(w, in); err != nil {
		a.log.Debug("write /metrics", "err", err)
	}
}

// nodeInput is this node's state in the form the exposition renders.
func (a *Agent) nodeInput() metrics.NodeInput {
	snap := a.snapshot()
	a.mu.RLock()
	samples := make(map[metrics.ContainerKey]*vigilv1.ResourceSample, len(a.lastStats))
	for k, s := range a.lastStats {
		samples[metrics.ContainerKey{Namespace: k.Namespace, ID: k.ID}] = s
	}
	a.mu.RUnlock()
	return metrics.NodeInput{
		Name:       a.cfg.NodeName,
		Up:         true,
		Containers: snap.Containers,
		Samples:    samples,
		Network:    snap.Network,
	}
}
