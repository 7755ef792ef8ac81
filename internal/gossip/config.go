package gossip

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// DefaultPort is the gossip port (UDP and TCP) when Config.BindPort is 0:
// memberlist's and Serf's usual port.
const DefaultPort = 7946

// Config configures a Member. The zero value of every field but Name means
// its default, filled in one place (withDefaults); New validates the rest.
type Config struct {
	// Name is the member's name: the node name. A node that comes back
	// with another address under the same name is the same member (see
	// DeadNodeReclaimTime). Required.
	Name string
	// AgentVersion is advertised in the member's metadata (cut to
	// MaxVersionLen bytes).
	AgentVersion string

	// BindAddr is the address to listen on for UDP and TCP gossip; empty:
	// 0.0.0.0.
	BindAddr string
	// BindPort is the port; 0: DefaultPort. Negative: an ephemeral port
	// chosen by the kernel (tests).
	BindPort int
	// AdvertiseAddr is the address peers should use to reach this member;
	// empty: memberlist picks BindAddr, or the first private address when
	// BindAddr is 0.0.0.0. Set it to the pod IP in Kubernetes.
	AdvertiseAddr string
	// AdvertisePort is the advertised port; 0: the bound port.
	AdvertisePort int

	// Seeds are peers to join, "host:port" or "host" (port: BindPort or
	// DefaultPort). Joining needs one of them, or of SeedDNS's addresses,
	// to answer; the member keeps trying in the background.
	Seeds []string
	// SeedDNS is a DNS name ("name" or "name:port") whose A and AAAA
	// records are seeds, e.g. a headless Service of the agents. Resolved
	// again at every join attempt, so it may be empty at first.
	SeedDNS string
	// Resolver resolves SeedDNS; nil: net.DefaultResolver.
	Resolver Resolver

	// JoinBackoffInitial is the wait after a failed join attempt; it
	// doubles after each failure up to JoinBackoffMax. Default 500ms.
	JoinBackoffInitial time.Duration
	// JoinBackoffMax bounds that wait, and is also how often a member that
	// sees no alive peer tries its seeds again (a healed partition, a
	// cluster restarted around it). Default 30s.
	JoinBackoffMax time.Duration

	// KeyFile holds the gossip encryption keys: one base64 key (16, 24 or
	// 32 bytes) per line, the first is primary; blank lines and lines
	// starting with # are skipped. Empty: gossip is not encrypted (tests
	// and demos only; the agent's flag should require it in production).
	KeyFile string
	// KeyReloadInterval is how often KeyFile is read again; default 10s.
	// ReloadKeys reloads at once (e.g. on SIGHUP).
	KeyReloadInterval time.Duration
	// ClusterLabel is memberlist's label, sent with (and, when encrypted,
	// authenticated with) every packet: members with another label ignore
	// this cluster. Default "vigil".
	ClusterLabel string

	// The failure detector. Defaults and why: tunables.go.
	ProbeInterval           time.Duration // default 1s
	ProbeTimeout            time.Duration // default 500ms
	IndirectChecks          int           // default 3
	SuspicionMult           int           // default 3
	SuspicionMaxTimeoutMult int           // default 6
	GossipInterval          time.Duration // default 200ms
	GossipNodes             int           // default 3
	RetransmitMult          int           // default 4
	PushPullInterval        time.Duration // default 30s
	GossipToTheDeadTime     time.Duration // default 30s
	// TCPTimeout bounds a stream (join, push/pull) to one peer; default
	// 5s. A join in flight when Run's context ends delays Run's return by
	// at most this.
	TCPTimeout time.Duration
	// DeadNodeReclaimTime is how long a member must have been dead before
	// its name may be taken by an address it did not have; default 1ms
	// (at once). See tunables.go.
	DeadNodeReclaimTime time.Duration

	// EventQueue bounds the queue from memberlist's delegates to the
	// goroutine that keeps the view; default 1024. When it is full, events
	// are dropped and the view is rebuilt from memberlist's member list
	// once the queue has drained (resync): states stay right, but a
	// rebuilt member's "since" is the time of the rebuild and a member
	// seen dead by a dropped event is marked dead without knowing whether
	// it left. Counted in vigil_agent_gossip_resyncs_total.
	EventQueue int
	// ForgetAfter is how long a dead or left peer stays in the view;
	// default 1h. memberlist itself forgets them after
	// GossipToTheDeadTime.
	ForgetAfter time.Duration
	// LeaveTimeout bounds the graceful leave when Run's context ends;
	// default 2s.
	LeaveTimeout time.Duration

	// Logger receives the member's log, memberlist's included; nil:
	// slog.Default().
	Logger *slog.Logger
	// Transport replaces memberlist's UDP/TCP transport (tests and
	// benchmarks: memberlist.MockNetwork). nil: a NetTransport on
	// BindAddr:BindPort.
	Transport memberlist.NodeAwareTransport
}

// Resolver resolves a DNS name to its addresses. *net.Resolver is one.
type Resolver interface {
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
}

var _ Resolver = (*net.Resolver)(nil)

// withDefaults returns c with every unset field at its default.
func (c Config) withDefaults() Config {
	set := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	seti := func(i *int, v int) {
		if *i == 0 {
			*i = v
		}
	}
	if c.BindAddr == "" {
		c.BindAddr = "0.0.0.0"
	}
	switch {
	case c.BindPort == 0:
		c.BindPort = DefaultPort
	case c.BindPort < 0:
		c.BindPort = 0
	}
	if c.Resolver == nil {
		c.Resolver = net.DefaultResolver
	}
	if c.ClusterLabel == "" {
		c.ClusterLabel = "vigil"
	}
	set(&c.JoinBackoffInitial, 500*time.Millisecond)
	set(&c.JoinBackoffMax, 30*time.Second)
	set(&c.KeyReloadInterval, 10*time.Second)
	set(&c.ProbeInterval, DefaultProbeInterval)
	set(&c.ProbeTimeout, DefaultProbeTimeout)
	seti(&c.IndirectChecks, 3)
	seti(&c.SuspicionMult, DefaultSuspicionMult)
	seti(&c.SuspicionMaxTimeoutMult, DefaultSuspicionMaxTimeoutMult)
	set(&c.GossipInterval, 200*time.Millisecond)
	seti(&c.GossipNodes, 3)
	seti(&c.RetransmitMult, 4)
	set(&c.PushPullInterval, 30*time.Second)
	set(&c.GossipToTheDeadTime, 30*time.Second)
	set(&c.DeadNodeReclaimTime, time.Millisecond)
	set(&c.TCPTimeout, 5*time.Second)
	seti(&c.EventQueue, 1024)
	set(&c.ForgetAfter, time.Hour)
	set(&c.LeaveTimeout, 2*time.Second)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// validate checks a config that has its defaults.
func (c Config) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("gossip: %s: %w", fmt.Sprintf(format, args...), errdefs.ErrInvalid)
	}
	if c.Name == "" {
		return bad("a member name (the node name) is required")
	}
	if len(c.Name) > 255 {
		return bad("member name %q is longer than 255 bytes", c.Name[:32]+"...")
	}
	if _, err := netip.ParseAddr(c.BindAddr); err != nil {
		return bad("bind address %q: %v", c.BindAddr, err)
	}
	if c.BindPort > 65535 {
		return bad("bind port %d is out of range", c.BindPort)
	}
	if c.AdvertiseAddr != "" {
		if _, err := netip.ParseAddr(c.AdvertiseAddr); err != nil {
			return bad("advertise address %q: %v", c.AdvertiseAddr, err)
		}
	}
	if c.AdvertisePort < 0 || c.AdvertisePort > 65535 {
		return bad("advertise port %d is out of range", c.AdvertisePort)
	}
	for _, s := range c.Seeds {
		if _, _, err := splitSeed(s, 1); err != nil {
			return bad("seed %q: %v", s, err)
		}
	}
	if c.SeedDNS != "" {
		if _, _, err := splitSeed(c.SeedDNS, 1); err != nil {
			return bad("seed DNS name %q: %v", c.SeedDNS, err)
		}
	}
	if c.ProbeTimeout >= c.ProbeInterval {
		return bad("probe timeout %v must be shorter than the probe interval %v", c.ProbeTimeout, c.ProbeInterval)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"join backoff", c.JoinBackoffInitial}, {"join backoff max", c.JoinBackoffMax},
		{"key reload interval", c.KeyReloadInterval}, {"probe interval", c.ProbeInterval},
		{"probe timeout", c.ProbeTimeout}, {"gossip interval", c.GossipInterval},
		{"push/pull interval", c.PushPullInterval}, {"gossip to the dead time", c.GossipToTheDeadTime},
		{"dead node reclaim time", c.DeadNodeReclaimTime}, {"forget after", c.ForgetAfter},
		{"leave timeout", c.LeaveTimeout}, {"TCP timeout", c.TCPTimeout},
	} {
		if d.v < 0 {
			return bad("%s %v is negative", d.name, d.v)
		}
	}
	for _, i := range []struct {
		name string
		v    int
	}{
		{"indirect checks", c.IndirectChecks}, {"suspicion multiplier", c.SuspicionMult},
		{"suspicion max timeout multiplier", c.SuspicionMaxTimeoutMult}, {"gossip nodes", c.GossipNodes},
		{"retransmit multiplier", c.RetransmitMult}, {"event queue", c.EventQueue},
	} {
		if i.v < 1 {
			return bad("%s %d must be at least 1", i.name, i.v)
		}
	}
	return nil
}

// splitSeed splits "host[:port]" into host and port, defaultPort when none
// is given. host is an IP address (IPv6 in brackets when a port follows)
// or a DNS name; anything else (a stray colon or bracket, spaces, an empty
// label) is an error rather than a name that could never resolve.
func splitSeed(s string, defaultPort int) (string, int, error) {
	if s == "" {
		return "", 0, fmt.Errorf("empty")
	}
	if addr, err := netip.ParseAddr(s); err == nil { // a bare address, IPv6 included
		return addr.String(), defaultPort, nil
	}
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		if !validHostName(s) {
			return "", 0, fmt.Errorf("want host, host:port, an IP address or [IPv6]:port")
		}
		return s, defaultPort, nil // a bare name
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("port %q is not a number from 1 to 65535", portStr)
	}
	if host == "" {
		return "", 0, fmt.Errorf("no host")
	}
	if addr, err := netip.ParseAddr(host); err == nil {
		return addr.String(), port, nil
	}
	if strings.HasPrefix(s, "[") { // brackets are for IPv6 addresses
		return "", 0, fmt.Errorf("%q in brackets is not an IPv6 address", host)
	}
	if !validHostName(host) {
		return "", 0, fmt.Errorf("host %q is neither an IP address nor a DNS name", host)
	}
	return host, port, nil
}

// validHostName reports whether h has the form of a DNS name: at most 253
// bytes (a final dot aside) of labels of 1 to 63 letters, digits, '-' and
// '_' separated by dots.
func validHostName(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// memberlistConfig translates c (with its defaults) into memberlist's.
func (c Config) memberlistConfig() *memberlist.Config {
	mc := memberlist.DefaultLANConfig()
	mc.Name = c.Name
	mc.BindAddr = c.BindAddr
	mc.BindPort = c.BindPort
	mc.AdvertiseAddr = c.AdvertiseAddr
	mc.AdvertisePort = c.AdvertisePort
	if mc.AdvertisePort == 0 {
		mc.AdvertisePort = c.BindPort // 0 (ephemeral): memberlist sets both to the port it got
	}
	mc.Label = c.ClusterLabel
	mc.ProbeInterval = c.ProbeInterval
	mc.ProbeTimeout = c.ProbeTimeout
	mc.IndirectChecks = c.IndirectChecks
	mc.SuspicionMult = c.SuspicionMult
	mc.SuspicionMaxTimeoutMult = c.SuspicionMaxTimeoutMult
	mc.GossipInterval = c.GossipInterval
	mc.GossipNodes = c.GossipNodes
	mc.RetransmitMult = c.RetransmitMult
	mc.PushPullInterval = c.PushPullInterval
	mc.GossipToTheDeadTime = c.GossipToTheDeadTime
	mc.DeadNodeReclaimTime = c.DeadNodeReclaimTime
	mc.TCPTimeout = c.TCPTimeout
	if c.Transport != nil {
		mc.Transport = c.Transport
	}
	return mc
}
