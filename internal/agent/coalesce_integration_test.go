package agent

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/vigilhq/vigil/internal/pki"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// streamingAgent starts a real aggregator on loopback with mutual TLS and
// the harness's agent streaming to it; it returns the aggregator's HTTP
// address and the agent's.
func streamingAgent(t *testing.T, h *harness, mod func(*Config)) (aggHTTP, agentHTTP string, ca *pki.CA) {
	r := streamingAgentWith(t, h, mod)
	return r.aggHTTP, r.agentHTTP, r.ca
}

// streamRig is an agent streaming to a real aggregator over mutual TLS.
type streamRig struct {
	aggHTTP, agentHTTP, aggGRPC string
	agg                         *aggregatorProc
	// restart is the configuration change that starts the agent again on
	// the same aggregator: h.start(restart).
	restart func(*Config)
	// client are the certificate files of an API client of the aggregator
	// (a viewer).
	client pki.Files
	// ca signed every certificate of the rig.
	ca *pki.CA
}

// streamingAgentWith is streamingAgent, returning all of the rig.
func streamingAgentWith(t testing.TB, h *harness, mod func(*Config)) streamRig {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.NewCA("vigil-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	srvFiles, err := ca.WriteFiles(dir, "aggregator", "aggregator")
	if err != nil {
		t.Fatal(err)
	}
	nodeFiles, err := ca.WriteFiles(dir, "node", "test-node")
	if err != nil {
		t.Fatal(err)
	}
	clientFiles, err := ca.WriteIdentity(dir, "client", pki.Identity{Role: pki.RoleViewer, Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr, httpAddr := freeAddr(t), freeAddr(t)
	agg := startAggregator(t, srvFiles, grpcAddr, httpAddr)
	agentHTTP := freeAddr(t)
	restart := func(c *Config) {
		c.MetricsListen = agentHTTP
		c.AggregatorAddress = grpcAddr
		c.TLS = nodeFiles
		c.TLSServerName = "localhost"
		if mod != nil {
			mod(c)
		}
	}
	h.start(restart)
	return streamRig{aggHTTP: httpAddr, agentHTTP: agentHTTP, aggGRPC: grpcAddr, agg: agg, restart: restart, client: clientFiles, ca: ca}
}

// aggregatorContainer is container id as the aggregator's JSON API shows
// it; nil when it does not.
func aggregatorContainer(t *testing.T, ca *pki.CA, httpAddr, id string) *vigilv1.Container {
	t.Helper()
	resp, err := apiGet(t, ca, httpAddr, "/api/v1/containers?node=test-node")
	if err != nil {
		return nil
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var list struct {
		Containers []struct {
			Container json.RawMessage `json:"container"`
		} `json:"containers"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatalf("/api/v1/containers: %v: %s", err, body)
	}
	for _, raw := range list.Containers {
		var c vigilv1.Container
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(raw.Container, &c); err != nil {
			t.Fatalf("/api/v1/containers: container: %v: %s", err, raw.Container)
		}
		if c.GetId() == id {
			return &c
		}
	}
	return nil
}

// probeFailuresInMetrics is vigil_container_health_probe_failures_total of
// container id on the /metrics at addr, -1 when absent.
func probeFailuresInMetrics(t *testing.T, addr, id string) int {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	re := regexp.MustCompile(`(?m)^vigil_container_health_probe_failures_total\{[^}]*container="` + regexp.QuoteMeta(id) + `"[^}]*\} (\d+)$`)
	m := re.FindStringSubmatch(string(b))
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// TestAggregatorFollowsProbesBetweenChanges (issue 22, item 1): probe
// results and failure counters reach the aggregator within a sampling
// interval of changing, not only when the health status changes. A healthy
// container's results keep coming (they stayed frozen at its first probe);
// a failing container that stays "starting" (many retries) shows its
// failures at the aggregator as on the agent's own /metrics (the aggregator
// read 0); one failing inside a long start period shows its results.
func TestAggregatorFollowsProbesBetweenChanges(t *testing.T) {
	h := newHarness(t)
	aggHTTP, agentHTTP, ca := streamingAgent(t, h, nil) // sampling every 1s
	probe := func(cmd, startPeriod, retries string) map[string]string {
		return map[string]string{
			"vigil.io/health-cmd":          cmd,
			"vigil.io/health-interval":     "1s",
			"vigil.io/health-timeout":      "5s",
			"vigil.io/health-start-period": startPeriod,
			"vigil.io/health-retries":      retries,
		}
	}
	h.run("healthy", probe("true", "0s", "3"), "sleep")
	h.run("failing", probe("false", "0s", "1000"), "sleep")
	h.run("booting", probe("false", "1h", "3"), "sleep")

	results := func(c *vigilv1.Container) int { return len(c.GetHealth().GetLastResults()) }
	var last string
	waitUntil(t, 30*time.Second, "probe results and failures at the aggregator between status changes", func() bool {
		hc, fc, bc := aggregatorContainer(t, ca, aggHTTP, "healthy"), aggregatorContainer(t, ca, aggHTTP, "failing"), aggregatorContainer(t, ca, aggHTTP, "booting")
		aggFail := probeFailuresInMetrics(t, aggHTTP, "failing")
		last = fmt.Sprintf("healthy: %d results; failing: %d results, streak %d, %d failures at the aggregator, %d on the agent; booting: %d results, status %v",
			results(hc), results(fc), fc.GetHealth().GetFailingStreak(), aggFail, probeFailuresInMetrics(t, agentHTTP, "failing"), results(bc), bc.GetHealth().GetStatus())
		return results(hc) >= 4 && results(fc) >= 4 && fc.GetHealth().GetFailingStreak() >= 4 && aggFail >= 4 && results(bc) >= 4
	})
	t.Log(last)
	if c := aggregatorContainer(t, ca, aggHTTP, "booting"); c.GetHealth().GetStatus() != vigilv1.HealthStatus_HEALTH_STATUS_STARTING {
		t.Errorf("booting: status %v at the aggregator, want STARTING (failures in the start period)", c.GetHealth().GetStatus())
	}

	// Within one interval (1s, plus the stream's delivery) of each other,
	// the agent's counter and the aggregator's agree.
	waitUntil(t, 10*time.Second, "the aggregator's failure count to catch up with the agent's", func() bool {
		agent := probeFailuresInMetrics(t, agentHTTP, "failing")
		agg := probeFailuresInMetrics(t, aggHTTP, "failing")
		last = fmt.Sprintf("agent %d, aggregator %d", agent, agg)
		return agg >= 4 && agent-agg <= 2
	})
	t.Log(last)
}
