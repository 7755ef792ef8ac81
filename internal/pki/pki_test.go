package pki

import (
	"context"
	"errors"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// identityServer records the identity PeerIdentity extracts on a real mTLS
// connection.
type identityServer struct {
	healthpb.UnimplementedHealthServer
	got chan Identity
}

func (s *identityServer) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	id, err := PeerIdentity(ctx, false)
	if err != nil {
		return nil, errdefs.GRPC(err)
	}
	s.got <- id
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func TestMutualTLSIdentity(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA("vigil-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	srvFiles, err := ca.WriteFiles(dir, "aggregator", "aggregator")
	if err != nil {
		t.Fatal(err)
	}
	cliFiles, err := ca.WriteFiles(dir, "node-a", "node-a")
	if err != nil {
		t.Fatal(err)
	}
	srvTLS, err := ServerConfig(srvFiles)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(grpc.Creds(credentials.NewTLS(srvTLS)))
	is := &identityServer{got: make(chan Identity, 1)}
	healthpb.RegisterHealthServer(s, is)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)

	cliTLS, err := ClientConfig(cliFiles, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(cliTLS)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("check over mTLS: %v", err)
	}
	if got := <-is.got; got != NodeIdentity("node-a") {
		t.Fatalf("identity = %v, want node/node-a", got)
	}

	// A client from another CA is refused at the handshake.
	other, err := NewCA("other-ca")
	if err != nil {
		t.Fatal(err)
	}
	otherFiles, err := other.WriteFiles(t.TempDir(), "node-b", "node-b")
	if err != nil {
		t.Fatal(err)
	}
	otherFiles.CA = srvFiles.CA // trusts the server, but is not trusted by it
	otherTLS, err := ClientConfig(otherFiles, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	conn2, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(otherTLS)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	if _, err := healthpb.NewHealthClient(conn2).Check(context.Background(), &healthpb.HealthCheckRequest{}); err == nil {
		t.Fatal("a client certificate from an unknown CA was accepted")
	}
}

func TestPeerIdentityWithoutTLS(t *testing.T) {
	if _, err := PeerIdentity(context.Background(), true); !errors.Is(err, errdefs.ErrPermission) {
		t.Fatalf("err = %v, want ErrPermission", err)
	}
}

func TestLoadErrors(t *testing.T) {
	if _, err := ServerConfig(Files{}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("empty files: err = %v, want ErrInvalid", err)
	}
	if _, err := ClientConfig(Files{Cert: "/nonexistent.crt", Key: "/nonexistent.key", CA: "/nonexistent.ca"}, ""); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("missing files: err = %v, want ErrInvalid", err)
	}
}
