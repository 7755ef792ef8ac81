package uplink

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/pki"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// KeeperConfig configures a Keeper. Zero durations take the defaults named
// on each field.
type KeeperConfig struct {
	// Address of the aggregator (its gRPC listener), in the form of
	// Config.Address: one gRPC target, or several separated by commas (the
	// replicas of an aggregator). A call goes to the address that answered
	// last, and to the next one when that one is unavailable or does not
	// answer within CallTimeout. Required.
	Address string
	// ServerName overrides the name checked in the aggregator's
	// certificate ("" uses the dialed host).
	ServerName string
	// CAFile verifies the aggregator's certificate. Required.
	CAFile string
	// TokenFile holds the bootstrap token (read at each bootstrap, so an
	// updated Secret is seen). Required.
	TokenFile string
	// Dir keeps the node's key (node.key, made here, mode 0600, never
	// sent) and certificate (node.crt): the agent's state dir's pki/.
	Dir string
	// NodeName is the name asked for. Required.
	NodeName string
	// RenewFraction of a certificate's life after which it is renewed.
	// Default 2/3.
	RenewFraction float64
	// RetryInitial and RetryMax bound the delay between failed attempts
	// (full jitter, as the stream's reconnects). Defaults 1s and 1m.
	RetryInitial, RetryMax time.Duration
	// CallTimeout bounds one bootstrap or renewal call to one address.
	// Default 15s.
	CallTimeout time.Duration
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Keeper keeps a node's client certificate valid, as the kubelet's TLS
// bootstrapping does: with no usable certificate it makes the node's key
// (once) and trades the bootstrap token and a CSR for a certificate; it
// renews the certificate at RenewFraction of its life with the current
// certificate (not the token). Certificates are written atomically into
// Dir; the uplink's TLS configuration (Files, pki.ClientConfig) reads
// them at each new connection, so a renewal never touches a live stream.
type Keeper struct {
	cfg KeeperConfig
	log *slog.Logger
	key crypto.Signer
	// addrs are Address's targets; next is the index of the one the next
	// call tries first (Run's goroutine only).
	addrs []string
	next  int

	issued        atomic.Int64
	renewals      atomic.Int64
	renewFailures atomic.Int64
	// notAfter is the current certificate's expiry, unix seconds; 0 before
	// there is one.
	notAfter atomic.Int64
}

// NewKeeper validates cfg. It does no I/O.
func NewKeeper(cfg KeeperConfig) (*Keeper, error) {
	var missing []string
	for name, v := range map[string]string{"Address": cfg.Address, "CAFile": cfg.CAFile, "TokenFile": cfg.TokenFile, "Dir": cfg.Dir, "NodeName": cfg.NodeName} {
		if v == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("certificate keeper: %s required: %w", strings.Join(missing, ", "), errdefs.ErrInvalid)
	}
	addrs, err := targets(cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("certificate keeper: %w", err)
	}
	if err := pki.ValidName(cfg.NodeName); err != nil {
		return nil, fmt.Errorf("certificate keeper: node name: %w", err)
	}
	if cfg.RenewFraction == 0 {
		cfg.RenewFraction = 2.0 / 3
	}
	if cfg.RenewFraction <= 0 || cfg.RenewFraction >= 1 {
		return nil, fmt.Errorf("certificate keeper: renew fraction %v: want between 0 and 1: %w", cfg.RenewFraction, errdefs.ErrInvalid)
	}
	if cfg.RetryInitial <= 0 {
		cfg.RetryInitial = time.Second
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = time.Minute
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 15 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Keeper{cfg: cfg, addrs: addrs, log: cfg.Logger.With("component", "certificates")}, nil
}

// Files are the node's certificate files for pki.ClientConfig (Pending:
// they may not exist until the first bootstrap).
func (k *Keeper) Files() pki.Files {
	return pki.Files{Cert: filepath.Join(k.cfg.Dir, "node.crt"), Key: filepath.Join(k.cfg.Dir, "node.key"), CA: k.cfg.CAFile, Pending: true}
}

// Issued counts the certificates this Keeper obtained (bootstraps and
// renewals); Renewals only the renewals; RenewalFailures the renewal
// attempts that failed.
func (k *Keeper) Issued() int64          { return k.issued.Load() }
func (k *Keeper) Renewals() int64        { return k.renewals.Load() }
func (k *Keeper) RenewalFailures() int64 { return k.renewFailures.Load() }

// Run keeps the certificate valid until ctx ends (it returns nil then). A
// failed attempt is retried with backoff and logged at Warn when its error
// differs from the previous attempt's (at Debug when it repeats, so the
// cause stays readable); the key file that cannot be made or read is the
// only error returned.
func (k *Keeper) Run(ctx context.Context) error {
	if err := k.loadKey(); err != nil {
		return err
	}
	b := backoff{initial: k.cfg.RetryInitial, max: k.cfg.RetryMax}
	attempt := 0
	lastErr := ""
	for {
		wait, err := k.step(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			wait = b.delay(attempt)
			attempt++
			level := slog.LevelDebug
			if err.Error() != lastErr {
				level, lastErr = slog.LevelWarn, err.Error()
			}
			k.log.Log(ctx, level, "node certificate not obtained; retrying", "err", err, "attempt", attempt, "retry_in", wait.Round(time.Millisecond))
		} else {
			attempt, lastErr = 0, ""
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// step does what the current certificate calls for and returns how long
// to wait before looking again.
func (k *Keeper) step(ctx context.Context) (time.Duration, error) {
	cert := k.current()
	now := time.Now()
	switch {
	case cert == nil || !now.Before(cert.NotAfter):
		if err := k.bootstrap(ctx); err != nil {
			return 0, err
		}
		return 0, nil
	case !now.Before(renewAt(cert, k.cfg.RenewFraction)):
		err := k.renew(ctx)
		if err != nil {
			k.renewFailures.Add(1)
			return 0, err
		}
		return 0, nil
	default:
		return time.Until(renewAt(cert, k.cfg.RenewFraction)), nil
	}
}

// renewAt is when a certificate is due for renewal.
func renewAt(c *x509.Certificate, fraction float64) time.Time {
	life := c.NotAfter.Sub(c.NotBefore)
	return c.NotBefore.Add(time.Duration(float64(life) * fraction))
}

// current returns the stored certificate when it is for this node and key,
// else nil.
func (k *Keeper) current() *x509.Certificate {
	data, err := os.ReadFile(k.Files().Cert)
	if err != nil {
		return nil
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil
	}
	id, err := pki.IdentityOf(c, false)
	if err != nil || id != pki.NodeIdentity(k.cfg.NodeName) {
		k.log.Warn("the stored certificate is not this node's; bootstrapping again", "want", pki.NodeIdentity(k.cfg.NodeName).String())
		return nil
	}
	if pub, ok := c.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(k.key.Public()) {
		k.log.Warn("the stored certificate is for another key; bootstrapping again")
		return nil
	}
	k.notAfter.Store(c.NotAfter.Unix())
	return c
}

// loadKey reads the node's key, or makes it on first use.
func (k *Keeper) loadKey() error {
	path := k.Files().Key
	key, err := pki.ReadKey(path)
	if err == nil {
		k.key = key
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("node key %s: %w (remove it to make a new key; the node name must then be released on the aggregator)", path, err)
	}
	if err := os.MkdirAll(k.cfg.Dir, 0o700); err != nil {
		return fmt.Errorf("node key dir: %w", err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	if err := pki.WriteKey(path, ec); err != nil {
		return fmt.Errorf("write node key %s: %w", path, err)
	}
	k.key = ec
	k.log.Info("made this node's key", "path", path)
	return nil
}

func (k *Keeper) bootstrap(ctx context.Context) error {
	raw, err := os.ReadFile(k.cfg.TokenFile)
	if err != nil {
		return fmt.Errorf("bootstrap token: %w", err)
	}
	token := strings.TrimSpace(string(raw))
	if token == "" {
		return fmt.Errorf("bootstrap token file %s is empty: %w", k.cfg.TokenFile, errdefs.ErrInvalid)
	}
	csr, err := pki.NewCSR(k.cfg.NodeName, k.key)
	if err != nil {
		return err
	}
	tc, err := pki.ServerOnlyConfig(k.cfg.CAFile, k.cfg.ServerName)
	if err != nil {
		return err
	}
	var resp *vigilv1.BootstrapResponse
	err = k.call(ctx, credentials.NewTLS(tc), func(ctx context.Context, c vigilv1.BootstrapClient) error {
		resp, err = c.Bootstrap(ctx, &vigilv1.BootstrapRequest{Token: token, Csr: csr})
		return err
	})
	if err != nil {
		return fmt.Errorf("bootstrap as %s: %w", k.cfg.NodeName, err)
	}
	c, err := k.store(resp.GetCertificate())
	if err != nil {
		return err
	}
	k.issued.Add(1)
	k.log.Info("node certificate obtained with the bootstrap token", "node", k.cfg.NodeName, "not_after", c.NotAfter, "next_renewal", renewAt(c, k.cfg.RenewFraction))
	return nil
}

func (k *Keeper) renew(ctx context.Context) error {
	csr, err := pki.NewCSR(k.cfg.NodeName, k.key)
	if err != nil {
		return err
	}
	f := k.Files()
	f.Pending = false
	tc, err := pki.ClientConfig(f, k.cfg.ServerName)
	if err != nil {
		return err
	}
	var resp *vigilv1.RenewResponse
	err = k.call(ctx, credentials.NewTLS(tc), func(ctx context.Context, c vigilv1.BootstrapClient) error {
		resp, err = c.Renew(ctx, &vigilv1.RenewRequest{Csr: csr})
		return err
	})
	if err != nil {
		return fmt.Errorf("renew the certificate of %s: %w", k.cfg.NodeName, err)
	}
	c, err := k.store(resp.GetCertificate())
	if err != nil {
		return err
	}
	k.issued.Add(1)
	k.renewals.Add(1)
	k.log.Info("node certificate renewed", "not_after", c.NotAfter, "next_renewal", renewAt(c, k.cfg.RenewFraction))
	return nil
}

// call runs one Bootstrap call, on a connection of its own, with the
// addresses in turn: first the one that answered last, then, while the
// call fails as unreachable (unavailable, no answer within CallTimeout, an
// address that does not parse), the next ones, each once. Any other answer
// (a refused token) ends it: every replica would give the same.
func (k *Keeper) call(ctx context.Context, creds credentials.TransportCredentials, f func(context.Context, vigilv1.BootstrapClient) error) error {
	var failed []string
	var last error
	for range k.addrs {
		addr := k.addrs[k.next]
		err := k.callOne(ctx, addr, creds, f)
		if err == nil || ctx.Err() != nil || !unreachable(err) {
			return err
		}
		k.next = (k.next + 1) % len(k.addrs)
		k.log.Debug("aggregator unreachable; trying the next address", "address", addr, "err", err, "next", k.addrs[k.next])
		failed = append(failed, fmt.Sprintf("%s: %v", addr, err))
		last = err
	}
	if len(k.addrs) == 1 {
		return last
	}
	return fmt.Errorf("no aggregator address answered: %s: %w", strings.Join(failed, "; "), errdefs.ErrUnavailable)
}

// unreachable reports whether a call's error says the address did not
// answer (so another replica may), rather than what the aggregator decided.
func unreachable(err error) bool {
	return errors.Is(err, errdefs.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, errBadAddress)
}

// errBadAddress marks an address grpc.NewClient refused.
var errBadAddress = errors.New("bad aggregator address")

// callOne runs f on a connection to addr, within CallTimeout.
func (k *Keeper) callOne(ctx context.Context, addr string, creds credentials.TransportCredentials, f func(context.Context, vigilv1.BootstrapClient) error) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return fmt.Errorf("aggregator address %q: %v: %w", addr, err, errors.Join(errBadAddress, errdefs.ErrInvalid))
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, k.cfg.CallTimeout)
	defer cancel()
	err = f(ctx, vigilv1.NewBootstrapClient(conn))
	if s, ok := status.FromError(err); ok && (s.Code() == codes.AlreadyExists || s.Code() == codes.Unauthenticated) {
		return fmt.Errorf("%s (%w)", s.Message(), errdefs.ErrPermission)
	}
	return errdefs.FromGRPC(err)
}

// store checks and writes a certificate received for this node and key,
// and returns it.
func (k *Keeper) store(certPEM []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("the aggregator answered no PEM certificate: %w", errdefs.ErrInvalid)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("the aggregator's certificate: %v: %w", err, errdefs.ErrInvalid)
	}
	if id, err := pki.IdentityOf(c, false); err != nil || id != pki.NodeIdentity(k.cfg.NodeName) {
		return nil, fmt.Errorf("the aggregator signed a certificate for %v, not node %s: %w", id, k.cfg.NodeName, errdefs.ErrInvalid)
	}
	if pub, ok := c.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(k.key.Public()) {
		return nil, fmt.Errorf("the aggregator signed a certificate for another key: %w", errdefs.ErrInvalid)
	}
	if err := pki.WriteFileAtomic(k.Files().Cert, certPEM, 0o644); err != nil {
		return nil, err
	}
	k.notAfter.Store(c.NotAfter.Unix())
	return c, nil
}
