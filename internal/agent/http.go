package agent

import (
	"fmt"
	"maps"
	"net/http"
	"strings"
	"time"

	"github.com/vigilhq/vigil/internal/metrics"
)

// httpHandler serves the agent's optional local endpoints:
//
//	/metrics       this node's container and network series (the same names
//	               as the aggregator's), for clusters that prefer per-node scraping
//	/metrics/self  the agent's own metrics (collection and probe cost, buffer, reconnects)
//	/healthz       200 while the decision loop turns, with containerd's
//	               availability in the body; 503 when the loop has not turned
//	               for loopStallAfter (it turns at least every sampling interval)
func (a *Agent) httpHandler() http.Handler {
	mux := http.NewServeMux()
	cache := new(metrics.NodeCache) // this node's series, kept between scrapes
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) { a.serveNodeMetrics(w, r, cache) })
	mux.HandleFunc("/metrics/self", a.serveSelfMetrics)
	mux.HandleFunc("/healthz", a.serveHealthz)
	return mux
}

// loopStallAfter is how long the decision loop may go without turning
// before /healthz fails: three sampling intervals, and at least 30 s.
func (a *Agent) loopStallAfter() time.Duration {
	return max(3*a.cfg.SampleInterval, 30*time.Second)
}

func (a *Agent) serveHealthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	rt := "containerd: unavailable\n"
	if a.rt.Available() {
		rt = "containerd: available\n"
	}
	last := a.heartbeat.Load()
	since := time.Since(time.Unix(0, last))
	if last == 0 || since > a.loopStallAfter() {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = fmt.Fprintf(w, "stalled: the decision loop has not turned for %v (limit %v)\n%s", since.Round(time.Second), a.loopStallAfter(), rt)
		return
	}
	_, _ = w.Write([]byte("ok\n" + rt))
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

// serveNodeMetrics writes the node's series through cache, which renders
// again only the containers that changed since the last scrape (it
// assembles one scrape at a time and writes it out after, so a slow
// scraper holds no other). A scraper that stops reading is cut off after
// metricsWriteTimeout.
func (a *Agent) serveNodeMetrics(w http.ResponseWriter, r *http.Request, cache *metrics.NodeCache) {
	in := a.nodeInput()
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(metricsWriteTimeout))
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	if _, err := cache.Write(w, in); err != nil {
		a.log.Debug("write /metrics", "err", err)
	}
}

// metricsWriteTimeout bounds the writing of one local /metrics response.
const metricsWriteTimeout = 10 * time.Second

// nodeInput is this node's state in the form the exposition renders.
func (a *Agent) nodeInput() metrics.NodeInput {
	snap := a.snapshot()
	a.mu.RLock()
	samples := maps.Clone(a.lastStats)
	a.mu.RUnlock()
	return metrics.NodeInput{
		Name:       a.cfg.NodeName,
		Up:         true,
		Containers: snap.Containers,
		Samples:    samples,
		Network:    snap.Network,
		Status:     snap.Status,
	}
}
