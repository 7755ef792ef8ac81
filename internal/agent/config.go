package agent

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/pki"
	"github.com/vigilhq/vigil/internal/restart"
	"github.com/vigilhq/vigil/internal/runtime"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
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
	// ContainerLogMaxBytes caps each log file the agent makes for a
	// restarted task's output under StateDir/logs: above it, the file is
	// rotated into one older generation (runtime.Config.LogMaxBytes; 0:
	// runtime.DefaultLogMaxBytes).
	ContainerLogMaxBytes int64
	// FSUsageInterval is how often each running container's writable-layer
	// usage (what it wrote into its root filesystem, walked in its overlay
	// upper directory) is read for vigil_container_fs_usage_bytes; 0: off.
	// A walk costs as many files as the container wrote: keep it slow.
	FSUsageInterval time.Duration

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
	// MaxProbeTimeout caps every health probe's timeout (0: the health
	// package's default, a minute).
	MaxProbeTimeout time.Duration
	// BackoffInitial, BackoffMax and BackoffReset are the restart backoff
	// defaults; containers may override them with labels.
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	BackoffReset   time.Duration
	// StopGrace is how long a stop waits after SIGTERM before SIGKILL.
	StopGrace time.Duration
	// ShutdownGrace is how long a stopping agent lets the container actions
	// in flight (a restart, a stop) finish, with its containerd connection
	// open, before it abandons them. The next agent finishes an abandoned
	// restart; until it starts, the container may be down. 0: abandon at
	// once.
	ShutdownGrace time.Duration
	// StopWindow is the least time between a task's exit and its restart by
	// policy. An operator's stop through containerd (nerdctl stop, ctr task
	// kill then ctr task rm) kills the task and then deletes it; a restart
	// inside that gap would undo the stop, so Vigil waits this long for the
	// delete that marks a stop as explicit. It adds to the backoff's
	// immediate first restart; 0 disables it.
	StopWindow time.Duration

	// Network enables netlink monitoring of the host and container namespaces.
	Network bool
	// NetworkAffectsHealth makes a container whose network namespace has a
	// link down or no default route unhealthy (and so restarted under
	// restart-on-unhealthy) while it lasts. Off by default: the conditions
	// are always reported, but only an operator knows whether a container
	// without a route out is broken.
	NetworkAffectsHealth bool

	// AcceptCommands accepts commands from an aggregator reached without
	// TLS (Insecure), which could be anyone who can answer on its address.
	// Without it, such commands are refused. Commands from an aggregator
	// authenticated by TLS are always accepted.
	AcceptCommands bool
	// CommandNamespaces are the containerd namespaces in which commands may
	// act; empty: all. A command for another namespace is refused.
	CommandNamespaces []string
	// AllowHostLinkCommands lets LINK_UP act on links outside every
	// container's network namespace (the host's). Off: only containers'
	// links.
	AllowHostLinkCommands bool

	// Gossip is the agent's membership among its peers; the zero value is
	// off. See GossipConfig.
	Gossip GossipConfig

	// CommandResultSink, when set, receives every command result the agent
	// reports, from the decision loop or, for a result that waits until the
	// state dir holds it durably, from the state dir's flusher: it must be
	// safe for concurrent use and return quickly. For tests and embedding;
	// nil: none.
	CommandResultSink func(*vigilv1.CommandResult)

	// EventSink, when set, receives every container event the agent
	// produces, on the agent's decision loop: it must return quickly and must
	// not modify the event. For tests and embedding; nil: none.
	EventSink func(*vigilv1.ContainerEvent)

	// Version is the agent's build version, reported in the hello.
	Version string
	// Logger receives the agent's log; nil: slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the defaults. The restart backoff defaults are
// restart.DefaultBackoff's, whose doc comment says why they were chosen.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	b := restart.DefaultBackoff()
	return Config{
		NodeName:             host,
		StateDir:             "/var/lib/vigil",
		ContainerdAddress:    "/run/containerd/containerd.sock",
		CgroupRoot:           "/sys/fs/cgroup",
		StatsSource:          "cgroup",
		RuntimeCallTimeout:   10 * time.Second,
		SampleInterval:       10 * time.Second,
		ContainerLogMaxBytes: runtime.DefaultLogMaxBytes,
		FSUsageInterval:      time.Minute,
		BufferSize:           10000,
		HealthWorkers:        16,
		BackoffInitial:       b.Initial,
		BackoffMax:           b.Max,
		BackoffReset:         b.ResetAfter,
		StopGrace:            10 * time.Second,
		ShutdownGrace:        15 * time.Second,
		StopWindow:           250 * time.Millisecond,
		Network:              true,
		Version:              "dev",
	}
}

// Validate reports every problem of the configuration at once.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(format, args...))
	}
	if strings.TrimSpace(c.NodeName) == "" {
		bad("node name is empty")
	}
	if c.StateDir == "" {
		bad("state dir is empty")
	}
	if c.ContainerdAddress == "" {
		bad("containerd address is empty")
	}
	switch c.StatsSource {
	case "cgroup", "metrics-api":
	default:
		bad("stats source %q: want cgroup or metrics-api", c.StatsSource)
	}
	if c.SampleInterval < time.Second {
		bad("sample interval %v is below 1s", c.SampleInterval)
	}
	if c.FSUsageInterval != 0 && c.FSUsageInterval < time.Second {
		bad("fs usage interval %v: want 0 (off) or 1s or more", c.FSUsageInterval)
	}
	if c.ContainerLogMaxBytes < 0 {
		bad("container log max bytes must not be negative, got %d", c.ContainerLogMaxBytes)
	}
	if c.RuntimeCallTimeout <= 0 {
		bad("runtime call timeout must be positive, got %v", c.RuntimeCallTimeout)
	}
	if c.AggregatorAddress != "" {
		// Several replicas separated by commas; dns:///NAME:PORT.
		for _, a := range strings.Split(c.AggregatorAddress, ",") {
			if a = strings.TrimSpace(a); a == "" {
				continue
			}
			if _, _, err := net.SplitHostPort(strings.TrimPrefix(a, "dns:///")); err != nil {
				bad("aggregator address %q: %v", a, err)
			}
		}
		tlsSet := c.TLS.Cert != "" || c.TLS.Key != "" || c.TLS.CA != ""
		switch {
		case c.Insecure && tlsSet:
			bad("insecure and TLS files are both set: choose one")
		case !c.Insecure && (c.TLS.Cert == "" || c.TLS.Key == "" || c.TLS.CA == ""):
			bad("talking to an aggregator needs a TLS certificate, key and CA (or insecure, for a demo)")
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
	if c.MaxProbeTimeout < 0 {
		bad("the probe timeout cap must not be negative, got %v", c.MaxProbeTimeout)
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
	if c.ShutdownGrace < 0 {
		bad("shutdown grace must not be negative, got %v", c.ShutdownGrace)
	}
	if c.StopWindow < 0 || c.StopWindow > time.Minute {
		bad("stop window %v must be between 0 and 1m", c.StopWindow)
	}
	if c.AcceptCommands && !c.Insecure {
		bad("accepting commands without authentication is only for an aggregator reached without TLS (insecure); with TLS, commands are accepted")
	}
	for _, ns := range c.CommandNamespaces {
		if strings.TrimSpace(ns) == "" {
			bad("command namespaces hold an empty name")
		}
	}
	if c.Gossip.enabled() {
		errs = append(errs, c.Gossip.validate()...)
	}
	if c.NetworkAffectsHealth && !c.Network {
		bad("network affecting health needs network monitoring")
	}
	if len(errs) > 0 {
		msgs := make([]string, len(errs))
		for i, e := range errs {
			msgs[i] = e.Error()
		}
		return fmt.Errorf("invalid agent config: %s: %w", strings.Join(msgs, "; "), errdefs.ErrInvalid)
	}
	return nil
}
