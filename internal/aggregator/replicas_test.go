package aggregator_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/pki"
	"github.com/vigilhq/vigil/internal/remediation"
	"github.com/vigilhq/vigil/internal/store"
	"github.com/vigilhq/vigil/internal/store/etcd"
	"github.com/vigilhq/vigil/internal/store/etcd/etcdtest"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

var replicaPrefixes atomic.Int64

// replica is one aggregator of a replica set on a shared etcd.
type replica struct {
	t      *testing.T
	id     string
	prefix string
	agg    *aggregator.Aggregator
	st     *etcd.Store
	cancel context.CancelFunc
	done   chan error
}

// startReplicas starts n aggregators (insecure, loopback) sharing prefix
// of cluster, with a lease TTL of ttl.
func startReplicas(t *testing.T, cluster *etcdtest.Cluster, n int, ttl time.Duration, mutate func(*aggregator.Config)) []*replica {
	t.Helper()
	prefix := fmt.Sprintf("/vigil-replicas-%d/", replicaPrefixes.Add(1))
	var out []*replica
	for i := range n {
		out = append(out, startReplica(t, cluster, prefix, fmt.Sprintf("r%d", i), ttl, mutate))
	}
	return out
}

func startReplica(t *testing.T, cluster *etcdtest.Cluster, prefix, id string, ttl time.Duration, mutate func(*aggregator.Config)) *replica {
	t.Helper()
	st, err := etcd.New(etcd.Config{Endpoints: cluster.Endpoints(), Prefix: prefix, RequestTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cfg := aggregator.Config{
		GRPCListen:      "127.0.0.1:0",
		HTTPListen:      "127.0.0.1:0",
		Insecure:        true,
		Registry:        prometheus.NewRegistry(),
		AckInterval:     20 * time.Millisecond,
		ShutdownTimeout: 5 * time.Second,
		Logger:          testLogger(t).With("replica", id),
		Store:           st,
		Replicated:      true,
		LeaseTTL:        ttl,
		AggregatorID:    id,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	agg, err := aggregator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{t: t, id: id, prefix: prefix, agg: agg, st: st, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- agg.Run(ctx) }()
	t.Cleanup(r.stop)
	waitFor(t, 20*time.Second, id+" holds a lease and is registered", func() bool {
		l := seriesLines(r.scrape(), "vigil_aggregator_held_nodes")
		return len(l) == 1 && l[0] == "vigil_aggregator_held_nodes 0" && r.registered()
	})
	return r
}

func (r *replica) registered() bool {
	kvs, _, err := r.st.List(context.Background(), "replicas/"+r.id, 0)
	return err == nil && len(kvs) == 1
}

func (r *replica) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil {
			r.t.Errorf("replica %s Run: %v", r.id, err)
		}
	case <-time.After(15 * time.Second):
		r.t.Errorf("replica %s did not stop within 15s", r.id)
	}
	r.st.Close()
}

func (r *replica) url(path string) string { return "http://" + r.agg.HTTPAddr().String() + path }

func (r *replica) scrape() string {
	resp, err := http.Get(r.url("/metrics"))
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func (r *replica) api() vigilv1.VigilClient {
	conn, err := grpc.NewClient(r.agg.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { conn.Close() })
	return vigilv1.NewVigilClient(conn)
}

// connectAgent opens a stream to r as node (insecure: any node) and returns
// it, or the stream's error.
func (r *replica) connectAgent(node, instance string) (*testAgent, error) {
	conn, err := grpc.NewClient(r.agg.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	r.t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	r.t.Cleanup(cancel)
	s, err := vigilv1.NewAgentGatewayClient(conn).Connect(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	if err := s.Send(&vigilv1.AgentMessage{SentAt: timestamppb.Now(), Body: &vigilv1.AgentMessage_Hello{Hello: &vigilv1.Hello{
		NodeName: node, InstanceId: instance, AgentVersion: "test", ProtocolVersion: 1,
	}}}); err != nil && !errors.Is(err, io.EOF) {
		cancel()
		return nil, err
	}
	first, err := s.Recv()
	if err != nil {
		cancel()
		return nil, err
	}
	a := &testAgent{t: r.t, node: node, stream: s, ack: first.GetHelloAck(), cancel: cancel,
		msgs: make(chan *vigilv1.AggregatorMessage, 1024), err: make(chan error, 1)}
	go func() {
		for {
			m, err := s.Recv()
			if err != nil {
				a.err <- err
				return
			}
			a.msgs <- m
		}
	}()
	return a, nil
}

// nodeSeries counts the lines of node in an exposition.
func nodeSeries(text, node string) int {
	n := 0
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "vigil_") && strings.Contains(line, `node="`+node+`"`) {
			n++
		}
	}
	return n
}

// TestReplicasHoldNodes: three aggregators on a 3-member etcd. A node's
// stream is held by one replica; another refuses it (Unavailable, naming
// the holder); only the holder exposes the node's series; every replica
// lists the whole fleet; one replica is the leader; when the stream ends
// the node moves to another replica with its cumulative counters and the
// first one stops exposing it.
func TestReplicasHoldNodes(t *testing.T) {
	cluster := etcdtest.StartCluster(t, 3)
	rs := startReplicas(t, cluster, 3, 3*time.Second, nil)
	a, b, c := rs[0], rs[1], rs[2]

	n1, err := a.connectAgent("n1", "i1")
	if err != nil {
		t.Fatal(err)
	}
	n1.send(1, snapshotMsg(plainContainer("web", vigilv1.ContainerState_CONTAINER_STATE_RUNNING, 7)))
	n1.waitAck(1)
	n2, err := c.connectAgent("n2", "i1")
	if err != nil {
		t.Fatal(err)
	}
	n2.send(1, snapshotMsg(plainContainer("db", vigilv1.ContainerState_CONTAINER_STATE_RUNNING, 0)))
	n2.waitAck(1)

	_, err = b.connectAgent("n1", "i1")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "held by aggregator replica r0") {
		t.Fatalf("a second replica answered a held node with %v, want Unavailable naming r0", err)
	}
	// The refusal tells when r0's lease ends at the latest (RetryInfo): the
	// live holder renews every TTL/3, so its lease has (0, TTL] left, plus
	// the second etcd's whole-second answer costs.
	if d := retryDelay(err); d <= 0 || d > 3*time.Second+time.Second {
		t.Fatalf("the refusal's retry delay is %v, want in (0, 4s] (TTL 3s + 1s): %v", d, err)
	}
	if l := seriesLines(a.scrape(), "vigil_aggregator_held_nodes"); len(l) != 1 || l[0] != "vigil_aggregator_held_nodes 1" {
		t.Fatalf("r0 does not count its held node:\n%s", seriesLines(a.scrape(), "vigil_aggregator_held_nodes"))
	}

	// Exposition: each node on its holder only.
	waitFor(t, 10*time.Second, "series on their holders", func() bool {
		return nodeSeries(a.scrape(), "n1") > 0 && nodeSeries(b.scrape(), "n1") == 0 && nodeSeries(c.scrape(), "n1") == 0 &&
			nodeSeries(c.scrape(), "n2") > 0 && nodeSeries(a.scrape(), "n2") == 0
	})

	// One leader.
	waitFor(t, 10*time.Second, "one leader", func() bool {
		leaders := 0
		for _, r := range rs {
			if l := seriesLines(r.scrape(), "vigil_aggregator_leader"); len(l) == 1 && l[0] == "vigil_aggregator_leader 1" {
				leaders++
			}
		}
		if leaders != 1 {
			for _, r := range rs {
				t.Logf("%s: %v", r.id, seriesLines(r.scrape(), "vigil_aggregator_leader"))
			}
		}
		return leaders == 1
	})

	// The whole fleet from any replica: gRPC and /api/v1.
	for _, r := range rs {
		var hdr metadata.MD
		resp, err := r.api().ListNodes(context.Background(), &vigilv1.ListNodesRequest{}, grpc.Header(&hdr))
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, n := range resp.GetNodes() {
			names = append(names, n.GetName()+"="+n.GetState().String())
		}
		if strings.Join(names, ",") != "n1=NODE_STATE_UP,n2=NODE_STATE_UP" || len(hdr.Get(aggregator.PartialHeader)) != 0 {
			t.Fatalf("%s lists nodes %v (partial %v), want n1 and n2 up", r.id, names, hdr.Get(aggregator.PartialHeader))
		}
		cs, err := r.api().ListContainers(context.Background(), &vigilv1.ListContainersRequest{PageSize: 1})
		if err != nil || len(cs.GetContainers()) != 1 || cs.GetContainers()[0].GetNode() != "n1" || cs.GetNextPageToken() == "" {
			t.Fatalf("%s: first page of containers: %v %v", r.id, cs, err)
		}
		cs, err = r.api().ListContainers(context.Background(), &vigilv1.ListContainersRequest{PageSize: 1, PageToken: cs.GetNextPageToken()})
		if err != nil || len(cs.GetContainers()) != 1 || cs.GetContainers()[0].GetNode() != "n2" || cs.GetNextPageToken() != "" {
			t.Fatalf("%s: second page of containers: %v %v", r.id, cs, err)
		}
		if _, err := r.api().GetContainer(context.Background(), &vigilv1.GetContainerRequest{Node: "n2", Namespace: "default", Id: "db"}); err != nil {
			t.Fatalf("%s: GetContainer of n2's db: %v", r.id, err)
		}
		httpResp, err := http.Get(r.url("/api/v1/containers"))
		if err != nil {
			t.Fatal(err)
		}
		var list struct {
			Containers []struct{ Node string } `json:"containers"`
		}
		err = json.NewDecoder(httpResp.Body).Decode(&list)
		httpResp.Body.Close()
		if err != nil || len(list.Containers) != 2 {
			t.Fatalf("%s: /api/v1/containers: %+v %v", r.id, list, err)
		}
	}

	// Live events of a node another replica holds reach a watcher.
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	watch, err := c.api().WatchEvents(wctx, &vigilv1.WatchEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Header(); err != nil {
		t.Fatal(err)
	}
	n1.send(2, eventMsg(vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED, plainContainer("web", vigilv1.ContainerState_CONTAINER_STATE_STOPPED, 8)))
	n1.waitAck(2)
	got := make(chan *vigilv1.WatchEventsResponse, 1)
	go func() {
		for {
			m, err := watch.Recv()
			if err != nil {
				return
			}
			if m.GetEvent() != nil {
				got <- m
				return
			}
		}
	}()
	select {
	case m := <-got:
		if m.GetNode() != "n1" || m.GetEvent().GetType() != vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED {
			t.Fatalf("r2's watcher got %v, want n1's exit", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("r2's watcher got no event of n1 (held by r0) within 10s")
	}
	wcancel()

	// A replica registered but not answering: the reads say so.
	ghost, _ := json.Marshal(map[string]string{"id": "ghost", "api": "127.0.0.1:1"})
	lease, err := b.st.Grant(context.Background(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.st.Txn(context.Background(), nil, []store.Op{store.PutWithLease("replicas/ghost", ghost, lease)}); err != nil {
		t.Fatal(err)
	}
	// Its peer error series is there at 0 before any read fails, beside
	// those of the other replicas (whatever they count).
	waitFor(t, 30*time.Second, "r1's peer error series of ghost at 0", func() bool {
		var got []string
		for _, l := range seriesLines(b.scrape(), "vigil_aggregator_peer_errors_total") {
			if !strings.Contains(l, `"ghost"`) {
				l = l[:strings.LastIndexByte(l, ' ')]
			}
			got = append(got, l)
		}
		return slices.Equal(got, []string{
			`vigil_aggregator_peer_errors_total{replica="ghost"} 0`,
			`vigil_aggregator_peer_errors_total{replica="r0"}`,
			`vigil_aggregator_peer_errors_total{replica="r2"}`,
		})
	})
	waitFor(t, 30*time.Second, "a partial answer naming the silent replica", func() bool {
		var hdr metadata.MD
		resp, err := b.api().ListNodes(context.Background(), &vigilv1.ListNodesRequest{}, grpc.Header(&hdr))
		return err == nil && len(resp.GetNodes()) == 2 && len(hdr.Get(aggregator.PartialHeader)) == 1 &&
			strings.Contains(hdr.Get(aggregator.PartialHeader)[0], "replica ghost")
	})
	if err := b.st.Revoke(context.Background(), lease); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "ghost's peer error series gone with it", func() bool {
		return !strings.Contains(b.scrape(), `replica="ghost"`)
	})

	// n1 leaves r0 and comes to r1 (its counter is cumulative: 7 exits,
	// then 9), r0 forgets it.
	n1.close()
	var moved *testAgent
	waitFor(t, 10*time.Second, "n1 admitted by r1", func() bool {
		moved, err = b.connectAgent("n1", "i1")
		return err == nil
	})
	if !moved.ack.GetSnapshotRequired() {
		t.Fatal("a node claimed from another replica is not asked for a snapshot")
	}
	moved.send(3, snapshotMsg(plainContainer("web", vigilv1.ContainerState_CONTAINER_STATE_RUNNING, 9)))
	moved.waitAck(3)
	waitFor(t, 10*time.Second, "n1 exposed by r1 only, with its cumulative exits", func() bool {
		exits := seriesLines(b.scrape(), "vigil_container_exits_total")
		return nodeSeries(a.scrape(), "n1") == 0 && nodeSeries(c.scrape(), "n1") == 0 &&
			len(exits) == 1 && strings.HasSuffix(exits[0], " 9")
	})
}

// TestReplicaLeaseLost: when the store ends a replica's lease, the replica
// drops every stream it held at once (Unavailable) and stops exposing their
// nodes; the agent is then served by another replica; the replica takes a
// new lease by itself.
func TestReplicaLeaseLost(t *testing.T) {
	cluster := etcdtest.StartCluster(t, 3)
	rs := startReplicas(t, cluster, 2, 3*time.Second, nil)
	a, b := rs[0], rs[1]
	n1, err := a.connectAgent("n1", "i1")
	if err != nil {
		t.Fatal(err)
	}
	n1.send(1, snapshotMsg(plainContainer("web", vigilv1.ContainerState_CONTAINER_STATE_RUNNING, 3)))
	n1.waitAck(1)
	kv, err := a.st.Get(context.Background(), "nodes/n1/holder")
	if err != nil || string(kv.Value) != "r0" || kv.Lease == store.NoLease {
		t.Fatalf("holder key of n1: %+v %v", kv, err)
	}
	if err := b.st.Revoke(context.Background(), kv.Lease); err != nil {
		t.Fatal(err)
	}
	if err := n1.waitErr(); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "lost its lease") {
		t.Fatalf("stream of a replica whose lease ended: %v, want Unavailable (lease lost)", err)
	}
	waitFor(t, 10*time.Second, "r0 no longer exposes n1", func() bool { return nodeSeries(a.scrape(), "n1") == 0 })
	waitFor(t, 10*time.Second, "n1 served by r1", func() bool {
		n, err := b.connectAgent("n1", "i1")
		if err != nil {
			return false
		}
		n.send(1, snapshotMsg(plainContainer("web", vigilv1.ContainerState_CONTAINER_STATE_RUNNING, 3)))
		n.waitAck(1)
		return true
	})
	waitFor(t, 10*time.Second, "r0 registered again with a new lease", a.registered)
	waitFor(t, 10*time.Second, "one leader after the lease's end", func() bool {
		leaders := 0
		for _, r := range rs {
			if l := seriesLines(r.scrape(), "vigil_aggregator_leader"); len(l) == 1 && l[0] == "vigil_aggregator_leader 1" {
				leaders++
			}
		}
		return leaders == 1
	})
	if nodeSeries(b.scrape(), "n1") == 0 {
		t.Fatal("r1 does not expose n1")
	}
}

// withTestRules gives every replica the test rules (restart an unhealthy
// container, 100 actions a minute across the fleet).
func withTestRules(t *testing.T) func(*aggregator.Config) {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, []byte(testRules), 0o600); err != nil {
		t.Fatal(err)
	}
	return func(c *aggregator.Config) {
		rs, err := remediation.NewRuleSet(path)
		if err != nil {
			t.Fatal(err)
		}
		c.Rules = rs
	}
}

func (r *replica) postAlerts(body string) (int, string) {
	resp, err := http.Post(r.url("/api/v1/alerts"), "application/json", strings.NewReader(body))
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestReplicasRemediateAcrossReplicas: an alert posted to one replica
// restarts a container on a node another replica holds (the command goes
// through the node's outbox to its holder), once, whichever replicas the
// same firing is posted to; the result is journaled and listed by all.
func TestReplicasRemediateAcrossReplicas(t *testing.T) {
	cluster := etcdtest.StartCluster(t, 3)
	rs := startReplicas(t, cluster, 3, 3*time.Second, withTestRules(t))
	a, b, c := rs[0], rs[1], rs[2]
	n1, err := a.connectAgent("n1", "i1")
	if err != nil {
		t.Fatal(err)
	}
	n1.send(1, snapshotMsg(vigilContainer("web", 2)))
	n1.waitAck(1)

	body := webhookBody("fp-web", time.Now().Add(-time.Minute).UTC().Format(time.RFC3339Nano), "n1", "web")
	if code, msg := b.postAlerts(body); code != http.StatusOK || !strings.Contains(msg, `"acted":1`) {
		t.Fatalf("webhook on r1: %d %s", code, msg)
	}
	cmd := n1.nextCommand(10 * time.Second)
	if cmd.GetAction() != vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART || cmd.GetTarget().GetContainerId() != "web" || cmd.GetFence().GetRestartCount() != 2 {
		t.Fatalf("command %v, want a restart of web fenced at restart count 2", cmd)
	}
	for _, r := range []*replica{a, c} {
		if code, msg := r.postAlerts(body); code != http.StatusOK {
			t.Fatalf("webhook on %s: %d %s", r.id, code, msg)
		}
	}
	n1.noCommand(time.Second)
	n1.send(2, &vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_CommandResult{CommandResult: &vigilv1.CommandResult{
		CommandId: cmd.GetId(), Outcome: vigilv1.CommandOutcome_COMMAND_OUTCOME_SUCCEEDED, Message: "restarted",
	}}})
	n1.waitAck(2)
	waitFor(t, 10*time.Second, "one remediation, succeeded, listed by r2", func() bool {
		resp, err := c.api().ListRemediations(context.Background(), &vigilv1.ListRemediationsRequest{})
		return err == nil && len(resp.GetRemediations()) == 1 && resp.GetRemediations()[0].GetId() == cmd.GetId() &&
			resp.GetRemediations()[0].GetState() == vigilv1.RemediationState_REMEDIATION_STATE_SUCCEEDED
	})
}

// TestReplicasQuorumLoss: with one etcd member of three down nothing
// changes; with two down, ingest and exposition go on on the replica
// holding the node, webhooks are refused (503) and counted as suppressed
// with reason store_unavailable, and once the members are back the next
// delivery of the alert acts, on the same stream (the lease survived).
func TestReplicasQuorumLoss(t *testing.T) {
	cluster := etcdtest.StartCluster(t, 3)
	rs := startReplicas(t, cluster, 2, 3*time.Second, withTestRules(t))
	a, b := rs[0], rs[1]
	n1, err := a.connectAgent("n1", "i1")
	if err != nil {
		t.Fatal(err)
	}
	n1.send(1, snapshotMsg(vigilContainer("web", 0), vigilContainer("api", 0)))
	n1.waitAck(1)

	// One member down: an alert acts as before.
	cluster.Kill(2)
	body := webhookBody("fp-web", time.Now().Add(-time.Minute).UTC().Format(time.RFC3339Nano), "n1", "web")
	waitFor(t, 20*time.Second, "webhook accepted with one member down", func() bool {
		code, _ := b.postAlerts(body)
		return code == http.StatusOK
	})
	if cmd := n1.nextCommand(10 * time.Second); cmd.GetTarget().GetContainerId() != "web" {
		t.Fatalf("command %v, want web's restart", cmd)
	}

	// Two down: no quorum.
	cluster.Kill(1)
	seq := uint64(2)
	for range 20 {
		n1.send(seq, eventMsg(vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_UPDATED, vigilContainer("api", 0)))
		seq++
	}
	n1.waitAck(seq - 1)
	api := webhookBody("fp-api", time.Now().Add(-time.Minute).UTC().Format(time.RFC3339Nano), "n1", "api")
	waitFor(t, 30*time.Second, "webhook refused without quorum, counted as store_unavailable", func() bool {
		code, _ := b.postAlerts(api)
		return code == http.StatusServiceUnavailable &&
			len(seriesLines(b.scrape(), `vigil_remediations_suppressed_total{reason="store_unavailable"}`)) == 1 &&
			!strings.HasSuffix(seriesLines(b.scrape(), `vigil_remediations_suppressed_total{reason="store_unavailable"}`)[0], " 0")
	})
	if nodeSeries(a.scrape(), "n1") == 0 {
		t.Fatal("r0 stopped exposing n1 without quorum")
	}
	n1.send(seq, eventMsg(vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_UPDATED, vigilContainer("api", 0)))
	n1.waitAck(seq)
	seq++

	// Back: the next delivery acts, on the same stream.
	cluster.Restart(1)
	cluster.Restart(2)
	waitFor(t, 60*time.Second, "webhook accepted once quorum is back", func() bool {
		code, _ := b.postAlerts(api)
		return code == http.StatusOK
	})
	if cmd := n1.nextCommand(20 * time.Second); cmd.GetTarget().GetContainerId() != "api" {
		t.Fatalf("command %v, want api's restart", cmd)
	}
	n1.send(seq, eventMsg(vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_UPDATED, vigilContainer("api", 0)))
	n1.waitAck(seq)
}

// TestReplicasFleetWideWithTLS: with mutual TLS, each replica's serving
// certificate has a viewer identity and serves as its client certificate
// toward the others: a viewer's ListNodes on one replica shows the node
// another holds, and a replica without such credentials says the answer is
// partial.
func TestReplicasFleetWideWithTLS(t *testing.T) {
	cluster := etcdtest.StartCluster(t, 1)
	ca, err := pki.NewCA("vigil-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := func(id pki.Identity) pki.Files {
		f, err := ca.WriteIdentity(dir, string(id.Role)+"_"+id.Name, id)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	withTLS := func(peer bool) func(*aggregator.Config) {
		return func(c *aggregator.Config) {
			f := files(pki.Identity{Role: pki.RoleViewer, Name: "aggregator-" + c.AggregatorID})
			tc, err := pki.ServerConfig(f)
			if err != nil {
				t.Fatal(err)
			}
			c.TLS, c.Insecure = tc, false
			if peer {
				if c.PeerTLS, err = pki.ClientConfig(f, ""); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	prefix := fmt.Sprintf("/vigil-replicas-%d/", replicaPrefixes.Add(1))
	r0 := startReplica(t, cluster, prefix, "r0", 3*time.Second, withTLS(true))
	r1 := startReplica(t, cluster, prefix, "r1", 3*time.Second, withTLS(true))
	r2 := startReplica(t, cluster, prefix, "r2", 3*time.Second, withTLS(false))
	dial := func(r *replica, id pki.Identity) *grpc.ClientConn {
		tc, err := pki.ClientConfig(files(id), "localhost")
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(r.agg.GRPCAddr().String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := vigilv1.NewAgentGatewayClient(dial(r0, pki.NodeIdentity("n1"))).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_Hello{Hello: &vigilv1.Hello{NodeName: "n1", InstanceId: "i1", ProtocolVersion: 1}}}); err != nil {
		t.Fatal(err)
	}
	if m, err := s.Recv(); err != nil || m.GetHelloAck() == nil {
		t.Fatalf("hello: %v %v", m, err)
	}
	viewer := pki.Identity{Role: pki.RoleViewer, Name: "v"}
	waitFor(t, 10*time.Second, "r1 lists n1, held by r0, over mTLS", func() bool {
		var hdr metadata.MD
		resp, err := vigilv1.NewVigilClient(dial(r1, viewer)).ListNodes(context.Background(), &vigilv1.ListNodesRequest{}, grpc.Header(&hdr))
		return err == nil && len(resp.GetNodes()) == 1 && resp.GetNodes()[0].GetName() == "n1" && len(hdr.Get(aggregator.PartialHeader)) == 0
	})
	var hdr metadata.MD
	resp, err := vigilv1.NewVigilClient(dial(r2, viewer)).ListNodes(context.Background(), &vigilv1.ListNodesRequest{}, grpc.Header(&hdr))
	if err != nil || len(resp.GetNodes()) != 0 || len(hdr.Get(aggregator.PartialHeader)) != 1 ||
		!strings.Contains(hdr.Get(aggregator.PartialHeader)[0], "no client credentials") {
		t.Fatalf("a replica without peer credentials: %v, partial %v, %v", resp.GetNodes(), hdr.Get(aggregator.PartialHeader), err)
	}
}

const budgetRules = `
max_actions_per_minute: 10
max_nodes_in_flight: 100%
storm_guard:
  share: 0
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

// TestReplicasFleetBudget: 100 alerts on 100 containers of four nodes held
// by three replicas, posted to the three replicas at once, make exactly the
// 10 actions of the fleet-wide budget (max_actions_per_minute: 10); the 90
// others are suppressed for the budget.
func TestReplicasFleetBudget(t *testing.T) {
	cluster := etcdtest.StartCluster(t, 3)
	path := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, []byte(budgetRules), 0o600); err != nil {
		t.Fatal(err)
	}
	rs := startReplicas(t, cluster, 3, 3*time.Second, func(c *aggregator.Config) {
		rules, err := remediation.NewRuleSet(path)
		if err != nil {
			t.Fatal(err)
		}
		c.Rules = rules
	})
	var agents []*testAgent
	for i := range 4 {
		a, err := rs[i%3].connectAgent(fmt.Sprintf("n%d", i), "i1")
		if err != nil {
			t.Fatal(err)
		}
		var cs []*vigilv1.Container
		for j := range 25 {
			cs = append(cs, vigilContainer(fmt.Sprintf("c%02d", j), 0))
		}
		a.send(1, snapshotMsg(cs...))
		a.waitAck(1)
		agents = append(agents, a)
	}
	// Every replica sees the whole fleet before the storm.
	for _, r := range rs {
		waitFor(t, 10*time.Second, r.id+" lists 100 containers", func() bool {
			resp, err := r.api().ListContainers(context.Background(), &vigilv1.ListContainersRequest{PageSize: 1000})
			return err == nil && len(resp.GetContainers()) == 100
		})
	}
	startsAt := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339Nano)
	type summary struct{ Acted, Suppressed int }
	sums := make(chan summary, 100)
	sem := make(chan struct{}, 12)
	for i := range 100 {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			body := webhookBody(fmt.Sprintf("fp-%03d", i), startsAt, fmt.Sprintf("n%d", i%4), fmt.Sprintf("c%02d", i/4))
			for attempt := 0; ; attempt++ {
				code, msg := rs[i%3].postAlerts(body)
				if code == http.StatusServiceUnavailable && attempt < 50 {
					time.Sleep(50 * time.Millisecond)
					continue // contention: Alertmanager would retry
				}
				var s summary
				if code != http.StatusOK || json.Unmarshal([]byte(msg), &s) != nil {
					t.Errorf("webhook %d: %d %s", i, code, msg)
				}
				sums <- s
				return
			}
		}()
	}
	acted, suppressed := 0, 0
	for range 100 {
		s := <-sums
		acted += s.Acted
		suppressed += s.Suppressed
	}
	if acted != 10 || suppressed != 90 {
		t.Fatalf("100 alerts across 3 replicas: %d acted, %d suppressed; want 10 and 90", acted, suppressed)
	}
	got := 0
	deadline := time.Now().Add(15 * time.Second)
	for got < 10 && time.Now().Before(deadline) {
		for _, a := range agents {
			select {
			case m := <-a.msgs:
				if m.GetCommand() != nil {
					got++
				}
			default:
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, a := range agents {
		a.noCommand(300 * time.Millisecond)
	}
	if got != 10 {
		t.Fatalf("the agents got %d commands, want 10", got)
	}
}

// retryDelay is the RetryInfo delay of a gRPC error (0: none).
func retryDelay(err error) time.Duration {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return 0
}
