package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/vigilhq/vigil/test/chain"
)

// journaled is what the demo reads of a remediation in vigilctl's JSON.
type journaled struct {
	ID               string `json:"id"`
	State            string `json:"state"`
	Rule             string `json:"rule"`
	Result           string `json:"result"`
	AlertFingerprint string `json:"alertFingerprint"`
	AlertStartsAt    string `json:"alertStartsAt"`
	Target           struct {
		Namespace   string `json:"namespace"`
		ContainerID string `json:"containerId"`
	} `json:"target"`
}

// remediations reads the journal through vigilctl.
func (d *demo) remediations(ctx context.Context) ([]journaled, error) {
	out, err := d.chain.Vigilctl(ctx, "-o", "json", "remediations")
	if err != nil {
		return nil, err
	}
	var list struct {
		Remediations []journaled `json:"remediations"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		return nil, fmt.Errorf("vigilctl remediations -o json: %w", err)
	}
	return list.Remediations, nil
}

// remediationStatus prints where the sick container's story is (its alert
// in Prometheus, the journal) and reports whether its remediation ended.
func (d *demo) remediationStatus(ctx context.Context) bool {
	alert := "not firing"
	if res, err := d.chain.Query(ctx, `ALERTS{alertname="VigilContainerUnhealthy",container="`+chain.SickID+`"}`); err == nil {
		for _, s := range res {
			alert = s.Labels["alertstate"]
			if alert == "pending" {
				alert += " (the rule waits `for: 1m`)"
			}
		}
	}
	fmt.Fprintf(d.out, "     remediation: VigilContainerUnhealthy for %s is %s\n", chain.SickID, alert)
	fmt.Fprintf(d.out, "     $ bin/vigilctl --server %s --insecure remediations\n", aggregatorGRPC)
	out, err := d.chain.Vigilctl(ctx, "remediations")
	if err != nil {
		fmt.Fprintf(d.out, "(vigilctl: %v)\n", err)
		return false
	}
	d.out.Write(out)
	list, err := d.remediations(ctx)
	if err != nil {
		return false
	}
	for _, r := range list {
		if r.Target.ContainerID == chain.SickID && r.State != "REMEDIATION_STATE_PENDING" && r.State != "REMEDIATION_STATE_DISPATCHED" {
			return true
		}
	}
	return false
}

// redeliver plays Alertmanager delivering the same firing again (its
// retry, or a second replica) and shows that nothing more happens.
func (d *demo) redeliver(ctx context.Context) {
	list, err := d.remediations(ctx)
	if err != nil {
		fmt.Fprintf(d.out, "(%v)\n", err)
		return
	}
	var r *journaled
	for i := range list {
		if list[i].Target.ContainerID == chain.SickID && list[i].AlertFingerprint != "" {
			r = &list[i]
		}
	}
	if r == nil {
		d.say("The remediation of %s has not happened yet (see %s/aggregator.log and alertmanager.log); the demo keeps running", chain.SickID, d.logDir)
		return
	}
	d.say("The journal shows remediation %s: rule %s, %s, result %q", r.ID, r.Rule, strings.TrimPrefix(r.State, "REMEDIATION_STATE_"), r.Result)
	d.say("Alertmanager delivers at least once (retries, HA replicas). Posting the same firing again, as it would:")
	body := fmt.Sprintf(`{"version":"4","status":"firing","receiver":"vigil-remediation","groupKey":"{}/{vigil_action=~\".+\"}:{}",
"groupLabels":{},"commonLabels":{},"commonAnnotations":{},"externalURL":"http://%s","truncatedAlerts":0,
"alerts":[{"status":"firing","labels":{"alertname":"VigilContainerUnhealthy","vigil_action":"restart_container","node":%q,"namespace":%q,"container":%q},
"annotations":{},"startsAt":%q,"endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":%q}]}`,
		alertmanagerAd, nodeName, r.Target.Namespace, chain.SickID, r.AlertStartsAt, r.AlertFingerprint)
	fmt.Fprintf(d.out, "    curl -s -X POST http://%s/api/v1/alerts -d '{... fingerprint %s, startsAt %s ...}'\n", aggregatorHTTP, r.AlertFingerprint, r.AlertStartsAt)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+aggregatorHTTP+"/api/v1/alerts", strings.NewReader(body))
	if err != nil {
		fmt.Fprintf(d.out, "(%v)\n", err)
		return
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		fmt.Fprintf(d.out, "(%v)\n", err)
		return
	}
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	fmt.Fprintf(d.out, "    %s %s\n", resp.Status, strings.TrimSpace(string(answer)))
	d.say("Suppressed as a duplicate, not acted on again (the aggregator's non-zero remediation counters):")
	for _, line := range d.aggregatorSeries(ctx, "vigil_remediations_suppressed_total", "vigil_remediations_total{") {
		if !strings.HasSuffix(line, " 0") {
			fmt.Fprintln(d.out, "    "+line)
		}
	}
	fmt.Fprintf(d.out, "    $ bin/vigilctl --server %s --insecure remediations\n", aggregatorGRPC)
	if out, err := d.chain.Vigilctl(ctx, "remediations"); err == nil {
		d.out.Write(out)
	}
}

// aggregatorSeries returns the aggregator's /metrics lines that start with
// one of prefixes.
func (d *demo) aggregatorSeries(ctx context.Context, prefixes ...string) []string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+aggregatorHTTP+"/metrics", nil)
	if err != nil {
		return []string{err.Error()}
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return []string{err.Error()}
	}
	defer resp.Body.Close()
	var out []string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		for _, p := range prefixes {
			if strings.HasPrefix(sc.Text(), p) {
				out = append(out, sc.Text())
			}
		}
	}
	return out
}
