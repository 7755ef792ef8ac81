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
	"github.com/vigilhq/vigil/internal/store"
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
	bindings nameBindings
	metrics  *selfMetrics
	log      *slog.Logger
}

var _ vigilv1.BootstrapServer = (*BootstrapServer)(nil)

// nameBindings binds node names to keys. Safe for concurrent use.
type nameBindings interface {
	// bind binds name to the key fp: a free name, or one already bound to
	// fp (an agent bootstrapping again with its key, after its certificate
	// expired). With rebind (a renewal by the node itself) a bound name
	// moves to the new key. Another key for a bound name fails with
	// AlreadyExists (errBound), a new name beyond the cap with
	// ResourceExhausted (errBindingsFull).
	bind(ctx context.Context, name, fp, by string, rebind bool) error
	// release forgets name's binding; it returns the key it was bound to
	// and whether there was one.
	release(ctx context.Context, name string) (string, bool, error)
}

var (
	_ nameBindings = (*bindings)(nil)
	_ nameBindings = (*storeBindings)(nil)
)

// newBootstrapServer keeps the bindings in st when it is not nil (every
// replica sharing st sees them), moving a BindingsFile left by an older
// aggregator into it; with no store, in BindingsFile.
func newBootstrapServer(cfg *BootstrapConfig, st store.Store, m *selfMetrics, log *slog.Logger) (*BootstrapServer, error) {
	s := &BootstrapServer{cfg: cfg, metrics: m, log: log}
	if st == nil {
		b, err := openBindings(cfg.BindingsFile, cfg.MaxBindings)
		if err != nil {
			return nil, err
		}
		s.bindings = b
		return s, nil
	}
	sb := &storeBindings{st: st, max: cfg.MaxBindings}
	if cfg.BindingsFile != "" {
		ctx, cancel := context.WithTimeout(context.Background(), migrateTimeout)
		defer cancel()
		if err := migrateBindings(ctx, cfg.BindingsFile, sb, log); err != nil {
			return nil, err
		}
	}
	s.bindings = sb
	return s, nil
}

// refuse counts and logs a refused bootstrap or renewal and returns err.
func (s *BootstrapServer) refuse(reason, node string, err error, attrs ...any) error {
	s.metrics.bootRefused.WithLabelValues(reason).Inc()
	s.log.Warn("bootstrap refused", append([]any{"node", node, "reason", reason, "err", err}, attrs...)...)
	return err
}

// Bootstrap signs a node's first certificate in exchange for a valid
// bootstrap token and a CSR for a node name that is free or bound to the
// CSR's key.
func (s *BootstrapServer) Bootstrap(ctx context.Context, req *vigilv1.BootstrapRequest) (*vigilv1.BootstrapResponse, error) {
	csr, csrErr := pki.ParseCSR(req.GetCsr())
	var node string // the name the CSR asks for, for the log
	if csrErr == nil {
		node = csr.NodeName
	}
	tok, ok, err := s.cfg.Tokens.Lookup(req.GetToken())
	if err != nil {
		s.log.Error("the bootstrap token file cannot be used", "err", err)
		return nil, s.refuse("token", node, status.Error(codes.Unavailable, "the aggregator's bootstrap token file cannot be read; every token is refused until it is fixed"))
	}
	if !ok {
		return nil, s.refuse("token", node, status.Error(codes.Unauthenticated, "unknown or revoked bootstrap token"))
	}
	if csrErr != nil {
		return nil, s.refuse("csr", node, errdefs.GRPC(csrErr), "token", tok.Name)
	}
	fp, err := pki.KeyFingerprint(csr.PublicKey)
	if err != nil {
		return nil, s.refuse("csr", node, errdefs.GRPC(err), "token", tok.Name)
	}
	if err := s.bindings.bind(ctx, csr.NodeName, fp, "token "+tok.Name, false); err != nil {
		if reason, refused := bindRefusal(err); refused {
			return nil, s.refuse(reason, node, err, "token", tok.Name)
		}
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
		return nil, s.refuse("identity", id.Name, status.Error(codes.PermissionDenied, "renewal needs the node's current certificate"))
	}
	csr, err := pki.ParseCSR(req.GetCsr())
	if err != nil {
		return nil, s.refuse("csr", id.Name, errdefs.GRPC(err))
	}
	if csr.NodeName != id.Name {
		return nil, s.refuse("identity", id.Name, status.Errorf(codes.PermissionDenied, "the certificate is for node %s, the request asks for %s", id.Name, csr.NodeName))
	}
	fp, err := pki.KeyFingerprint(csr.PublicKey)
	if err != nil {
		return nil, errdefs.GRPC(err)
	}
	if err := s.bindings.bind(ctx, id.Name, fp, "renewal", true); err != nil {
		if reason, refused := bindRefusal(err); refused {
			return nil, s.refuse(reason, id.Name, err)
		}
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

// bindRefusal says whether a bind error refuses the node (and the reason
// counted), rather than failing to decide (the store unavailable).
func bindRefusal(err error) (string, bool) {
	switch status.Code(err) {
	case codes.AlreadyExists:
		return "bound", true
	case codes.ResourceExhausted:
		return "limit", true
	}
	return "", false
}

// errBound refuses another key for name, bound since old.
func errBound(name string, old binding) error {
	return status.Errorf(codes.AlreadyExists, "node name %s is bound to another key (sha256 %.16s…, since %s); an operator must release it first: vigilctl nodes release %s", name, old.KeySHA256, old.BoundAt.Format(time.RFC3339), name)
}

// errBindingsFull refuses a new name beyond the cap of max.
func errBindingsFull(max int, name string) error {
	return status.Errorf(codes.ResourceExhausted, "%d node names are bound, the cap; node %s is refused (release names with vigilctl nodes release)", max, name)
}

// ReleaseNode forgets a node name's binding: with a store, on every
// replica sharing it.
func (s *BootstrapServer) ReleaseNode(ctx context.Context, req *vigilv1.ReleaseNodeRequest) (*vigilv1.ReleaseNodeResponse, error) {
	if err := pki.ValidName(req.GetNodeName()); err != nil {
		return nil, errdefs.GRPC(fmt.Errorf("node_name: %w", err))
	}
	fp, released, err := s.bindings.release(ctx, req.GetNodeName())
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

// bindings are the node name bindings of an aggregator without a store,
// kept in a JSON file rewritten atomically on every change (bootstraps and
// releases are rare). Safe for concurrent use.
type bindings struct {
	path string
	max  int

	mu    sync.Mutex
	nodes map[string]binding
}

func openBindings(path string, max int) (*bindings, error) {
	b := &bindings{path: path, max: max, nodes: make(map[string]binding)}
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

func (b *bindings) bind(_ context.Context, name, fp, by string, rebind bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	old, bound := b.nodes[name]
	if bound && old.KeySHA256 == fp {
		return nil
	}
	if !bound && b.max > 0 && len(b.nodes) >= b.max {
		return errBindingsFull(b.max, name)
	}
	if bound && !rebind {
		return errBound(name, old)
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

func (b *bindings) release(_ context.Context, name string) (string, bool, error) {
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
