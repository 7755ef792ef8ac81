package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/testenv"
	"github.com/vigilhq/vigil/test/chain"
)

// TestRemediation runs the whole alert chain with the shipped rules and
// configurations: containerd, the agent, the aggregator with its journal and
// deploy/remediation/rules.yaml, Prometheus with deploy/prometheus's rules,
// and Alertmanager with the shipped route (deploy/demo/alertmanager.yml).
// A container turns unhealthy once; its own policy does not restart it
// (restart-on-unhealthy=false), so only remediation can. Each step is
// checked through what a user sees: the series in Prometheus, the alert
// firing, the webhook received, the container restarted once, the journal
// entry in vigilctl, the alert resolved, and a second delivery of the same
// firing suppressed as a duplicate.
func TestRemediation(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	for _, bin := range []string{"prometheus", chain.AlertmanagerBinary} {
		testenv.LookPath(t, bin)
	}
	// The shipped remediation rules act on the namespaces default, prod-*
	// and k8s.io.
	ns := fmt.Sprintf("%se2e-%d", chain.SickNamespacePrefix, os.Getpid())
	env.WorkloadImage(t, ns)
	netns := testenv.NewNetNS(t)
	bin := buildBinaries(t)

	dir := t.TempDir()
	addrs := make([]string, 5)
	for i := range addrs {
		var err error
		if addrs[i], err = chain.FreeAddr(); err != nil {
			t.Fatal(err)
		}
	}
	root := repoRoot(t)
	c, err := chain.New(chain.Config{
		Dir:                dir,
		BinDir:             bin,
		ContainerdAddress:  env.Address,
		NodeName:           "e2e-remediation",
		AggregatorGRPC:     addrs[0],
		AggregatorHTTP:     addrs[1],
		AgentMetrics:       addrs[2],
		Prometheus:         addrs[3],
		Alertmanager:       addrs[4],
		PrometheusConfig:   filepath.Join(root, "deploy", "demo", "prometheus.yml"),
		RulesDir:           filepath.Join(root, "deploy", "prometheus"),
		AlertmanagerConfig: filepath.Join(root, "deploy", "demo", "alertmanager.yml"),
		RemediationRules:   filepath.Join(root, "deploy", "remediation", "rules.yaml"),
		Interval:           time.Second,
		// Its own namespace only: TestDataPath's agent runs on the same
		// containerd at the same time.
		AgentArgs: []string{"--namespaces", ns},
		// The first aggregator decides and journals but delivers nothing:
		// it is SIGKILLed with the command in its journal, and the next
		// one delivers it.
		AggregatorArgs: []string{"--hold-commands"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stop chain: %v", err)
		}
		if t.Failed() {
			for _, name := range []string{"aggregator", "agent", "prometheus", "alertmanager"} {
				t.Logf("log tail of %s:\n%s", name, chain.LogTail(filepath.Join(dir, "logs", name+".log"), 80))
			}
		}
	})
	// The shipped rule waits `for: 1m`, and Alertmanager's remediation
	// route 5 s: the whole story takes about a minute and a half.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, start := range []func(context.Context) error{c.StartAggregator, c.StartAgent, c.StartAlertmanager, c.StartPrometheus} {
		if err := start(ctx); err != nil {
			t.Fatal(err)
		}
	}

	sick := chain.SickStory(chain.StoryOptions{
		Namespace:      ns,
		NetNSPath:      netns.Path,
		LogDir:         filepath.Join(dir, "logs"),
		CgroupParent:   filepath.Join(env.CgroupParent, ns),
		UnhealthyAfter: 3 * time.Second,
		HealthInterval: time.Second,
	})
	if err := chain.RunContainer(ctx, env.Address, sick); err != nil {
		t.Fatal(err)
	}
	sel := `{container="sick",node="e2e-remediation"}`

	// 1. The series: unhealthy, and not restarted by its own policy.
	waitValue(ctx, t, c, `vigil_container_health_status{container="sick",node="e2e-remediation",status="unhealthy"}`, func(v float64) bool { return v == 1 })
	assertValue(ctx, t, c, "vigil_container_restarts_total"+sel, 0)
	t.Log("sick is unhealthy")

	// 2. The shipped alert fires (after its `for: 1m`).
	firing := `ALERTS{alertname="VigilContainerUnhealthy",alertstate="firing",container="sick",node="e2e-remediation"}`
	waitValue(ctx, t, c, firing, func(v float64) bool { return v == 1 })
	t.Log("VigilContainerUnhealthy is firing")

	// 3. Alertmanager delivered it: the aggregator counted the webhook, and
	// journaled the decision; its command waits (--hold-commands).
	waitValue(ctx, t, c, `sum(vigil_remediation_webhook_requests_total{code="200"})`, func(v float64) bool { return v >= 1 })
	waitJournal(ctx, t, c, "REMEDIATION_STATE_PENDING")

	// The aggregator dies between the journal and the result (SIGKILL); the
	// next one, on the same data dir, delivers the command once.
	if err := c.Aggregator.Kill(); err != nil {
		t.Fatal(err)
	}
	c.SetAggregatorArgs()
	if err := c.StartAggregator(ctx); err != nil {
		t.Fatalf("aggregator after SIGKILL: %v", err)
	}
	t.Log("the aggregator was SIGKILLed with the command journaled, and started again")

	// 4. Restarted once, by the remediation; healthy again (it turns
	// unhealthy only once).
	waitValue(ctx, t, c, "vigil_container_restarts_total"+sel, func(v float64) bool { return v == 1 })
	waitValue(ctx, t, c, `vigil_container_health_status{container="sick",node="e2e-remediation",status="healthy"}`, func(v float64) bool { return v == 1 })
	t.Log("sick was restarted and is healthy")

	// 5. The journal says so, through vigilctl: one remediation, succeeded.
	rem := waitJournal(ctx, t, c, "REMEDIATION_STATE_SUCCEEDED")
	if rem.Rule != "restart-unhealthy" || rem.Target.ContainerID != "sick" || rem.AlertFingerprint == "" {
		t.Errorf("journal entry %+v: want rule restart-unhealthy on sick, with the alert's fingerprint", rem)
	}

	// 6. The alert resolves.
	for {
		res, err := c.Query(ctx, firing)
		if err == nil && len(res) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s still firing: %v %v", firing, res, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
	t.Log("the alert resolved")

	// 7. Alertmanager delivering the same firing again (a retry, or an HA
	// peer) is a duplicate: the aggregator answers 200 and does nothing.
	body := fmt.Sprintf(`{"version":"4","status":"firing","receiver":"vigil-remediation","groupKey":"{}/{vigil_action=~\".+\"}:{}",
"groupLabels":{},"commonLabels":{},"commonAnnotations":{},"externalURL":"http://%s","truncatedAlerts":0,
"alerts":[{"status":"firing","labels":{"alertname":"VigilContainerUnhealthy","vigil_action":"restart_container","severity":"warning","node":"e2e-remediation","namespace":%q,"container":"sick"},
"annotations":{},"startsAt":%q,"endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":%q}]}`,
		addrs[4], ns, rem.AlertStartsAt, rem.AlertFingerprint)
	resp, err := http.Post("http://"+addrs[1]+"/api/v1/alerts", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("second delivery: %s", resp.Status)
	}
	waitValue(ctx, t, c, `sum(vigil_remediations_suppressed_total{reason="duplicate"})`, func(v float64) bool { return v >= 1 })
	time.Sleep(3 * time.Second) // two scrapes: a second restart would show
	assertValue(ctx, t, c, "vigil_container_restarts_total"+sel, 1)

}

// journaled is what the test reads of a remediation in vigilctl's JSON.
type journaled struct {
	ID               string `json:"id"`
	State            string `json:"state"`
	Rule             string `json:"rule"`
	AlertFingerprint string `json:"alertFingerprint"`
	AlertStartsAt    string `json:"alertStartsAt"`
	Target           struct {
		ContainerID string `json:"containerId"`
	} `json:"target"`
}

// waitJournal waits until vigilctl remediations lists exactly one
// remediation, in state, and returns it.
func waitJournal(ctx context.Context, t *testing.T, c *chain.Chain, state string) journaled {
	t.Helper()
	for {
		out, err := c.Vigilctl(ctx, "-o", "json", "remediations")
		if err != nil {
			t.Fatal(err)
		}
		var list struct {
			Remediations []journaled `json:"remediations"`
		}
		if err := json.Unmarshal(out, &list); err != nil {
			t.Fatalf("vigilctl remediations -o json: %v\n%s", err, out)
		}
		if len(list.Remediations) > 1 {
			t.Fatalf("vigilctl remediations lists %d, want 1:\n%s", len(list.Remediations), out)
		}
		if len(list.Remediations) == 1 && list.Remediations[0].State == state {
			return list.Remediations[0]
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no remediation in state %s in time: %s", state, out)
		case <-time.After(500 * time.Millisecond):
		}
	}
}
