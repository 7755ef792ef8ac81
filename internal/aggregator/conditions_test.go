package aggregator_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

func peerViewMsg(observer string, peers map[string]vigilv1.PeerState) *vigilv1.AgentMessage {
	v := &vigilv1.PeerView{Observer: observer}
	for name, st := range peers {
		v.Peers = append(v.Peers, &vigilv1.PeerStatus{Name: name, State: st, Since: timestamppb.Now()})
	}
	return &vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_PeerView{PeerView: v}}
}

// nodeCondition reads a node's condition through the Vigil API.
func nodeCondition(t *testing.T, api vigilv1.VigilClient, node string) (string, string) {
	t.Helper()
	resp, err := api.ListNodes(context.Background(), &vigilv1.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range resp.GetNodes() {
		if n.GetName() == node {
			return n.GetCondition(), n.GetConditionReason()
		}
	}
	return "", ""
}

// TestNodeConditionsFromPeers: a node whose stream ends is
// AggregatorPartitioned while a peer still reaches it, and NodeDown once
// two peers agree it is dead; the conditions show in the API and in
// vigil_node_condition, and the dead node's remediation is suppressed.
func TestNodeConditionsFromPeers(t *testing.T) {
	h := startAggregator(t, nil)
	api := vigilv1.NewVigilClient(h.dial("viewer/v"))
	a1, a2, a3 := h.mustConnect("n1", "i1"), h.mustConnect("n2", "i2"), h.mustConnect("n3", "i3")
	alive := vigilv1.PeerState_PEER_STATE_ALIVE
	a2.send(1, peerViewMsg("n2", map[string]vigilv1.PeerState{"n1": alive, "n3": alive}))
	a3.send(1, peerViewMsg("n3", map[string]vigilv1.PeerState{"n1": alive, "n2": alive}))
	a2.waitAck(1)
	a3.waitAck(1)
	waitFor(t, 10*time.Second, "n1 Healthy", func() bool { c, _ := nodeCondition(t, api, "n1"); return c == "Healthy" })
	text := scrape(t, h, "")
	if !strings.Contains(text, `vigil_node_condition{node="n1",condition="Healthy",status="true"} 1`) ||
		!strings.Contains(text, `vigil_node_condition{node="n1",condition="NodeDown",status="false"} 1`) {
		t.Fatalf("vigil_node_condition of a healthy node:\n%s", strings.Join(seriesLines(text, "vigil_node_condition"), "\n"))
	}

	// n1's stream ends; n2 still reaches it.
	a1.close()
	waitFor(t, 10*time.Second, "n1 AggregatorPartitioned", func() bool {
		c, _ := nodeCondition(t, api, "n1")
		return c == "AggregatorPartitioned"
	})
	// Then both peers see it dead.
	dead := vigilv1.PeerState_PEER_STATE_DEAD
	a2.send(2, peerViewMsg("n2", map[string]vigilv1.PeerState{"n1": dead, "n3": alive}))
	a2.waitAck(2)
	_, reason := nodeCondition(t, api, "n1")
	if c, _ := nodeCondition(t, api, "n1"); c != "AggregatorPartitioned" && c != "Unknown" {
		t.Fatalf("one peer seeing n1 dead, the other alive: %s (%s)", c, reason)
	}
	a3.send(2, peerViewMsg("n3", map[string]vigilv1.PeerState{"n1": dead, "n2": alive}))
	a3.waitAck(2)
	waitFor(t, 10*time.Second, "n1 NodeDown", func() bool { c, _ := nodeCondition(t, api, "n1"); return c == "NodeDown" })
	_, reason = nodeCondition(t, api, "n1")
	if !strings.Contains(reason, "n2") || !strings.Contains(reason, "n3") {
		t.Errorf("NodeDown's reason %q does not name the peers", reason)
	}
	waitFor(t, 10*time.Second, "NodeDown in /metrics", func() bool {
		return strings.Contains(scrape(t, h, ""), `vigil_node_condition{node="n1",condition="NodeDown",status="true"} 1`)
	})
	// The peers themselves stay healthy.
	if c, _ := nodeCondition(t, api, "n2"); c != "Healthy" {
		t.Errorf("n2: %s", c)
	}
}

// TestNodeDownNotHeldByADeadObserver: e stops, then c is killed. e's last
// view (sent before it stopped, still fresh) says c alive; it must not keep
// c AggregatorPartitioned: c is NodeDown as soon as a and b, whose streams
// are up, agree, not once e's report ages out (30 s).
func TestNodeDownNotHeldByADeadObserver(t *testing.T) {
	h := startAggregator(t, nil)
	api := vigilv1.NewVigilClient(h.dial("viewer/v"))
	a, b := h.mustConnect("a", "ia"), h.mustConnect("b", "ib")
	c, e := h.mustConnect("c", "ic"), h.mustConnect("e", "ie")
	alive, dead := vigilv1.PeerState_PEER_STATE_ALIVE, vigilv1.PeerState_PEER_STATE_DEAD
	all := map[string]vigilv1.PeerState{"a": alive, "b": alive, "c": alive, "e": alive}
	for _, s := range []struct {
		name string
		ag   *testAgent
	}{{"a", a}, {"b", b}, {"c", c}, {"e", e}} {
		s.ag.send(1, peerViewMsg(s.name, all))
		s.ag.waitAck(1)
	}
	waitFor(t, 10*time.Second, "c Healthy", func() bool { cond, _ := nodeCondition(t, api, "c"); return cond == "Healthy" })

	e.close()
	a.send(2, peerViewMsg("a", map[string]vigilv1.PeerState{"b": alive, "c": alive, "e": dead}))
	b.send(2, peerViewMsg("b", map[string]vigilv1.PeerState{"a": alive, "c": alive, "e": dead}))
	c.send(2, peerViewMsg("c", map[string]vigilv1.PeerState{"a": alive, "b": alive, "e": dead}))
	a.waitAck(2)
	b.waitAck(2)
	c.waitAck(2)
	waitFor(t, 10*time.Second, "e NodeDown", func() bool { cond, _ := nodeCondition(t, api, "e"); return cond == "NodeDown" })

	c.close()
	a.send(3, peerViewMsg("a", map[string]vigilv1.PeerState{"b": alive, "c": dead, "e": dead}))
	b.send(3, peerViewMsg("b", map[string]vigilv1.PeerState{"a": alive, "c": dead, "e": dead}))
	a.waitAck(3)
	b.waitAck(3)
	// Well within the 30 s for which e's report would still count.
	waitFor(t, 10*time.Second, "c NodeDown", func() bool { cond, _ := nodeCondition(t, api, "c"); return cond == "NodeDown" })
	if _, reason := nodeCondition(t, api, "c"); !strings.Contains(reason, "(a, b)") || !strings.Contains(reason, "not counted") {
		t.Errorf("c's reason %q: want a and b agreeing, e not counted", reason)
	}
}
