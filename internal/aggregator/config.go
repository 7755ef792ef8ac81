package aggregator

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/gossip"
	"github.com/vigilhq/vigil/internal/pki"
	"github.com/vigilhq/vigil/internal/remediation"
	"github.com/vigilhq/vigil/internal/store"
)

// Defaults of Config.
const (
	DefaultGRPCListen      = "127.0.0.1:7400"
	DefaultHTTPListen      = "127.0.0.1:7401"
	DefaultMaxMessageBytes = 16 << 20
	DefaultStaleAfter      = time.Minute
	DefaultForgetAfter     = 15 * time.Minute
	DefaultAckInterval     = 100 * time.Millisecond
	DefaultAckEvery        = 100
	DefaultCommandQueue    = 64
	DefaultWatchBuffer     = 256
	DefaultShutdownTimeout = 10 * time.Second
	DefaultMaxStreams      = 10000
	DefaultMaxWatchers     = 256
	DefaultNodeCertTTL     = 24 * time.Hour
)

// Config configures an Aggregator. The zero value of every field except TLS
// and Insecure means its default (DefaultConfig shows them).
type Config struct {
	// GRPCListen is the address of the agents' stream and the Vigil API.
	GRPCListen string
	// HTTPListen is the address of /metrics, /healthz, /readyz and /api/v1.
	HTTPListen string
	// TLS is the server's mutual-TLS configuration (pki.ServerConfig). When
	// set, every agent's hello must name the node of its client certificate.
	TLS *tls.Config
	// Insecure allows serving without TLS: any agent may claim any node and
	// every call is allowed. Exactly one of TLS and Insecure must be set;
	// with Insecure both listen addresses must be loopback addresses.
	Insecure bool
	// AllowCommonNameNodes accepts a client certificate that names no
	// spiffe://vigil/ROLE/NAME URI SAN as the node of its Common Name
	// (certificates issued before roles existed). Off by default: with it,
	// any certificate the CA ever signed for another purpose is a node.
	AllowCommonNameNodes bool
	// APITokens are the bearer tokens of the HTTP API (pki.OpenAPITokens),
	// reloaded when the file changes; nil: client certificates only.
	APITokens *pki.TokenFile
	// MetricsRequireAuth puts /metrics behind the same TLS and credential
	// check as /api/v1 (role viewer). /healthz and /readyz stay plain.
	MetricsRequireAuth bool
	// Conditions tunes how a node's condition is assessed from its stream
	// and its gossip peers' reports (gossip.ConditionConfig: how many peers
	// must agree a node is dead, how old a report may be); zero fields take
	// gossip's defaults.
	Conditions gossip.ConditionConfig
	// DataDir is the directory of the aggregator's files, as the command
	// line gave it; the package reads only Store, which the command opens
	// there.
	DataDir string
	// Store holds the aggregator's durable state: the remediation journal,
	// the intents claimed from alerts, budgets and cooldowns, and each
	// node's outbox of commands (bolt.Open on a file under --data-dir, or
	// an etcd store shared by replicas). nil turns remediation off: the
	// webhook and the remediation calls answer that it is off. The caller
	// owns it and closes it after Run returns.
	Store store.Store
	// Rules are the remediation rules (remediation.NewRuleSet; Reload on
	// SIGHUP); nil means the built-in default (no rule: every alert is
	// journaled as unmatched, operators' requests still act).
	Rules *remediation.RuleSet
	// HistoryPerNode and HistoryMaxAge bound the event history kept in
	// Store for WatchEvents' since (vigilctl events --since): at most this
	// many events per node, none older; defaults 1000 and 24h.
	HistoryPerNode int
	HistoryMaxAge  time.Duration
	// HoldCommands keeps every remediation command in its node's outbox
	// instead of delivering it: decisions are still made and journaled,
	// and commands still expire at their deadline. For pausing remediation
	// while an operator looks, and for tests that stop the aggregator
	// between a decision and its delivery.
	HoldCommands bool
	// Replicated says Store is shared by several aggregator replicas (etcd):
	// each holds the streams of its nodes under a lease of LeaseTTL,
	// exposes only those, registers AdvertiseAPI for the others' fleet-wide
	// reads, and the housekeeping that must run once runs on the elected
	// replica. Off (bbolt, one aggregator): nothing of this happens.
	Replicated bool
	// LeaseTTL is the replica's lease in the shared store: a replica that
	// dies frees its nodes within it. Default 10s.
	LeaseTTL time.Duration
	// AdvertiseAPI is the address the other replicas reach this replica's
	// gRPC API on (fleet-wide reads); default the gRPC listen address.
	AdvertiseAPI string
	// PeerTLS is the client TLS configuration of the calls to the other
	// replicas (their CA, and a client certificate of role viewer or
	// operator); nil with TLS means those calls cannot be made (the reads
	// show this replica's nodes and say the result is partial).
	PeerTLS *tls.Config
	// PeerTimeout bounds one replica's answer to a fleet-wide read; a
	// replica that does not answer in time leaves the result partial.
	// Default 2s.
	PeerTimeout time.Duration
	// Leader reports whether this replica runs the housekeeping that must
	// run once (the journal's retention sweep); nil means always (one
	// aggregator).
	Leader func() bool
	// Bootstrap issues node certificates to agents holding a bootstrap
	// token; nil: Bootstrap and Renew answer Unimplemented (nodes bring
	// their own certificates).
	Bootstrap *BootstrapConfig
	// Quotas bound what one node may make the aggregator hold.
	Quotas Quotas
	// MaxStreams bounds the agent streams connected at once; one more is
	// refused with ResourceExhausted. Default 10000.
	MaxStreams int
	// MaxWatchers bounds the WatchEvents subscribers at once; one more is
	// refused with ResourceExhausted. Default 256.
	MaxWatchers int
	// MaxMessageBytes bounds one received gRPC message; a larger one fails
	// only its stream, with ResourceExhausted.
	MaxMessageBytes int
	// StaleAfter is the silence after which a connected node is STALE.
	StaleAfter time.Duration
	// ForgetAfter is how long a DOWN node (and its containers' series) is
	// kept before it is forgotten from the metrics and the API.
	ForgetAfter time.Duration
	// AckInterval is the longest an applied message waits for its ack.
	AckInterval time.Duration
	// AckEvery sends an ack at once after this many unacknowledged messages.
	AckEvery int
	// CommandQueue bounds the commands waiting to be sent to one node;
	// SendCommand fails with ErrUnavailable when it is full.
	CommandQueue int
	// WatchBuffer bounds the events buffered for one WatchEvents subscriber;
	// a subscriber that falls further behind is dropped.
	WatchBuffer int
	// KeepaliveMinTime is the shortest keepalive ping interval an agent may
	// use (grpc keepalive.EnforcementPolicy); default 10s.
	KeepaliveMinTime time.Duration
	// KeepaliveTime is how long a connection may be idle before the server
	// pings it; default 30s. KeepaliveTimeout is how long it waits for the
	// answer; default 10s.
	KeepaliveTime, KeepaliveTimeout time.Duration
	// ShutdownTimeout bounds graceful shutdown (gRPC GracefulStop, HTTP
	// Shutdown) before connections are closed.
	ShutdownTimeout time.Duration
	// MetricsGzip compresses /metrics when the scraper accepts gzip (as
	// Prometheus always does). Off by default, as in kube-state-metrics:
	// gzip at its fastest level costs more CPU than rendering the series
	// (docs/benchmarks/aggregator.md), and scrapes mostly cross a local
	// network. Turn it on when the scrape path is slow or metered.
	MetricsGzip bool
	// AggregatorID names this replica in HelloAck; default the host name.
	AggregatorID string
	// Registry receives the aggregator's self-metrics, which /metrics also
	// serves (on shard 0); nil means a new registry.
	Registry *prometheus.Registry
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// BootstrapConfig configures node bootstrap (the Bootstrap service).
type BootstrapConfig struct {
	// CA signs node certificates (pki.LoadCA of --ca-cert/--ca-key). Its
	// certificate must be in the bundle that verifies clients (TLS's
	// ClientCAs).
	CA *pki.CA
	// Tokens are the bootstrap tokens (pki.OpenBootstrapTokens), reloaded
	// when the file changes: deleting a line revokes its token.
	Tokens *pki.TokenFile
	// NodeCertTTL is the lifetime of a node certificate. Default 24h.
	NodeCertTTL time.Duration
	// BindingsFile is, without a Store, where which key each node name is
	// bound to is kept (JSON, written atomically). With a Store the
	// bindings live in it (every replica sees them; the first key to
	// bootstrap a name wins fleet-wide), and a BindingsFile left by an
	// older aggregator is moved into it at start (a name already bound in
	// the store keeps that binding) and renamed to BindingsFile.migrated;
	// "" then means nothing to move.
	BindingsFile string
	// MaxBindings bounds the node names bound at once: a leaked token
	// cannot bind names without end. A bootstrap of a new name beyond it is
	// refused with ResourceExhausted until an operator releases names.
	// Default DefaultMaxStreams.
	MaxBindings int
}

// DefaultConfig returns a Config with every default filled in and neither
// TLS nor Insecure set.
func DefaultConfig() Config {
	var c Config
	c.setDefaults()
	return c
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defInt := func(d *int, v int) {
		if *d == 0 {
			*d = v
		}
	}
	if c.GRPCListen == "" {
		c.GRPCListen = DefaultGRPCListen
	}
	if c.HTTPListen == "" {
		c.HTTPListen = DefaultHTTPListen
	}
	defInt(&c.MaxMessageBytes, DefaultMaxMessageBytes)
	def(&c.LeaseTTL, DefaultLeaseTTL)
	def(&c.PeerTimeout, 2*time.Second)
	def(&c.StaleAfter, DefaultStaleAfter)
	def(&c.ForgetAfter, DefaultForgetAfter)
	def(&c.AckInterval, DefaultAckInterval)
	defInt(&c.AckEvery, DefaultAckEvery)
	defInt(&c.CommandQueue, DefaultCommandQueue)
	defInt(&c.WatchBuffer, DefaultWatchBuffer)
	def(&c.KeepaliveMinTime, 10*time.Second)
	def(&c.KeepaliveTime, 30*time.Second)
	def(&c.KeepaliveTimeout, 10*time.Second)
	def(&c.ShutdownTimeout, DefaultShutdownTimeout)
	defInt(&c.MaxStreams, DefaultMaxStreams)
	defInt(&c.MaxWatchers, DefaultMaxWatchers)
	c.Quotas.setDefaults()
	if c.Bootstrap != nil {
		def(&c.Bootstrap.NodeCertTTL, DefaultNodeCertTTL)
		defInt(&c.Bootstrap.MaxBindings, DefaultMaxStreams)
	}
	if c.AggregatorID == "" {
		c.AggregatorID, _ = os.Hostname()
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate fills in defaults and checks c; errors wrap errdefs.ErrInvalid
// and name the offending setting.
func (c *Config) Validate() error {
	c.setDefaults()
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(format, args...))
	}
	switch {
	case c.TLS == nil && !c.Insecure:
		bad("no transport security: give TLS certificates (mTLS) or choose insecure mode explicitly")
	case c.TLS != nil && c.Insecure:
		bad("both TLS and insecure mode are set: choose one")
	}
	if c.Insecure {
		for _, l := range []struct{ flag, addr string }{{"grpc listen", c.GRPCListen}, {"http listen", c.HTTPListen}} {
			if err := loopbackOnly(l.addr); err != nil {
				bad("insecure mode serves loopback only: %s address %s: %v", l.flag, l.addr, err)
			}
		}
	}
	if c.Bootstrap != nil {
		b := c.Bootstrap
		switch {
		case c.TLS == nil:
			bad("node bootstrap needs TLS (the token travels over it)")
		case b.CA == nil || b.Tokens == nil:
			bad("node bootstrap needs a CA (--ca-cert/--ca-key) and a bootstrap token file")
		case b.BindingsFile == "" && c.Store == nil:
			bad("node bootstrap needs a store or a file for the node name bindings (--data-dir)")
		case b.NodeCertTTL < 2*time.Second:
			bad("node certificate lifetime %v is below 2s", b.NodeCertTTL)
		}
	}
	if err := c.Quotas.validate(); err != nil {
		errs = append(errs, err)
	}
	if c.MaxStreams < 1 || c.MaxWatchers < 1 {
		bad("max streams and max watchers must be positive (got %d, %d)", c.MaxStreams, c.MaxWatchers)
	}
	if c.MaxMessageBytes < 1<<10 {
		bad("max message bytes %d is below 1024", c.MaxMessageBytes)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"stale-after", c.StaleAfter}, {"forget-after", c.ForgetAfter}, {"ack interval", c.AckInterval},
		{"keepalive min time", c.KeepaliveMinTime}, {"keepalive time", c.KeepaliveTime},
		{"keepalive timeout", c.KeepaliveTimeout}, {"shutdown timeout", c.ShutdownTimeout},
	} {
		if d.v < 0 {
			bad("%s %v is negative", d.name, d.v)
		}
	}
	if c.Replicated && c.Store == nil {
		bad("replicas need a shared store (--etcd-endpoints)")
	}
	if c.Replicated {
		// The other replicas dial what this one registers; a wildcard
		// there reaches the dialer's own host (its own API on pods with
		// one port), whose answer would be taken for this replica's.
		adv := c.AdvertiseAPI
		if adv == "" {
			adv = c.GRPCListen
		}
		if host, _, err := net.SplitHostPort(adv); err == nil {
			if ip, perr := netip.ParseAddr(host); host == "" || (perr == nil && ip.IsUnspecified()) {
				bad("the address the other replicas reach this one on, %q, is a wildcard: give the advertised API address (the pod's or host's IP, or a name)", adv)
			}
		}
	}
	if c.Replicated && c.LeaseTTL < 2*time.Second {
		bad("lease TTL %v is below 2s (etcd's minimum)", c.LeaseTTL)
	}
	if c.AckEvery < 1 || c.CommandQueue < 1 || c.WatchBuffer < 1 {
		bad("ack-every, command queue and watch buffer must be positive (got %d, %d, %d)", c.AckEvery, c.CommandQueue, c.WatchBuffer)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("aggregator config: %w: %w", err, errdefs.ErrInvalid)
	}
	return nil
}

// loopbackOnly checks that a listen address binds a loopback address only.
func loopbackOnly(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%q is not a loopback address (127.0.0.0/8, ::1, localhost)", host)
	}
	return nil
}
