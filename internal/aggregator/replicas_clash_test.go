package aggregator_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/store"
	"github.com/vigilhq/vigil/internal/store/etcd"
	"github.com/vigilhq/vigil/internal/store/etcd/etcdtest"
)

// A second aggregator with a live replica's id is refused at New, naming
// the id and the live replica's API, and the live replica stays
// registered (the operator's clash left it out of the registry).
func TestReplicaIDClashRefused(t *testing.T) {
	cluster := etcdtest.StartCluster(t, 1)
	rs := startReplicas(t, cluster, 2, 3*time.Second, nil)
	live := rs[1]
	kvs, _, err := live.st.List(context.Background(), "replicas/", 0)
	if err != nil || len(kvs) != 2 {
		t.Fatalf("registry before the clash: %v %v", kvs, err)
	}

	st, err := etcd.New(etcd.Config{Endpoints: cluster.Endpoints(), Prefix: live.prefix, RequestTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, err = aggregator.New(aggregator.Config{
		GRPCListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Insecure: true,
		Registry: prometheus.NewRegistry(), Logger: testLogger(t).With("replica", "impostor"),
		Store: st, Replicated: true, LeaseTTL: 3 * time.Second, AggregatorID: live.id,
	})
	if !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("New with a live replica's id: %v, want a conflict", err)
	}
	for _, want := range []string{`"` + live.id + `"`, "live replica", live.agg.GRPCAddr().String()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not say %q", err, want)
		}
	}
	if !live.registered() {
		t.Fatalf("%s is no longer registered after the refused clash", live.id)
	}
}

// A registration deleted by hand is put back by its replica, under its
// lease.
func TestReplicaRegistrationDeletedIsRestored(t *testing.T) {
	cluster := etcdtest.StartCluster(t, 1)
	r := startReplicas(t, cluster, 1, 3*time.Second, nil)[0]
	ctx := context.Background()
	before, err := r.st.Get(ctx, "replicas/"+r.id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.st.Txn(ctx, nil, []store.Op{store.Delete("replicas/" + r.id)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, r.id+" registered again under its lease", func() bool {
		kv, err := r.st.Get(ctx, "replicas/"+r.id)
		return err == nil && kv.Lease == before.Lease && kv.CreateRevision > before.CreateRevision
	})
}

// A replica that holds nodes but is not in the registry makes a
// fleet-wide read partial instead of silently short.
func TestFleetReadPartialForUnregisteredHolder(t *testing.T) {
	cluster := etcdtest.StartCluster(t, 1)
	rs := startReplicas(t, cluster, 2, 3*time.Second, nil)
	ctx := context.Background()
	lease, err := rs[0].st.Grant(ctx, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rs[0].st.Txn(ctx, nil, []store.Op{store.PutWithLease("nodes/n1/holder", []byte("ghost"), lease)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "GET /api/v1/nodes partial, naming the unregistered holder", func() bool {
		resp, err := http.Get(rs[1].url("/api/v1/nodes"))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK && strings.Contains(resp.Header.Get("Vigil-Partial"), "replica ghost holds 1 nodes but is not registered")
	})
}
