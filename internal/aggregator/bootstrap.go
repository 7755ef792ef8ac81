package aggregator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/pki"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// BootstrapServer is the Bootstrap service: it signs node certificates for
// agents that hold a bootstrap token (Bootstrap) or their current node
// certificate (Renew), and binds each node name to the first key that
// bootstrapped it. The interceptors have checked the caller's role before
// a method runs (Renew: a node; ReleaseNode: an operator). Safe for
// concurrent use.
type BootstrapServer struct {
	vigilv1.UnimplementedBootstrapServer

	cfg      *BootstrapConfig
	bindings *bindings
	metrics  *selfMetrics
	log      *slog.Logger
}

var _ vigilv1.BootstrapServer = (*BootstrapServer)(nil)

func newBootstrapServer(cfg *BootstrapConfig, m *selfMetrics, log *slog.Logger) (*BootstrapServer, error) {
	b, err := openBindings(cfg.BindingsFile)
	if err != nil {
		return nil, err
	}
	return &BootstrapServer{cfg: cfg, bindings: b, metrics: m, log: log}, nil
}

// Bootstrap signs a node's first certificate in exchange for a valid
// bootstrap token and a CSR for a node name that is free or bound to the
// CSR's key.
func (s *BootstrapServer) Bootstrap(_ context.Context, req *vigilv1.BootstrapRequest) (*vigilv1.BootstrapResponse, error) {
	tok, ok, err := s.cfg.Tokens.Lookup(req.GetToken())
	if err != nil {
		s.metrics.bootRefused.WithLabelValues("token").Inc()
		s.log.Error("bootstrap refused: the token file cannot be used", "err", err)
		return nil, status.Error(codes.Unavailable, "the aggregator's bootstrap token file cannot be read; every token is refused until it is fixed")
	}
	if !ok {
		s.metrics.bootRefused.WithLabelValues("token").Inc()
		return nil, status.Error(codes.Unauthenticated, "unknown or revoked bootstrap token")
	}
	csr, err := pki.ParseCSR(req.GetCsr())
	if err != nil {
		s.metrics.bootRefused.WithLabelValues("csr").Inc()
		return nil, errdefs.GRPC(err)
	}
	fp, err := pki.KeyFingerprint(csr.PublicKey)
	if err != nil {
		s.metrics.bootRefused.WithLabelValues("csr").Inc()
		return nil, errdefs.GRPC(err)
	}
	if err := s.bindings.bind(csr.NodeName, fp, "token "+tok.Name, false); err != nil {
		s.metrics.bootRefused.WithLabelValues("bound").Inc()
		s.log.Warn("bootstrap refused: node name bound to another key", "node", csr.NodeName, "token", tok.Name)
		return nil, errdefs.GRPC(err)
	}
	certPEM, notAfter, err := s.cfg.CA.SignNode(csr.NodeName, csr.PublicKey, s.cfg.NodeCertTTL)
	if err != nil {
		return nil, errdefs.GRPC(err)
	}
	s.metrics.issued.WithLabelValues("bootstrap").Inc()
	s.log.Info("node bootstrapped", "node", csr.NodeName, "token", tok.Name, "not_after", notAfter)
	return &vigilv1.BootstrapResponse{Certificate: certPEM, NotAfter: timestamppb.New(notAfter)}, nil
}

// Renew signs a new certificate for the caller's node; a new key rebinds
// the name to it (the caller proved it holds the node's current
// certificate).
func (s *BootstrapServer) Renew(ctx context.Context, req *vigilv1.RenewRequest) (*vigilv1.RenewResponse, error) {
	id, ok := Caller(ctx)
	if !ok || id.Role != pki.RoleNode {
		s.metrics.bootRefused.WithLabelValues("identity").Inc()
		return nil, status.Error(codes.PermissionDenied, "renewal needs the node's current certificate")
	}
	csr, err := pki.ParseCSR(req.GetCsr())
	if err != nil {
		s.metrics.bootRefused.WithLabelValues("csr").Inc()
		return nil, errdefs.GRPC(err)
	}
	if csr.NodeName != id.Name {
		s.metrics.bootRefused.WithLabelValues("identity").Inc()
		return nil, status.Errorf(codes.PermissionDenied, "the certificate is for node %s, the request asks for %s", id.Name, csr.NodeName)
	}
	fp, err := pki.KeyFingerprint(csr.PublicKey)
	if err != nil {
		return nil, errdefs.GRPC(err)
	}
	if err := s.bindings.bind(id.Name, fp, "renewal", true); err != nil {
		return nil, errdefs.GRPC(err)
	}
	certPEM, notAfter, err := s.cfg.CA.SignNode(id.Name, csr.PublicKey, s.cfg.NodeCertTTL)
	if err != nil {
		return nil, errdefs.GRPC(err)
	}
	s.metrics.issued.WithLabelValues("renew").Inc()
	s.log.Debug("node certificate renewed", "node", id.Name, "not_after", notAfter)
	return &vigilv1.RenewResponse{Certificate: certPEM, NotAfter: timestamppb.New(notAfter)}, nil
}

// ReleaseNode forgets a node name's binding.
func (s *BootstrapServer) ReleaseNode(ctx context.Context, req *vigilv1.ReleaseNodeRequest) (*vigilv1.ReleaseNodeResponse, error) {
	if err := pki.ValidName(req.GetNodeName()); err != nil {
		return nil, errdefs.GRPC(fmt.Errorf("node_name: %w", err))
	}
	fp, released, err := s.bindings.release(req.GetNodeName())
	if err != nil {
		return nil, errdefs.GRPC(err)
	}
	who, _ := Caller(ctx)
	if released {
		s.log.Info("node name released", "node", req.GetNodeName(), "by", who.String(), "key_sha256", fp)
	}
	return &vigilv1.ReleaseNodeResponse{Released: released, KeySha256: fp}, nil
}

// binding is which key a node name is bound to.
type binding struct {
	KeySHA256 string    `json:"key_sha256"`
	BoundAt   time.Time `json:"bound_at"`
	By        string    `json:"by"`
}

// bindingsFile is the JSON file's content.
type bindingsFile struct {
	Nodes map[string]binding `json:"nodes"`
}

// bindings are the node name bindings, kept in a JSON file rewritten
// atomically on every change (bootstraps and releases are rare). Safe for
// concurrent use.
type bindings struct {
	path string

	mu    sync.Mutex
	nodes map[string]binding
}

func openBindings(path string) (*bindings, error) {
	b := &bindings{path: path, nodes: make(map[string]binding)}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return b, nil
	}
	if err != nil {
		return nil, fmt.Errorf("node bindings %s: %v: %w", path, err, errdefs.ErrUnavailable)
	}
	var f bindingsFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("node bindings %s: %v (fix or move the file; it lists which key each node name is bound to): %w", path, err, errdefs.ErrInvalid)
	}
	if f.Nodes != nil {
		b.nodes = f.Nodes
	}
	return b, nil
}

// bind binds name to the key fp: a free name, or one already bound to fp
// (an agent bootstrapping again with its key, after its certificate
// expired). With rebind (a renewal by the node itself) a bound name moves
// to the new key. Another key for a bound name fails with ErrConflict.
func (b *bindings) bind(name, fp, by string, rebind bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	old, bound := b.nodes[name]
	if bound && old.KeySHA256 == fp {
		return nil
	}
	if bound && !rebind {
		return status.Errorf(codes.AlreadyExists, "node name %s is bound to another key (sha256 %.16s…, since %s); an operator must release it first: vigilctl nodes release %s", name, old.KeySHA256, old.BoundAt.Format(time.RFC3339), name)
	}
	next := make(map[string]binding, len(b.nodes)+1)
	for k, v := range b.nodes {
		next[k] = v
	}
	next[name] = binding{KeySHA256: fp, BoundAt: time.Now().UTC(), By: by}
	if err := b.save(next); err != nil {
		return err
	}
	b.nodes = next
	return nil
}

// release forgets name's binding; it returns the key it was bound to.
func (b *bindings) release(name string) (string, bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	old, bound := b.nodes[name]
	if !bound {
		return "", false, nil
	}
	next := make(map[string]binding, len(b.nodes))
	for k, v := range b.nodes {
		if k != name {
			next[k] = v
		}
	}
	if err := b.save(next); err != nil {
		return "", false, err
	}
	b.nodes = next
	return old.KeySHA256, true, nil
}

func (b *bindings) save(nodes map[string]binding) error {
	data, err := json.MarshalIndent(bindingsFile{Nodes: nodes}, "", "  ")
	if err != nil {
		return err
	}
	if err := pki.WriteFileAtomic(b.path, data, 0o600); err != nil {
		return fmt.Errorf("node bindings %s: %v: %w", b.path, err, errdefs.ErrUnavailable)
	}
	return nil
}
