package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/pki"
	"github.com/vigilhq/vigil/internal/store/etcd/etcdtest"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// TestPeerServerName: replicas whose serving certificates name only a
// Service name (no IP, no localhost: what a certificate issued before the
// pod's IP is known carries) reach each other by IP (--advertise-api) when
// --peer-server-name gives that name: a node held by r0 is listed by r1
// with no partial answer. A replica without the flag verifies the peer's
// certificate against the IP and says its answer is partial.
func TestPeerServerName(t *testing.T) {
	const svc = "vigil-aggregator.vigil-system.svc"
	cluster := etcdtest.StartCluster(t, 1)
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	write := func(name string, id pki.Identity, dns []string, ips []net.IP) pki.Files {
		certPEM, keyPEM, err := ca.IssueIdentity(id, dns, ips)
		if err != nil {
			t.Fatal(err)
		}
		f := pki.Files{Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key"), CA: caFile}
		if err := os.WriteFile(f.Cert, certPEM, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f.Key, keyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	start := func(id string, extra ...string) string {
		f := write(id, pki.Identity{Role: pki.RoleViewer, Name: "aggregator-" + id}, []string{svc}, nil)
		grpcAddr := freeAddr(t)
		args := append([]string{"--grpc-listen", grpcAddr, "--http-listen", freeAddr(t),
			"--tls-cert", f.Cert, "--tls-key", f.Key, "--tls-ca", caFile, "--log-level", "warn",
			"--etcd-endpoints", strings.Join(cluster.Endpoints(), ","), "--etcd-prefix", "/vigil-peername/",
			"--replica-id", id, "--advertise-api", grpcAddr, "--lease-ttl", "3s"}, extra...)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		var logs bytes.Buffer
		go func() { done <- run(ctx, args, io.Discard, &logs) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("replica %s: run: %v\n%s", id, err, logs.String())
			}
		})
		return grpcAddr
	}
	dial := func(addr string, f pki.Files) *grpc.ClientConn {
		tc, err := pki.ClientConfig(f, svc)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	r0 := start("r0", "--peer-server-name", svc)
	r1 := start("r1", "--peer-server-name", svc)
	r2 := start("r2") // verifies its peers against their IPs

	// n1 streams to r0 (retried until r0 serves and holds its lease).
	nodeFiles := write("n1", pki.NodeIdentity("n1"), nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waitCond(t, 30*time.Second, "n1 connected to r0", func() bool {
		s, err := vigilv1.NewAgentGatewayClient(dial(r0, nodeFiles)).Connect(ctx)
		if err != nil {
			return false
		}
		if err := s.Send(&vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_Hello{Hello: &vigilv1.Hello{NodeName: "n1", InstanceId: "i1", ProtocolVersion: 1}}}); err != nil {
			return false
		}
		m, err := s.Recv()
		return err == nil && m.GetHelloAck() != nil
	})

	viewer := write("viewer", pki.Identity{Role: pki.RoleViewer, Name: "v"}, nil, nil)
	list := func(addr string) ([]*vigilv1.Node, []string, error) {
		var hdr metadata.MD
		resp, err := vigilv1.NewVigilClient(dial(addr, viewer)).ListNodes(context.Background(), &vigilv1.ListNodesRequest{}, grpc.Header(&hdr))
		return resp.GetNodes(), hdr.Get(aggregator.PartialHeader), err
	}
	var last string
	waitCond(t, 30*time.Second, "r1 lists n1 (held by r0) with no partial answer", func() bool {
		nodes, partial, err := list(r1)
		last = strings.Join(partial, "; ")
		return err == nil && len(nodes) == 1 && nodes[0].GetName() == "n1" && len(partial) == 0
	}, &last)
	waitCond(t, 30*time.Second, "r2 (no --peer-server-name) reports r0 unverifiable", func() bool {
		nodes, partial, err := list(r2)
		last = strings.Join(partial, "; ")
		return err == nil && len(nodes) == 0 && strings.Contains(last, "r0") && strings.Contains(last, "certificate")
	}, &last)
}

// waitCond polls cond until it holds or the deadline passes; detail, when
// given, is printed on failure.
func waitCond(t *testing.T, within time.Duration, what string, cond func() bool, detail ...*string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			msg := ""
			if len(detail) > 0 {
				msg = *detail[0]
			}
			t.Fatalf("%s: not within %v (%s)", what, within, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
