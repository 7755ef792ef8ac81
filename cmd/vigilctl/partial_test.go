package main

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/store"
	"github.com/vigilhq/vigil/internal/store/etcd"
	"github.com/vigilhq/vigil/internal/store/etcd/etcdtest"
)

// TestPartialAnswerWarns: against a real aggregator replica on etcd, a
// whole answer prints no warning; once a registered replica cannot be
// reached (an entry whose address nothing serves), the answer comes with
// the vigil-partial header and vigilctl says so in one line on stderr,
// naming the replica, and not on stdout (the answer, for scripts).
func TestPartialAnswerWarns(t *testing.T) {
	if partialHeader != aggregator.PartialHeader {
		t.Fatalf("partialHeader %q, the aggregator sets %q", partialHeader, aggregator.PartialHeader)
	}
	cluster := etcdtest.StartCluster(t, 1)
	st, err := etcd.New(etcd.Config{Endpoints: cluster.Endpoints(), Prefix: "/vigilctl-partial/", RequestTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	agg, ctx, _ := runAggregator(t, aggregator.Config{GRPCListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Insecure: true,
		Registry: prometheus.NewRegistry(), ShutdownTimeout: 2 * time.Second, Logger: slog.New(slog.DiscardHandler),
		Store: st, Replicated: true, LeaseTTL: 3 * time.Second, AggregatorID: "r0"})
	addr := agg.GRPCAddr().String()

	_, stderr, err := runTest(ctx, "--server", addr, "--insecure", "nodes")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(stderr, "partial") {
		t.Fatalf("a whole answer warns: %s", stderr)
	}
	if _, err := st.Txn(ctx, nil, []store.Op{store.Put("replicas/ghost", []byte(`{"id":"ghost","api":"127.0.0.1:1"}`))}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		stdout, stderr, err := runTest(ctx, "--server", addr, "--insecure", "nodes")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(stderr, "vigilctl: warning: the answer is partial") {
			if !strings.Contains(stderr, "ghost") || strings.Count(stderr, "partial") != 1 {
				t.Fatalf("the warning does not name the missing replica once: %q", stderr)
			}
			if strings.Contains(stdout, "partial") {
				t.Fatalf("the warning went to stdout: %q", stdout)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no partial warning within 30s of an unreachable replica's registration; stderr %q", stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
