package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/pki"
)

// Config is everything the agent needs. Zero values take the defaults of
// DefaultConfig where noted; Validate says what is wrong.
type Config struct {
	// NodeName names this node in the fleet. Default: the host name.
	NodeName string
	// StateDir keeps lifetime counters and restart state across agent
	// restarts. Required.
	StateDir string

	// ContainerdAddress is containerd's socket.
	ContainerdAddress string
	// Namespaces limits the containerd namespaces watched; empty: all.
	Namespaces []string
	// CgroupRoot is where the cgroup filesystem is mounted.
	CgroupRoot string
	// StatsSource is "cgroup" (read cgroup files, the default) or
	// "metrics-api" (containerd's task Metrics API, for VM-isolated runtimes).
	StatsSource string
	// RuntimeCallTimeout bounds every containerd call.
	RuntimeCallTimeout time.Duration
	// SampleInterval is how often resources and network counters are read.
	SampleInterval time.Duration

	// AggregatorAddress is the aggregator's gRPC address; empty runs the
	// agent standalone (it still checks health and enforces policies).
	AggregatorAddress string
	// TLS are the agent's client certificate, key and the CA that signed the
	// aggregator's certificate. Required with an aggregator unless Insecure.
	TLS pki.Files
	// TLSServerName overrides the name checked in the aggregator's certificate.
	TLSServerName string
	// Insecure talks to the aggregator without TLS (demos only).
	Insecure bool
	// BufferSize is how many messages are kept until the aggregator
	// acknowledges them.
	BufferSize int

	// MetricsListen serves /metrics (this node's series and the agent's own)
	// and /healthz on this address; empty: no HTTP server.
	MetricsListen string

	// HealthWorkers bounds concurrent health probes.
	HealthWorkers int
	// BackoffInitial, BackoffMax and BackoffReset are the restart backoff
	// defaults; containers may override them with labels.
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	BackoffReset   time.Duration
	// StopGrace is how long a stop waits after SIGTERM before SIGKILL.
	StopGrace time.Duration

	// Network enables netlink monitoring of the host and container namespaces.
	Network bool

	// Version is the agent's build version, reported in the hello.
	Version string
	// Logger receives the agent's log; nil: slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the defaults. The restart backoff follows Docker's
// shape (it starts small so that a one-off crash is retried at once) with
// the kubelet's patience at the top (a crash-looping container is retried at
// most every 5 minutes, not every minute, so it does not hammer the node).
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		NodeName:           host,
		StateDir:           "/var/lib/vigil",
		ContainerdAddress:  "/run/containerd/containerd.sock",
		CgroupRoot:         "/sys/fs/cgroup",
		StatsSource:        "cgroup",
		RuntimeCallTimeout: 10 * time.Second,
		SampleInterval:     10 * time.Second,
		BufferSize:         10000,
		HealthWorkers:      16,
		BackoffInitial:     100 * time.Millisecond,
		BackoffMax:         5 * time.Minute,
		BackoffReset:       10 * time.Minute,
		StopGrace:          10 * time.Second,
		Network:            true,
		Version:            "dev",
	}
}

// Validate reports every problem of the configuration at once.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(format, args...))
	}
	if strings.TrimSpace(c.NodeName) == "" {
		bad("node name is empty (set --node-name)")
	}
	if c.StateDir == "" {
		bad("state dir is empty (set --state-dir)")
	}
	if c.ContainerdAddress == "" {
		bad("containerd address is empty (set --containerd)")
	}
	switch c.StatsSource {
	case "cgroup", "metrics-api":
	default:
		bad("stats source %q: want cgroup or metrics-api", c.StatsSource)
	}
	if c.SampleInterval < time.Second {
		bad("sample interval %v is below 1s", c.SampleInterval)
	}
	if c.RuntimeCallTimeout <= 0 {
		bad("runtime call timeout must be positive, got %v", c.RuntimeCallTimeout)
	}
	if c.AggregatorAddress != "" {
		if _, _, err := net.SplitHostPort(c.AggregatorAddress); err != nil {
			bad("aggregator address %q: %v", c.AggregatorAddress, err)
		}
		tlsSet := c.TLS.Cert != "" || c.TLS.Key != "" || c.TLS.CA != ""
		switch {
		case c.Insecure && tlsSet:
			bad("--insecure and --tls-* are both set: choose one")
		case !c.Insecure && (c.TLS.Cert == "" || c.TLS.Key == "" || c.TLS.CA == ""):
			bad("talking to an aggregator needs --tls-cert, --tls-key and --tls-ca (or --insecure for a demo)")
		}
	}
	if c.BufferSize < 100 {
		bad("buffer size %d is below 100", c.BufferSize)
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			bad("metrics listen address %q: %v", c.MetricsListen, err)
		}
	}
	if c.HealthWorkers < 1 {
		bad("health workers must be at least 1, got %d", c.HealthWorkers)
	}
	if c.BackoffInitial <= 0 || c.BackoffMax < c.BackoffInitial {
		bad("backoff: initial %v must be positive and not above max %v", c.BackoffInitial, c.BackoffMax)
	}
	if c.BackoffReset <= 0 {
		bad("backoff reset must be positive, got %v", c.BackoffReset)
	}
	if c.StopGrace < 0 {
		bad("stop grace must not be negative, got %v", c.StopGrace)
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid agent config: %w: %w", errors.Join(errs...), errdefs.ErrInvalid)
	}
	return nil
}
