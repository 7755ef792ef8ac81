package health

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/runtime"
)

// The container labels this package reads.
const (
	LabelCmd         = "vigil.io/health-cmd"
	LabelHTTP        = "vigil.io/health-http"
	LabelTCP         = "vigil.io/health-tcp"
	LabelGRPC        = "vigil.io/health-grpc"
	LabelInterval    = "vigil.io/health-interval"
	LabelTimeout     = "vigil.io/health-timeout"
	LabelStartPeriod = "vigil.io/health-start-period"
	LabelRetries     = "vigil.io/health-retries"

	labelPrefix = "vigil.io/health-"
)

// Docker's defaults for what a health check leaves unset.
const (
	DefaultInterval    = 30 * time.Second
	DefaultTimeout     = 30 * time.Second
	DefaultStartPeriod = 0
	DefaultRetries     = 3
)

// MinInterval is the shortest interval accepted from labels or an image:
// the agent probes a whole node, and a sub-second interval on hundreds of
// containers would cost more than the checks are worth.
const MinInterval = time.Second

// maxRetries bounds the retries label; anything larger is a typo.
const maxRetries = 1000

// Kind is a probe kind.
type Kind int

const (
	KindExec Kind = iota + 1 // a command run inside the container
	KindHTTP                 // HTTP GET in the container's network namespace
	KindTCP                  // TCP connect in the container's network namespace
	KindGRPC                 // grpc.health.v1 Check in the container's network namespace
)

// String returns the kind's name as the protocol carries it ("exec",
// "http", "tcp", "grpc").
func (k Kind) String() string {
	switch k {
	case KindExec:
		return "exec"
	case KindHTTP:
		return "http"
	case KindTCP:
		return "tcp"
	case KindGRPC:
		return "grpc"
	}
	return "unknown"
}

// Where a configuration came from, as the protocol's Health.source says.
const (
	SourceLabel = "label"
	SourceImage = "image"
)

// Config is one container's health check.
type Config struct {
	// Kind is the probe kind.
	Kind Kind
	// Source is SourceLabel or SourceImage.
	Source string
	// Command is the argv run inside the container (KindExec). A shell
	// command is ["/bin/sh", "-c", cmd].
	Command []string
	// Addr is the address probed inside the container's network namespace
	// (KindHTTP, KindTCP, KindGRPC); 127.0.0.1 unless the label names an IP.
	Addr netip.AddrPort
	// Path is the HTTP request's path and query (KindHTTP).
	Path string
	// Service is the grpc.health.v1 service name; "" asks about the server
	// as a whole (KindGRPC).
	Service string
	// Interval is the time between the starts of two probes; a probe that
	// overruns it pushes the next one to an interval after it ended.
	Interval time.Duration
	// Timeout bounds one probe.
	Timeout time.Duration
	// StartPeriod is how long after the task starts failures do not count.
	StartPeriod time.Duration
	// Retries is the number of consecutive failures that make the container
	// unhealthy.
	Retries int
}

// Validate reports whether c can be scheduled: a known kind with its
// target, and positive Interval, Timeout and Retries. (The parsers are
// stricter: they refuse intervals under MinInterval.)
func (c Config) Validate() error {
	var errs []error
	switch c.Kind {
	case KindExec:
		if len(c.Command) == 0 {
			errs = append(errs, errors.New("exec probe without a command"))
		}
	case KindHTTP, KindTCP, KindGRPC:
		if !c.Addr.IsValid() || c.Addr.Port() == 0 {
			errs = append(errs, fmt.Errorf("%s probe without an address", c.Kind))
		}
	default:
		errs = append(errs, fmt.Errorf("unknown probe kind %d", int(c.Kind)))
	}
	if c.Interval <= 0 || c.Timeout <= 0 || c.StartPeriod < 0 || c.Retries < 1 {
		errs = append(errs, fmt.Errorf("interval %s, timeout %s, start period %s, retries %d: want interval, timeout and retries positive, start period not negative",
			c.Interval, c.Timeout, c.StartPeriod, c.Retries))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("health config: %w: %w", errdefs.ErrInvalid, err)
	}
	return nil
}

// String describes the probe for logs ("http 127.0.0.1:8080/healthz every 5s").
func (c Config) String() string {
	var what string
	switch c.Kind {
	case KindExec:
		what = "exec " + strconv.Quote(strings.Join(c.Command, " "))
	case KindHTTP:
		what = "http " + c.Addr.String() + c.Path
	case KindTCP:
		what = "tcp " + c.Addr.String()
	case KindGRPC:
		what = "grpc " + c.Addr.String()
		if c.Service != "" {
			what += "/" + c.Service
		}
	default:
		what = "unknown probe"
	}
	return fmt.Sprintf("%s every %s (timeout %s, start period %s, retries %d, from %s)",
		what, c.Interval, c.Timeout, c.StartPeriod, c.Retries, c.Source)
}

// ParseConfig returns a container's health check: from its vigil.io/health-*
// labels, else from its image's Docker Healthcheck (image may be nil). ok is
// false when the container has no health check or is not ours to probe: the
// kubelet probes its own containers, and dockerd runs the image's HEALTHCHECK
// of its containers (labels on those are still honoured).
//
// Timing labels without a probe label override the image's timings, as
// `docker run --health-interval` does. Exactly one of the probe labels may
// be set. Any malformed, conflicting or unknown vigil.io/health-* label is
// an error naming the label and its value (wrapping errdefs.ErrInvalid);
// the container is then not probed.
func ParseConfig(labels map[string]string, image *runtime.Healthcheck, manager runtime.Manager) (cfg Config, ok bool, err error) {
	if manager == runtime.ManagerKubelet {
		return Config{}, false, nil
	}
	cfg = Config{Interval: DefaultInterval, Timeout: DefaultTimeout, StartPeriod: DefaultStartPeriod, Retries: DefaultRetries}
	var errs []error
	bad := func(label, value, why string) {
		errs = append(errs, fmt.Errorf("label %s=%q: %s", label, value, why))
	}

	var probes []string
	for _, l := range []string{LabelCmd, LabelHTTP, LabelTCP, LabelGRPC} {
		if _, set := labels[l]; set {
			probes = append(probes, l)
		}
	}
	switch {
	case len(probes) > 1:
		errs = append(errs, fmt.Errorf("labels %s conflict: set exactly one probe", strings.Join(probes, ", ")))
	case len(probes) == 1:
		cfg.Source = SourceLabel
		v := labels[probes[0]]
		var why string
		switch probes[0] {
		case LabelCmd:
			cfg.Kind = KindExec
			if strings.TrimSpace(v) == "" {
				why = "empty command"
			}
			cfg.Command = []string{"/bin/sh", "-c", v}
		case LabelHTTP:
			cfg.Kind = KindHTTP
			cfg.Addr, cfg.Path, why = parseHTTP(v)
		case LabelTCP:
			cfg.Kind = KindTCP
			cfg.Addr, why = parseHostPort(v)
			if why != "" {
				why += `; want ":PORT" or "IP:PORT"`
			}
		case LabelGRPC:
			cfg.Kind = KindGRPC
			hostPort, service, _ := strings.Cut(v, "/")
			cfg.Addr, why = parseHostPort(hostPort)
			if why != "" {
				why += `; want ":PORT[/SERVICE]"`
			}
			cfg.Service = service
		}
		if why != "" {
			bad(probes[0], v, why)
		}
	case image != nil && manager != runtime.ManagerDocker:
		cfg.Source = SourceImage
		none, why := fromImage(&cfg, image)
		if why != "" {
			errs = append(errs, fmt.Errorf("image healthcheck %q: %s", image.Test, why))
		} else if none {
			cfg.Source = ""
		}
	}

	// Timing labels.
	durations := []struct {
		label string
		dst   *time.Duration
		min   time.Duration
	}{
		{LabelInterval, &cfg.Interval, MinInterval},
		{LabelTimeout, &cfg.Timeout, time.Millisecond},
		{LabelStartPeriod, &cfg.StartPeriod, 0},
	}
	timing := []string{}
	for _, d := range durations {
		v, set := labels[d.label]
		if !set {
			continue
		}
		timing = append(timing, d.label)
		dur, perr := time.ParseDuration(v)
		switch {
		case perr != nil:
			bad(d.label, v, "not a Go duration (e.g. 500ms, 10s, 1m)")
		case dur < d.min || (d.min == 0 && dur < 0):
			bad(d.label, v, "must be at least "+d.min.String())
		default:
			*d.dst = dur
		}
	}
	if v, set := labels[LabelRetries]; set {
		timing = append(timing, LabelRetries)
		n, perr := strconv.Atoi(v)
		if perr != nil || n < 1 || n > maxRetries || strings.TrimLeft(v, "0123456789") != "" {
			bad(LabelRetries, v, fmt.Sprintf("want an integer from 1 to %d", maxRetries))
		} else {
			cfg.Retries = n
		}
	}

	var unknown []string
	for k := range labels {
		if strings.HasPrefix(k, labelPrefix) && !knownLabel(k) {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		errs = append(errs, fmt.Errorf("unknown label %s (known: %s)", k, strings.Join(knownLabels, ", ")))
	}

	if len(errs) == 0 && cfg.Source == "" && len(timing) > 0 {
		errs = append(errs, fmt.Errorf("labels %s set without a probe: set one of %s, %s, %s, %s (the image has no HEALTHCHECK)",
			strings.Join(timing, ", "), LabelCmd, LabelHTTP, LabelTCP, LabelGRPC))
	}
	if len(errs) > 0 {
		return Config{}, false, fmt.Errorf("%w: %w; the container is not health-checked", errdefs.ErrInvalid, errors.Join(errs...))
	}
	if cfg.Source == "" {
		return Config{}, false, nil
	}
	return cfg, true, nil
}

var knownLabels = []string{LabelCmd, LabelHTTP, LabelTCP, LabelGRPC, LabelInterval, LabelTimeout, LabelStartPeriod, LabelRetries}

func knownLabel(k string) bool {
	for _, l := range knownLabels {
		if k == l {
			return true
		}
	}
	return false
}

// fromImage fills cfg from a Docker Healthcheck, with Docker's defaults for
// zero fields. none is true for NONE or an empty test (no health check).
func fromImage(cfg *Config, hc *runtime.Healthcheck) (none bool, why string) {
	if len(hc.Test) == 0 {
		return true, ""
	}
	switch hc.Test[0] {
	case "NONE":
		return true, ""
	case "CMD":
		if len(hc.Test) < 2 || hc.Test[1] == "" {
			return false, "CMD without a command"
		}
		cfg.Kind, cfg.Command = KindExec, append([]string(nil), hc.Test[1:]...)
	case "CMD-SHELL":
		cmd := strings.Join(hc.Test[1:], " ")
		if strings.TrimSpace(cmd) == "" {
			return false, "CMD-SHELL without a command"
		}
		cfg.Kind, cfg.Command = KindExec, []string{"/bin/sh", "-c", cmd}
	default:
		return false, `want "CMD", "CMD-SHELL" or "NONE" first`
	}
	switch {
	case hc.Interval < 0, hc.Timeout < 0, hc.StartPeriod < 0, hc.Retries < 0:
		return false, fmt.Sprintf("negative interval %s, timeout %s, start period %s or retries %d",
			hc.Interval, hc.Timeout, hc.StartPeriod, hc.Retries)
	case hc.Interval > 0 && hc.Interval < MinInterval:
		return false, fmt.Sprintf("interval %s is below the agent's minimum %s", hc.Interval, MinInterval)
	}
	if hc.Interval > 0 {
		cfg.Interval = hc.Interval
	}
	if hc.Timeout > 0 {
		cfg.Timeout = hc.Timeout
	}
	cfg.StartPeriod = hc.StartPeriod
	if hc.Retries > 0 {
		cfg.Retries = hc.Retries
	}
	return false, ""
}

// parseHTTP parses http://:PORT/PATH (or http://IP:PORT/PATH).
func parseHTTP(v string) (netip.AddrPort, string, string) {
	const want = `; want "http://:PORT/PATH"`
	u, err := url.Parse(v)
	if err != nil {
		return netip.AddrPort{}, "", "not a URL" + want
	}
	if u.Scheme != "http" {
		return netip.AddrPort{}, "", "scheme must be http" + want
	}
	if u.User != nil || u.Fragment != "" || u.Opaque != "" {
		return netip.AddrPort{}, "", "user info, fragment or opaque part not allowed" + want
	}
	ap, why := parseHostPort(u.Host)
	if why != "" {
		return netip.AddrPort{}, "", why + want
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	if u.RawQuery != "" {
		path += "?" + u.RawQuery
	}
	return ap, path, ""
}

// parseHostPort parses ":PORT" or "IP:PORT" (an IP literal: there is no
// name resolution inside a container's network namespace). The empty host
// is 127.0.0.1.
func parseHostPort(v string) (netip.AddrPort, string) {
	i := strings.LastIndexByte(v, ':')
	if i < 0 {
		return netip.AddrPort{}, "no port"
	}
	host, port := v[:i], v[i+1:]
	if port == "" || strings.TrimLeft(port, "0123456789") != "" {
		return netip.AddrPort{}, "the port must be a number from 1 to 65535"
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return netip.AddrPort{}, "the port must be a number from 1 to 65535"
	}
	addr := netip.AddrFrom4([4]byte{127, 0, 0, 1})
	if host != "" {
		h := strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
		a, err := netip.ParseAddr(h)
		if err != nil || a.Zone() != "" || (a.Is6() && !strings.HasPrefix(host, "[")) {
			return netip.AddrPort{}, fmt.Sprintf("host %q is not an IP literal (no names: there is no DNS inside the namespace)", host)
		}
		addr = a.Unmap()
	}
	return netip.AddrPortFrom(addr, uint16(p)), ""
}
