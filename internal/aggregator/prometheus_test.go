package aggregator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/aggregator/loadgen"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

const (
	promtoolBin   = "/usr/bin/promtool"
	prometheusBin = "/usr/bin/prometheus"
)

// startFleet feeds the aggregator with simulated agents (the loadgen's code
// path, over mTLS) and waits until every snapshot is applied.
func startFleet(t *testing.T, h *harness, nodes, containers int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var stats loadgen.Stats
	go func() {
		done <- loadgen.Run(ctx, loadgen.Config{
			Target: h.agg.GRPCAddr().String(), ClientTLS: h.clientTLS, Nodes: nodes, Containers: containers,
			Interval: 500 * time.Millisecond, EventEvery: 2, Logger: testLogger(t),
		}, &stats)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("loadgen: %v", err)
		}
	})
	want := nodes * containers
	waitFor(t, 20*time.Second, fmt.Sprintf("%d containers from %d nodes", want, nodes), func() bool {
		return len(h.agg.Fleet().Containers(&vigilv1.ListContainersRequest{})) == want
	})
}

func TestRealScrapePassesPromtoolAndShardsPartitionTheFleet(t *testing.T) {
	requireBinary(t, promtoolBin)
	h := startAggregator(t, nil)
	startFleet(t, h, 12, 10)

	full := scrape(t, h, "")
	cmd := exec.Command(promtoolBin, "check", "metrics")
	cmd.Stdin = strings.NewReader(full)
	if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("promtool check metrics on a real scrape: %v\n%s", err, out)
	}
	if n := len(seriesLines(full, "vigil_container_info")); n != 120 {
		t.Fatalf("full scrape: %d container info series, want 120", n)
	}

	seen := map[string]int{}
	for i := range 4 {
		text := scrape(t, h, fmt.Sprintf("?shard=%d&shards=4", i))
		for _, l := range seriesLines(text, "vigil_container_info") {
			seen[l[:strings.LastIndexByte(l, ' ')]]++
		}
		if self := strings.Contains(text, "vigil_aggregator_streams_connected"); self != (i == 0) {
			t.Errorf("shard %d carries self-metrics: %v, want only shard 0", i, self)
		}
	}
	if len(seen) != 120 {
		t.Fatalf("4 shards hold %d distinct containers, want 120", len(seen))
	}
	for k, n := range seen {
		if n != 1 {
			t.Fatalf("%s is in %d shards", k, n)
		}
	}
}

// TestPrometheusScrapesFourShards runs Debian's Prometheus against 4 shards
// of an aggregator fed by simulated agents: PromQL must count every
// container exactly once.
func TestPrometheusScrapesFourShards(t *testing.T) {
	requireBinary(t, prometheusBin)
	h := startAggregator(t, nil)
	const nodes, containers = 20, 10
	startFleet(t, h, nodes, containers)

	dir := t.TempDir()
	var targets strings.Builder
	for i := range 4 {
		fmt.Fprintf(&targets, "      - targets: [%q]\n        labels: {__param_shard: \"%d\"}\n", h.agg.HTTPAddr().String(), i)
	}
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: vigil
    metrics_path: /metrics
    params:
      shards: ["4"]
    static_configs:
%s    relabel_configs:
      - source_labels: [__address__, __param_shard]
        regex: "(.+);(.+)"
        target_label: instance
        replacement: "${1}/shard-${2}"
`, targets.String())
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	promAddr := l.Addr().String()
	l.Close()
	var logs bytes.Buffer
	prom := exec.Command(prometheusBin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr, "--log.level=warn")
	prom.Stdout, prom.Stderr = &logs, &logs
	if err := prom.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = prom.Process.Kill()
		_ = prom.Wait()
		if t.Failed() {
			t.Logf("prometheus log:\n%s", logs.String())
		}
	})

	query := func(q string) (float64, bool) {
		resp, err := http.Get("http://" + promAddr + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return 0, false
		}
		defer resp.Body.Close()
		var r struct {
			Status string
			Data   struct {
				Result []struct {
					Value [2]any
				}
			}
		}
		if json.NewDecoder(resp.Body).Decode(&r) != nil || r.Status != "success" || len(r.Data.Result) != 1 {
			return 0, false
		}
		s, _ := r.Data.Result[0].Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		return v, err == nil
	}
	var last float64
	waitFor(t, 30*time.Second, "Prometheus to scrape 4 healthy shards", func() bool {
		v, ok := query(`count(up{job="vigil"} == 1)`)
		return ok && v == 4
	})
	waitFor(t, 30*time.Second, fmt.Sprintf("count(vigil_container_info) = %d", nodes*containers), func() bool {
		v, ok := query(`count(vigil_container_info)`)
		last = v
		return ok && v == nodes*containers
	})
	// Exactly once: no container is counted in two shards.
	if v, ok := query(`count(count by (node, namespace, pod_namespace, pod, container) (vigil_container_info) > 1) or vector(0)`); !ok || v != 0 {
		t.Fatalf("containers seen more than once: %v (last count %v)", v, last)
	}
	if v, ok := query(`sum(vigil_aggregator_containers)`); !ok || v != nodes*(containers+containers*4/5) {
		t.Fatalf("vigil_aggregator_containers = %v, want %d (sandboxes included; only on shard 0)", v, nodes*(containers+containers*4/5))
	}
}

// TestShippedPrometheusConfigs: the configs in deploy/prometheus pass
// `promtool check config` (which also checks the rules file they name).
func TestShippedPrometheusConfigs(t *testing.T) {
	requireBinary(t, promtoolBin)
	for _, name := range []string{"prometheus.yml", "prometheus-sharded.yml"} {
		path := filepath.Join("..", "..", "deploy", "prometheus", name)
		out, err := exec.Command(promtoolBin, "check", "config", path).CombinedOutput()
		if err != nil {
			t.Errorf("promtool check config %s: %v\n%s", name, err, out)
		}
	}
}
