package aggregator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/remediation"
	"github.com/vigilhq/vigil/internal/store/bolt"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

const testRules = `
max_actions_per_minute: 100
rules:
  - name: restart-unhealthy
    match:
      alertname: VigilContainerUnhealthy
    action: restart_container
    target:
      node: node
      namespace: namespace
      container: container
`

// startRemediating starts an aggregator with a bbolt journal and the test
// rules; dbPath "" makes a new file.
func startRemediating(t *testing.T, dbPath string) (*harness, string) {
	t.Helper()
	if dbPath == "" {
		dbPath = filepath.Join(t.TempDir(), "vigil.db")
	}
	st, err := bolt.Open(dbPath, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rulesPath := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(rulesPath, []byte(testRules), 0o600); err != nil {
		t.Fatal(err)
	}
	rules, err := remediation.NewRuleSet(rulesPath)
	if err != nil {
		t.Fatal(err)
	}
	h := startAggregator(t, func(c *aggregator.Config) {
		c.Store = st
		c.Rules = rules
	})
	// Registered after startAggregator's: runs before it, so the store
	// closes after the aggregator has stopped.
	t.Cleanup(func() { st.Close() })
	return h, dbPath
}

// nextCommand reads the agent's stream until a command arrives.
func (a *testAgent) nextCommand(within time.Duration) *vigilv1.Command {
	a.t.Helper()
	deadline := time.After(within)
	for {
		select {
		case m := <-a.msgs:
			if c := m.GetCommand(); c != nil {
				return c
			}
		case err := <-a.err:
			a.t.Fatalf("%s: stream ended waiting for a command: %v", a.node, err)
		case <-deadline:
			a.t.Fatalf("%s: no command within %s", a.node, within)
		}
	}
}

// noCommand checks that no command arrives for a while (a negative check:
// the wait bounds how long a wrong command would have had to show).
func (a *testAgent) noCommand(within time.Duration) {
	a.t.Helper()
	deadline := time.After(within)
	for {
		select {
		case m := <-a.msgs:
			if c := m.GetCommand(); c != nil {
				a.t.Fatalf("%s: unexpected command %v", a.node, c)
			}
		case <-deadline:
			return
		}
	}
}

func vigilContainer(id string, restarts uint32) *vigilv1.Container {
	c := plainContainer(id, vigilv1.ContainerState_CONTAINER_STATE_RUNNING, 0)
	c.Manager = vigilv1.Manager_MANAGER_VIGIL
	c.RestartCount = restarts
	return c
}

func webhookBody(fingerprint, startsAt, node, container string) string {
	return fmt.Sprintf(`{"version":"4","status":"firing","receiver":"vigil","groupKey":"{}:{alertname=\"VigilContainerUnhealthy\"}",
"groupLabels":{"alertname":"VigilContainerUnhealthy"},"commonLabels":{},"commonAnnotations":{},"externalURL":"http://am","truncatedAlerts":0,
"alerts":[{"status":"firing","labels":{"alertname":"VigilContainerUnhealthy","node":%q,"namespace":"default","container":%q},
"annotations":{},"startsAt":%q,"endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":%q}]}`, node, container, startsAt, fingerprint)
}

func postAlerts(t *testing.T, h *harness, who, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, h.httpsURL("/api/v1/alerts"), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := h.httpsClient(who).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestAlertToCommandOnce: an alert posted to the webhook (as Alertmanager
// would, with the alertmanager role's certificate) becomes one fenced
// command on the node's stream; delivered again it is a duplicate; the
// agent's result is journaled; without a credential nothing is journaled.
func TestAlertToCommandOnce(t *testing.T) {
	h, _ := startRemediating(t, "")
	a := h.mustConnect("n1", "i1")
	a.send(1, snapshotMsg(vigilContainer("web", 2)))
	a.waitAck(1)

	body := webhookBody("fp1", "2026-12-02T10:00:00Z", "n1", "web")
	if code, msg := postAlerts(t, h, "", body); code != http.StatusUnauthorized {
		t.Fatalf("webhook without a credential: %d %s, want 401", code, msg)
	}
	if code, msg := postAlerts(t, h, "alertmanager/am1", `{"version":"3"}`); code != http.StatusBadRequest {
		t.Fatalf("webhook with an unknown version: %d %s, want 400", code, msg)
	}
	if code, msg := postAlerts(t, h, "alertmanager/am1", body); code != http.StatusOK {
		t.Fatalf("webhook: %d %s", code, msg)
	}
	cmd := a.nextCommand(10 * time.Second)
	if cmd.GetAction() != vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART || cmd.GetTarget().GetContainerId() != "web" {
		t.Fatalf("command %v, want a restart of web", cmd)
	}
	if f := cmd.GetFence(); f.GetContainerId() != "web" || f.GetRestartCount() != 2 || f.GetIntentRevision() == 0 {
		t.Errorf("fence %v, want container web, restart count 2 and the intent's revision", f)
	}
	// Alertmanager's retry, and a second replica's delivery of the same
	// firing: one intent.
	for range 2 {
		if code, msg := postAlerts(t, h, "alertmanager/am2", body); code != http.StatusOK {
			t.Fatalf("webhook again: %d %s", code, msg)
		}
	}
	a.noCommand(time.Second)

	a.send(2, &vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_CommandResult{CommandResult: &vigilv1.CommandResult{
		CommandId: cmd.GetId(), Outcome: vigilv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED, Message: "restarted",
	}}})
	a.waitAck(2)
	api := vigilv1.NewVigilClient(h.dial("viewer/v"))
	waitFor(t, 10*time.Second, "the remediation journaled as succeeded", func() bool {
		resp, err := api.ListRemediations(context.Background(), &vigilv1.ListRemediationsRequest{})
		if err != nil {
			t.Fatalf("ListRemediations: %v", err)
		}
		n := 0
		for _, r := range resp.GetRemediations() {
			if r.GetId() == cmd.GetId() && r.GetState() == vigilv1.RemediationState_REMEDIATION_STATE_SUCCEEDED {
				n++
			}
		}
		return n == 1 && len(resp.GetRemediations()) == 1
	})

	// The JSON listing, for a viewer.
	resp, err := h.httpsClient("viewer/v").Get(h.httpsURL("/api/v1/remediations"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var listed struct {
		Remediations []json.RawMessage `json:"remediations"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&listed); err != nil || resp.StatusCode != 200 || len(listed.Remediations) != 1 {
		t.Errorf("GET /api/v1/remediations: %d, %d entries, %v", resp.StatusCode, len(listed.Remediations), err)
	}
}

// TestRemediationRefusesHealthBlamedOnNode: a container whose agent blamed
// its failing probe on the node's network (the gossip cross-check: peers
// reach the pod) shows as unhealthy and blamed in the exposition, and an
// alert to restart it (a rule written without the shipped exclusion) makes
// no command: journaled and counted as suppressed, node_network. Held, not
// claimed: once the agent reports the failure as the container's own, the
// next delivery of the same firing acts.
func TestRemediationRefusesHealthBlamedOnNode(t *testing.T) {
	h, _ := startRemediating(t, "")
	a := h.mustConnect("n1", "i1")
	web := vigilContainer("web", 2)
	web.Health = &vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY, Probe: "tcp", Source: "label",
		Blame: vigilv1.HealthBlame_HEALTH_BLAME_NODE_NETWORK}
	a.send(1, snapshotMsg(web))
	a.waitAck(1)
	const blameSeries = `vigil_container_health_blame{node="n1",namespace="default",pod_namespace="",pod="",container="web",blame="node_network"} 1`
	waitFor(t, 10*time.Second, "the blame in the exposition", func() bool {
		text := scrape(t, h, "")
		return slices.Contains(seriesLines(text, "vigil_container_health_blame"), blameSeries) &&
			slices.Contains(seriesLines(text, "vigil_container_health_status"), `vigil_container_health_status{node="n1",namespace="default",pod_namespace="",pod="",container="web",status="unhealthy"} 1`)
	})

	body := webhookBody("fp-blamed", "2026-12-02T10:00:00Z", "n1", "web")
	if code, msg := postAlerts(t, h, "alertmanager/am1", body); code != http.StatusOK {
		t.Fatalf("webhook: %d %s", code, msg)
	}
	a.noCommand(time.Second)
	api := vigilv1.NewVigilClient(h.dial("viewer/v"))
	resp, err := api.ListRemediations(context.Background(), &vigilv1.ListRemediationsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if rs := resp.GetRemediations(); len(rs) != 1 || rs[0].GetState() != vigilv1.RemediationState_REMEDIATION_STATE_SUPPRESSED ||
		rs[0].GetResult() != "node_network" || !strings.Contains(rs[0].GetMessage(), "node n1's network is broken, not the container") {
		t.Fatalf("journal %v, want one restart suppressed as node_network saying why", rs)
	}
	if got := seriesLines(scrape(t, h, ""), `vigil_remediations_suppressed_total{reason="node_network"}`); len(got) != 1 || !strings.HasSuffix(got[0], " 1") {
		t.Errorf("suppressed counter %v, want 1", got)
	}

	// The agent's recheck no longer blames the node: the failure is the
	// container's, and the still-firing alert's next delivery acts.
	web.Health = &vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY, Probe: "tcp", Source: "label"}
	a.send(2, eventMsg(vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_HEALTH_CHANGED, web))
	a.waitAck(2)
	waitFor(t, 10*time.Second, "the blame gone from the exposition", func() bool {
		return len(seriesLines(scrape(t, h, ""), "vigil_container_health_blame")) == 0
	})
	if code, msg := postAlerts(t, h, "alertmanager/am1", body); code != http.StatusOK {
		t.Fatalf("webhook again: %d %s", code, msg)
	}
	cmd := a.nextCommand(10 * time.Second)
	if cmd.GetAction() != vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART || cmd.GetTarget().GetContainerId() != "web" {
		t.Fatalf("command %v, want a restart of web once the blame is gone", cmd)
	}
}

// TestOperatorRequestThroughTheJournal: an operator's restart reaches the
// node as a fenced command; a viewer's is refused; a dry run journals and
// sends nothing.
func TestOperatorRequestThroughTheJournal(t *testing.T) {
	h, _ := startRemediating(t, "")
	a := h.mustConnect("n1", "i1")
	a.send(1, snapshotMsg(vigilContainer("db", 0)))
	a.waitAck(1)
	req := &vigilv1.RequestRemediationRequest{
		Action: vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART,
		Target: &vigilv1.Target{Node: "n1", Namespace: "default", ContainerId: "db"},
		Reason: "test",
	}
	if _, err := vigilv1.NewVigilClient(h.dial("viewer/v")).RequestRemediation(context.Background(), req); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a viewer's request: %v, want PermissionDenied", err)
	}
	op := vigilv1.NewVigilClient(h.dial("operator/alice"))
	dry := &vigilv1.RequestRemediationRequest{Action: req.Action, Target: req.Target, Reason: "dry", DryRun: true}
	got, err := op.RequestRemediation(context.Background(), dry)
	if err != nil {
		t.Fatal(err)
	}
	if !got.GetRemediation().GetDryRun() {
		t.Errorf("dry run journaled as %v", got.GetRemediation())
	}
	a.noCommand(500 * time.Millisecond)
	got, err = op.RequestRemediation(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	cmd := a.nextCommand(10 * time.Second)
	if cmd.GetId() != got.GetRemediation().GetId() || cmd.GetTarget().GetContainerId() != "db" {
		t.Errorf("command %v for remediation %v", cmd, got.GetRemediation())
	}
	if by := got.GetRemediation().GetRequestedBy(); !strings.Contains(by, "alice") {
		t.Errorf("requested_by %q, want the operator's identity", by)
	}
}

// TestDispatchedCommandNotResent: a command sent on a stream that then
// drops is not sent again on the node's next stream (the agent keeps its
// result and resends that); a command decided while no stream reads it is
// delivered by the next one.
func TestDispatchedCommandNotResent(t *testing.T) {
	h, _ := startRemediating(t, "")
	a := h.mustConnect("n1", "i1")
	a.send(1, snapshotMsg(vigilContainer("app", 1), vigilContainer("other", 0)))
	a.waitAck(1)
	op := vigilv1.NewVigilClient(h.dial("operator/alice"))
	stop := func(id string) string {
		got, err := op.RequestRemediation(context.Background(), &vigilv1.RequestRemediationRequest{
			Action: vigilv1.RemediationAction_REMEDIATION_ACTION_STOP,
			Target: &vigilv1.Target{Node: "n1", Namespace: "default", ContainerId: id},
			Reason: "test",
		})
		if err != nil {
			t.Fatal(err)
		}
		return got.GetRemediation().GetId()
	}
	first := stop("app")
	if c := a.nextCommand(10 * time.Second); c.GetId() != first {
		t.Fatalf("command %s, want %s", c.GetId(), first)
	}
	a.close()
	b := h.mustConnect("n1", "i1")
	b.noCommand(time.Second)
	second := stop("other")
	if c := b.nextCommand(10 * time.Second); c.GetId() != second {
		t.Fatalf("command %s on the new stream, want %s (and never %s again)", c.GetId(), second, first)
	}
}

// TestRequestTargets: operators' targets are resolved against the fleet
// the agents reported: a pod's container by its names (the running one of
// a re-created container), a link in a container's namespace and on the
// host; unknown and ambiguous targets are refused with the reason.
func TestRequestTargets(t *testing.T) {
	h, _ := startRemediating(t, "")
	a := h.mustConnect("n1", "i1")
	pod := func(id string, state vigilv1.ContainerState) *vigilv1.Container {
		c := plainContainer(id, state, 0)
		c.Namespace = "k8s.io"
		c.Manager = vigilv1.Manager_MANAGER_KUBELET
		c.Pod = &vigilv1.PodIdentity{Namespace: "shop", Name: "web-1", ContainerName: "nginx"}
		c.NetnsInode = 77
		return c
	}
	other := vigilContainer("db", 0)
	other.Namespace = "other"
	snap := snapshotMsg(pod("nginx-old", vigilv1.ContainerState_CONTAINER_STATE_STOPPED), pod("nginx-new", vigilv1.ContainerState_CONTAINER_STATE_RUNNING),
		vigilContainer("db", 0), other)
	snap.GetSnapshot().Network = []*vigilv1.NetworkNamespace{
		{Host: true, Interfaces: []*vigilv1.Interface{{Name: "eth0"}}},
		{Inode: 77, Interfaces: []*vigilv1.Interface{{Name: "eth0"}}},
	}
	a.send(1, snap)
	a.waitAck(1)
	op := vigilv1.NewVigilClient(h.dial("operator/alice"))
	ask := func(action vigilv1.RemediationAction, target *vigilv1.Target) (*vigilv1.Remediation, error) {
		resp, err := op.RequestRemediation(context.Background(), &vigilv1.RequestRemediationRequest{Action: action, Target: target, Reason: "test", DryRun: true})
		return resp.GetRemediation(), err
	}
	restart, linkUp := vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART, vigilv1.RemediationAction_REMEDIATION_ACTION_LINK_UP
	r, err := ask(restart, &vigilv1.Target{Node: "n1", PodNamespace: "shop", Pod: "web-1", Container: "nginx"})
	if err != nil || r.GetTarget().GetContainerId() != "nginx-new" {
		t.Errorf("a pod's container by name: %v, %v; want nginx-new, the running one", r.GetTarget(), err)
	}
	r, err = ask(linkUp, &vigilv1.Target{Node: "n1", PodNamespace: "shop", Pod: "web-1", Container: "nginx", Interface: "eth0"})
	if err != nil || r.GetTarget().GetNetnsInode() != 77 {
		t.Errorf("a pod's link: %v, %v; want eth0 in netns 77", r.GetTarget(), err)
	}
	// Unknown and ambiguous targets are journaled as suppressed, with why.
	for _, tc := range []struct {
		target *vigilv1.Target
		action vigilv1.RemediationAction
		why    string
	}{
		{&vigilv1.Target{Node: "n1", Namespace: "default", ContainerId: "gone"}, restart, "no container"},
		{&vigilv1.Target{Node: "n9", Namespace: "default", ContainerId: "db"}, restart, `no node "n9"`},
		{&vigilv1.Target{Node: "n1", ContainerId: "db"}, restart, "2 containers match"},
		{&vigilv1.Target{Node: "n1", PodNamespace: "shop", Pod: "web-1", Container: "nginx", Interface: "eth9"}, linkUp, `no interface "eth9"`},
	} {
		r, err := ask(tc.action, tc.target)
		if err != nil || r.GetState() != vigilv1.RemediationState_REMEDIATION_STATE_SUPPRESSED || r.GetResult() != "target_unknown" ||
			!strings.Contains(r.GetMessage(), tc.why) {
			t.Errorf("%v: %v %s %q, %v; want suppressed as target_unknown saying %q", tc.target, r.GetState(), r.GetResult(), r.GetMessage(), err, tc.why)
		}
	}
}

// TestChangeFeed: WatchEvents carries more than containers' events: a
// node's condition changes, and each remediation decided and ended, also
// from the history (since).
func TestChangeFeed(t *testing.T) {
	h, _ := startRemediating(t, "")
	viewer := vigilv1.NewVigilClient(h.dial("viewer/v"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w, err := viewer.WatchEvents(ctx, &vigilv1.WatchEventsRequest{Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Header(); err != nil {
		t.Fatal(err)
	}
	a := h.mustConnect("n1", "i1")
	a.send(1, snapshotMsg(vigilContainer("app", 0)))
	a.waitAck(1)
	op := vigilv1.NewVigilClient(h.dial("operator/alice"))
	if _, err := op.RequestRemediation(ctx, &vigilv1.RequestRemediationRequest{Action: vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART,
		Target: &vigilv1.Target{Node: "n1", Namespace: "default", ContainerId: "app"}, Reason: "feed"}); err != nil {
		t.Fatal(err)
	}
	cmd := a.nextCommand(10 * time.Second)
	a.send(2, &vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_CommandResult{CommandResult: &vigilv1.CommandResult{
		CommandId: cmd.GetId(), Outcome: vigilv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED}}})
	a.waitAck(2)

	var sawNode, sawPending, sawSucceeded bool
	deadline := time.After(15 * time.Second)
	got := make(chan *vigilv1.WatchEventsResponse)
	go func() {
		for {
			ev, err := w.Recv()
			if err != nil {
				return
			}
			got <- ev
		}
	}()
	for !(sawNode && sawPending && sawSucceeded) {
		select {
		case ev := <-got:
			if n := ev.GetNodeEvent(); n != nil && n.GetCondition() == "Healthy" {
				sawNode = true
			}
			if r := ev.GetRemediation(); r != nil && r.GetId() == cmd.GetId() {
				sawPending = sawPending || r.GetState() == vigilv1.RemediationState_REMEDIATION_STATE_PENDING
				sawSucceeded = sawSucceeded || r.GetState() == vigilv1.RemediationState_REMEDIATION_STATE_SUCCEEDED
			}
		case <-deadline:
			t.Fatalf("feed: node condition %v, remediation pending %v, succeeded %v", sawNode, sawPending, sawSucceeded)
		}
	}
	// The history has them too.
	waitFor(t, 10*time.Second, "the remediation's end in the history", func() bool {
		hctx, hcancel := context.WithTimeout(ctx, time.Second)
		defer hcancel()
		s, err := viewer.WatchEvents(hctx, &vigilv1.WatchEventsRequest{Node: "n1", Since: timestamppb.New(time.Now().Add(-time.Hour))})
		if err != nil {
			return false
		}
		for {
			ev, err := s.Recv()
			if err != nil {
				return false
			}
			if r := ev.GetRemediation(); r != nil && r.GetState() == vigilv1.RemediationState_REMEDIATION_STATE_SUCCEEDED {
				return true
			}
		}
	})
}
