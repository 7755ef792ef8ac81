package aggregator_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/aggregator"
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
	agg    *aggregator.Aggregator
	st     *etcd.Store
	cancel context.CancelFunc
	done   chan error
}

// startReplicas starts n aggregators (insecure, loopback) sharing prefix
// of cluster, with a lease TTL of ttl.
func startReplicas(t *testing.T, cluster *etcdtest.Cluster, n int, ttl time.Duration) []*replica {
	t.Helper()
	prefix := fmt.Sprintf("/vigil-replicas-%d/", replicaPrefixes.Add(1))
	var out []*replica
	for i := range n {
		out = append(out, startReplica(t, cluster, prefix, fmt.Sprintf("r%d", i), ttl))
	}
	return out
}

func startReplica(t *testing.T, cluster *etcdtest.Cluster, prefix, id string, ttl time.Duration) *replica {
	t.Helper()
	st, err := etcd.New(etcd.Config{Endpoints: cluster.Endpoints(), Prefix: prefix, RequestTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	agg, err := aggregator.New(aggregator.Config{
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
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{t: t, id: id, agg: agg, st: st, cancel: cancel, done: make(chan error, 1)}
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
	rs := startReplicas(t, cluster, 3, 3*time.Second)
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

	// A replica registered but not answering: the reads say so.
	ghost, _ := json.Marshal(map[string]string{"id": "ghost", "api": "127.0.0.1:1"})
	lease, err := b.st.Grant(context.Background(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.st.Txn(context.Background(), nil, []store.Op{store.PutWithLease("replicas/ghost", ghost, lease)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a partial answer naming the silent replica", func() bool {
		var hdr metadata.MD
		resp, err := b.api().ListNodes(context.Background(), &vigilv1.ListNodesRequest{}, grpc.Header(&hdr))
		return err == nil && len(resp.GetNodes()) == 2 && len(hdr.Get(aggregator.PartialHeader)) == 1 &&
			strings.Contains(hdr.Get(aggregator.PartialHeader)[0], "replica ghost")
	})
	if err := b.st.Revoke(context.Background(), lease); err != nil {
		t.Fatal(err)
	}

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
	moved.send(2, snapshotMsg(plainContainer("web", vigilv1.ContainerState_CONTAINER_STATE_RUNNING, 9)))
	moved.waitAck(2)
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
	rs := startReplicas(t, cluster, 2, 3*time.Second)
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
	if nodeSeries(b.scrape(), "n1") == 0 {
		t.Fatal("r1 does not expose n1")
	}
}
