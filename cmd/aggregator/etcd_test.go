package main

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigilhq/vigil/internal/store/etcd/etcdtest"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// TestJournalInEtcd: with --etcd-endpoints the aggregator keeps its journal
// in a real etcd instead of --data-dir: an operator's request is journaled
// there, and a restarted aggregator (no local state at all) lists it.
func TestJournalInEtcd(t *testing.T) {
	cluster := etcdtest.StartCluster(t, 1)
	grpcAddr, httpAddr := freeAddr(t), freeAddr(t)
	args := []string{"--insecure", "--grpc-listen", grpcAddr, "--http-listen", httpAddr,
		"--etcd-endpoints", strings.Join(cluster.Endpoints(), ","), "--etcd-prefix", "/vigil-test/"}
	start := func() (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		var stderr bytes.Buffer
		go func() { done <- run(ctx, args, io.Discard, &stderr) }()
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("run: %v\n%s", err, stderr.String())
			}
		}
	}
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	api := vigilv1.NewVigilClient(conn)
	list := func() []*vigilv1.Remediation {
		deadline := time.Now().Add(20 * time.Second)
		for {
			resp, err := api.ListRemediations(context.Background(), &vigilv1.ListRemediationsRequest{})
			if err == nil {
				return resp.GetRemediations()
			}
			if time.Now().After(deadline) {
				t.Fatalf("ListRemediations: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	stop := start()
	if got := list(); len(got) != 0 {
		t.Fatalf("a new journal lists %d remediations", len(got))
	}
	resp, err := api.RequestRemediation(context.Background(), &vigilv1.RequestRemediationRequest{
		Action: vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART,
		Target: &vigilv1.Target{Node: "n1", Namespace: "default", ContainerId: "web"}, Reason: "etcd test",
	})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetRemediation().GetId()
	stop()

	stop = start()
	defer stop()
	got := list()
	if len(got) != 1 || got[0].GetId() != id || got[0].GetReason() != "etcd test" {
		t.Fatalf("after a restart the journal lists %v, want %s", got, id)
	}
}

// TestEtcdPrefixWithoutNameRefused: an empty --etcd-prefix, or "/", would
// put Vigil's keys at the cluster's top level: refused, naming the flag.
func TestEtcdPrefixWithoutNameRefused(t *testing.T) {
	for _, prefix := range []string{"", "/"} {
		args := []string{"--insecure", "--grpc-listen", freeAddr(t), "--http-listen", freeAddr(t),
			"--etcd-endpoints", "http://127.0.0.1:1", "--etcd-prefix", prefix}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := run(ctx, args, io.Discard, io.Discard)
		cancel()
		if err == nil || !strings.Contains(err.Error(), "--etcd-prefix") || !strings.Contains(err.Error(), "has no name") {
			t.Errorf("--etcd-prefix %q: %v, want refused naming the flag", prefix, err)
		}
	}
}
