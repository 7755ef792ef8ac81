package deploy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/testenv"
	"github.com/vigilhq/vigil/test/chain"
)

// fixtureExposition renders a scrape of a small fleet in which every
// dashboard panel has something to show: node-1 streaming with an
// unhealthy, crash-looping container web (restarting, exiting, OOM-killed,
// throttled, its link down) and a node condition; node-2 not streaming and
// seeing node-1 as a peer; a host link down; remediation acting, failing
// and suppressed. Counters grow with n, the scrape's number, so rates and
// increases have data after two scrapes. The label sets are those of the
// aggregator's exposition (internal/metrics), and of the agreed names for
// the series being built.
func fixtureExposition(n int) string {
	c := `node="node-1",namespace="default",pod_namespace="shop",pod="web-0",container="web"`
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	f := float64(n)
	line(`vigil_node_up{node="node-1"} 1`)
	line(`vigil_node_up{node="node-2"} 0`)
	line(`vigil_container_info{%s,container_id="abc123",image="example/web:1",image_id="sha256:00"} 1`, c)
	line(`vigil_container_running{%s} 1`, c)
	for _, s := range []string{"none", "starting", "healthy"} {
		line(`vigil_container_health_status{%s,status="%s"} 0`, c, s)
	}
	line(`vigil_container_health_status{%s,status="unhealthy"} 1`, c)
	line(`vigil_container_crash_looping{%s} 1`, c)
	line(`vigil_container_restart_gave_up{%s} 0`, c)
	line(`vigil_container_last_terminated_reason{%s,reason="error"} 1`, c)
	line(`vigil_container_restarts_total{%s} %g`, c, f)
	line(`vigil_container_exits_total{%s,reason="error",exit_code="1"} %g`, c, f)
	line(`vigil_container_oom_events_total{%s} %g`, c, f)
	line(`vigil_container_health_probe_failures_total{%s} %g`, c, 3*f)
	line(`vigil_container_restart_backoff_seconds{%s} 4`, c)
	line(`vigil_container_cpu_usage_seconds_total{%s} %g`, c, 0.5*f)
	line(`vigil_container_cpu_cfs_throttled_seconds_total{%s} %g`, c, 0.1*f)
	line(`vigil_container_memory_working_set_bytes{%s} 1.048576e+07`, c)
	line(`vigil_container_memory_rss_bytes{%s} 8.388608e+06`, c)
	line(`vigil_container_memory_limit_bytes{%s} 6.7108864e+07`, c)
	line(`vigil_container_pids{%s} 3`, c)
	for _, dir := range []string{"receive", "transmit"} {
		for _, k := range []string{"bytes", "packets", "errors", "packets_dropped"} {
			line(`vigil_container_network_%s_%s_total{%s,interface="eth0"} %g`, dir, k, c, 100*f)
			line(`vigil_node_network_%s_%s_total{node="node-1",interface="eth0"} %g`, dir, k, 1000*f)
		}
	}
	line(`vigil_container_network_condition{%s,interface="eth0",condition="link_down",status="true"} 1`, c)
	line(`vigil_node_network_up{node="node-1",interface="eth0"} 1`)
	line(`vigil_node_network_up{node="node-1",interface="eth1"} 0`)
	line(`vigil_node_network_carrier_changes_total{node="node-1",interface="eth1"} %g`, f)
	line(`vigil_node_condition{node="node-1",condition="Healthy",status="true"} 1`)
	line(`vigil_node_condition{node="node-1",condition="RuntimeAvailable",status="true"} 1`)
	line(`vigil_node_peer_reachable{node="node-2",peer="node-1"} 1`)
	line(`vigil_node_agent_dropped_messages_total{node="node-1",reason="buffer_full"} %g`, f)
	line(`vigil_aggregator_streams_connected 1`)
	line(`vigil_aggregator_ingest_lag_seconds 0.002`)
	line(`vigil_aggregator_commands_total{result="sent"} %g`, f)
	line(`vigil_remediations_total{action="restart_container",result="succeeded"} %g`, f)
	line(`vigil_remediations_total{action="restart_container",result="failed"} %g`, f)
	line(`vigil_remediations_suppressed_total{reason="duplicate"} %g`, 2*f)
	line(`vigil_remediation_storm_active 1`)
	line(`vigil_remediation_webhook_requests_total{code="200"} %g`, f)
	for _, le := range []string{"0.01", "0.1", "1", "+Inf"} {
		line(`vigil_remediation_duration_seconds_bucket{le="%s"} %g`, le, f)
	}
	line(`vigil_remediation_duration_seconds_sum %g`, 0.005*f)
	line(`vigil_remediation_duration_seconds_count %g`, f)
	return b.String()
}

// dashboardVariables are the values the dashboards' variables take against
// the fixture.
var dashboardVariables = strings.NewReplacer(
	"$__rate_interval", "1m", "$__interval", "15s", "$__range", "1h",
	"$node", "node-1", "$namespace", "default", "$container", "web",
)

// TestDashboardQueriesOnPrometheus runs every query of every dashboard
// against Debian's real Prometheus, which scrapes a fixture fleet on
// loopback, and fails on a query that errors or returns nothing: each
// panel shows something where the fleet has data. (Against the end-to-end
// chain's Prometheus, with series from real agents, when the coordinator's
// test/e2e takes the dashboards in.)
func TestDashboardQueriesOnPrometheus(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Prometheus")
	}
	prometheus := testenv.LookPath(t, "prometheus")
	var scrapes atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprint(w, fixtureExposition(int(scrapes.Add(1))))
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	dir := t.TempDir()
	promAddr, err := chain.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf("global: {scrape_interval: 1s, scrape_timeout: 1s}\nscrape_configs:\n  - job_name: vigil-aggregator\n    static_configs: [{targets: [%q]}]\n", ln.Addr().String())
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(prometheus, "--config.file", filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path", filepath.Join(dir, "data"), "--web.listen-address", promAddr)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			t.Logf("prometheus log:\n%s", chain.LogTail(logf.Name(), 30))
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Rates need two samples in their window: wait for them.
	waitFor := func(what, q string) {
		deadline := time.Now().Add(30 * time.Second)
		for {
			s, err := chain.QueryPrometheus(ctx, promAddr, q)
			if err == nil && len(s) > 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %s gave %v, %v after 30s", what, q, s, err)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	waitFor("two scrapes", `rate(vigil_container_restarts_total[1m]) > 0`)

	files, err := filepath.Glob(filepath.Join(repoRoot(t), "deploy/grafana/*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards: %v", err)
	}
	var names []string
	queries := map[string]string{}
	for _, f := range files {
		for at, expr := range dashboardQueries(t, f) {
			queries[at] = expr
			names = append(names, at)
		}
	}
	sort.Strings(names)
	for _, at := range names {
		q := dashboardVariables.Replace(queries[at])
		s, err := chain.QueryPrometheus(ctx, promAddr, q)
		switch {
		case err != nil:
			t.Errorf("%s: %s: %v", at, q, err)
		case len(s) == 0:
			t.Errorf("%s: %s returned nothing on a fleet that has the data", at, q)
		}
	}
	t.Logf("%d queries of %d dashboards answered with data", len(names), len(files))
}
