package remediation

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vigilhq/vigil/internal/store/bolt"
	"github.com/vigilhq/vigil/internal/testenv"
)

// startAlertmanager runs Debian's prometheus-alertmanager on a loopback
// port, not clustered, its webhook receiver pointing at url. It returns
// the address of its API.
func startAlertmanager(t *testing.T, url string) string {
	t.Helper()
	bin, err := exec.LookPath("prometheus-alertmanager")
	if err != nil {
		t.Fatalf("prometheus-alertmanager not found after scripts/install-prereqs.sh: %v", err)
	}
	dir := t.TempDir()
	cfg := fmt.Sprintf(`route:
  receiver: vigil
  group_by: [alertname, node]
  group_wait: 100ms
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: vigil
    webhook_configs:
      - url: %s/api/v1/alerts
        send_resolved: true
`, url)
	if err := os.WriteFile(filepath.Join(dir, "am.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	log, err := os.Create(filepath.Join(dir, "am.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "am.yml"), "--storage.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--cluster.listen-address=", "--log.level=debug")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		log.Close()
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			t.Logf("alertmanager %s log:\n%s", addr, lastLines(string(b), 30))
		}
	})
	waitFor(t, "alertmanager "+addr+" ready", func() bool {
		resp, err := http.Get("http://" + addr + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return addr
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// postAlert fires an alert through Alertmanager's API v2, with startsAt
// set as Prometheus sets it (the rule's active-at time, the same in what it
// sends to every Alertmanager). Without it each Alertmanager stamps its own
// receipt time, and the two replicas' notifications would be two firings.
func postAlert(t *testing.T, am string, labels map[string]string, startsAt time.Time) {
	t.Helper()
	var b strings.Builder
	b.WriteString(`[{"labels":{`)
	first := true
	for k, v := range labels {
		if !first {
			b.WriteString(",")
		}
		first = false
		fmt.Fprintf(&b, "%q:%q", k, v)
	}
	fmt.Fprintf(&b, `},"annotations":{"summary":"test"},"startsAt":%q}]`, startsAt.Format(time.RFC3339Nano))
	resp, err := http.Post("http://"+am+"/api/v2/alerts", "application/json", bytes.NewBufferString(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("posting an alert to %s: %s", am, resp.Status)
	}
}

// Two real Alertmanagers, not clustered, both deliver the same alert (each
// with its own retries): one command. An aggregator answering 503 for a
// while (its journal unwritable) and then recovering: one command.
func TestAlertmanagerDeliversOnce(t *testing.T) {
	testenv.Require(t)
	st, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	fleet := NewStaticFleet()
	fleet.Put(FleetContainer{Node: "n1", Namespace: "default", ID: "web", Owner: OwnerVigil})
	fleet.Put(FleetContainer{Node: "n1", Namespace: "default", ID: "db", Owner: OwnerVigil})
	rs, err := ParseRules([]byte(testRules), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	e, err := New(Config{Store: st, Fleet: fleet, Rules: StaticRuleSet(rs), Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	var failing atomic.Int32 // requests still to refuse with 503
	var seen atomic.Int32
	alerts := e.AlertsHandler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		if failing.Add(-1) >= 0 {
			http.Error(w, `{"error":"the remediation journal cannot be written now"}`, http.StatusServiceUnavailable)
			return
		}
		alerts.ServeHTTP(w, r)
	}))
	defer srv.Close()
	am1, am2 := startAlertmanager(t, srv.URL), startAlertmanager(t, srv.URL)

	commands := func() int {
		kvs, _, err := st.List(context.Background(), commandsPrefix, 0)
		if err != nil {
			t.Fatal(err)
		}
		return len(kvs)
	}
	web := map[string]string{"alertname": "Unhealthy", "node": "n1", "namespace": "default", "container": "web"}
	started := time.Now().Add(-time.Minute)
	postAlert(t, am1, web, started)
	postAlert(t, am2, web, started)
	waitFor(t, "both Alertmanagers' deliveries", func() bool {
		return testutil.ToFloat64(e.m.webhook.WithLabelValues("200")) >= 2
	})
	if n := commands(); n != 1 {
		t.Fatalf("%d commands after two Alertmanagers delivered, want 1", n)
	}
	if n := testutil.ToFloat64(e.m.suppressed.WithLabelValues("duplicate")); n < 1 {
		t.Errorf("duplicates counted %v", n)
	}

	// The journal cannot be written for the next 3 requests: Alertmanager
	// retries 5xx, and the alert still comes to one command.
	failing.Store(3)
	before := seen.Load()
	db := map[string]string{"alertname": "Unhealthy", "node": "n1", "namespace": "default", "container": "db"}
	postAlert(t, am1, db, started)
	waitFor(t, "a command for db after the 503s", func() bool { return commands() == 2 })
	if got := seen.Load() - before; got < 4 {
		t.Errorf("%d requests, want the 3 refused and a retry", got)
	}
	list, err := e.List(context.Background(), ListFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Errorf("%d remediations, want 2: %+v", len(list), list)
	}
}
