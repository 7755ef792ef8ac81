package restart

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// The container labels this package reads.
const (
	LabelPolicy         = "vigil.io/restart-policy"
	LabelOnUnhealthy    = "vigil.io/restart-on-unhealthy"
	LabelBackoffInitial = "vigil.io/restart-backoff-initial"
	LabelBackoffMax     = "vigil.io/restart-backoff-max"
	LabelBackoffReset   = "vigil.io/restart-backoff-reset"

	// labelPrefix marks the labels of this package; an unknown label with
	// this prefix is reported as an error, because it is almost always a
	// typo of one of the labels above.
	labelPrefix = "vigil.io/restart-"
)

// Kind is a restart policy. Its values are the protocol's RestartPolicyKind
// numbers, so that the agent converts with a plain cast.
type Kind int

const (
	// KindNo never restarts (the default).
	KindNo Kind = iota + 1
	// KindAlways restarts after any exit, unless explicitly stopped.
	KindAlways
	// KindOnFailure restarts after a non-zero exit, up to MaxRetries times.
	KindOnFailure
	// KindUnlessStopped behaves as KindAlways: Vigil never restarts an
	// explicitly stopped container under either (as Docker, where the two
	// differ only in what happens when the daemon restarts).
	KindUnlessStopped
)

// String returns the label value of the kind ("no", "always", ...).
func (k Kind) String() string {
	switch k {
	case KindNo:
		return "no"
	case KindAlways:
		return "always"
	case KindOnFailure:
		return "on-failure"
	case KindUnlessStopped:
		return "unless-stopped"
	}
	return "unknown(" + strconv.Itoa(int(k)) + ")"
}

// MarshalText writes the kind as its label value, so that state files read well.
func (k Kind) MarshalText() ([]byte, error) {
	if k < KindNo || k > KindUnlessStopped {
		return nil, fmt.Errorf("restart policy kind %d: %w", int(k), errdefs.ErrInvalid)
	}
	return []byte(k.String()), nil
}

// UnmarshalText is the inverse of MarshalText.
func (k *Kind) UnmarshalText(b []byte) error {
	for c := KindNo; c <= KindUnlessStopped; c++ {
		if string(b) == c.String() {
			*k = c
			return nil
		}
	}
	return fmt.Errorf("restart policy kind %q: %w", b, errdefs.ErrInvalid)
}

// Backoff is the restart backoff of one container: the first restart after a
// reset is immediate, the next waits Initial, and every further one doubles
// the delay up to Max. A run that lasts ResetAfter (healthy, where a health
// check exists) resets it.
type Backoff struct {
	// Initial is the delay before the second consecutive restart.
	Initial time.Duration `json:"initial"`
	// Max caps the delay.
	Max time.Duration `json:"max"`
	// ResetAfter is how long a run must last, healthy where a health check
	// exists, to reset the backoff.
	ResetAfter time.Duration `json:"reset_after"`
	// CrashLoopAfter is the number of consecutive restarts without a reset
	// from which the container counts as crash-looping (it does too as soon
	// as the delay reaches Max). It is not settable per container.
	CrashLoopAfter int `json:"crash_loop_after"`
}

// DefaultBackoff returns the defaults the agent's flags start from:
// Initial 1s, Max 5m, ResetAfter 2m, CrashLoopAfter 5.
//
// Why, against Docker (100ms doubling to 1m, reset after 10s of run) and the
// kubelet (10s doubling to 5m, reset after 10m):
//   - The first restart is immediate and the second comes after 1s, so a
//     one-off crash costs about a second of downtime at most; Docker's 100ms
//     restarts a container that dies at start ten times in two seconds.
//   - The cap is the kubelet's 5m: a container that can never start costs one
//     create and start (about 170ms of containerd's CPU here) per five
//     minutes, reached after nine restarts (about eight minutes).
//   - ResetAfter bounds the cost of a container that always runs for a
//     while and then fails: it is restarted at most once per ResetAfter
//     without backing off. Docker's 10s allows 360 restarts an hour (a minute
//     of containerd CPU); 2m allows 30, while a process that needs a few
//     minutes to fail is still not treated as crash-looping as the kubelet's
//     10m would.
//   - CrashLoopAfter 5 flags a container after five failed starts in a row
//     (about 15s of crashing at the defaults), late enough that a dependency
//     that is briefly not ready does not raise it.
func DefaultBackoff() Backoff {
	return Backoff{Initial: time.Second, Max: 5 * time.Minute, ResetAfter: 2 * time.Minute, CrashLoopAfter: 5}
}

// Validate reports whether b is usable: Initial and ResetAfter positive, Max
// at least Initial, CrashLoopAfter at least 1.
func (b Backoff) Validate() error {
	var errs []error
	if b.Initial <= 0 {
		errs = append(errs, fmt.Errorf("backoff initial delay %s must be positive", b.Initial))
	}
	if b.Max < b.Initial {
		errs = append(errs, fmt.Errorf("backoff cap %s is below the initial delay %s", b.Max, b.Initial))
	}
	if b.ResetAfter <= 0 {
		errs = append(errs, fmt.Errorf("backoff reset-after %s must be positive", b.ResetAfter))
	}
	if b.CrashLoopAfter < 1 {
		errs = append(errs, fmt.Errorf("crash-loop threshold %d must be at least 1", b.CrashLoopAfter))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", errdefs.ErrInvalid, err)
	}
	return nil
}

// delay returns the backoff delay before restart number n since the last
// reset (n counts from 0): 0, Initial, 2*Initial, ... capped at Max.
func (b Backoff) delay(n int) time.Duration {
	if n <= 0 {
		return 0
	}
	d := b.Initial
	for i := 1; i < n && d < b.Max; i++ {
		if d > b.Max/2 {
			return b.Max
		}
		d *= 2
	}
	return min(d, b.Max)
}

// Policy is a container's parsed restart configuration.
type Policy struct {
	// Kind is the restart policy.
	Kind Kind `json:"kind"`
	// MaxRetries limits restarts under KindOnFailure; 0 means no limit.
	MaxRetries int `json:"max_retries,omitempty"`
	// RestartOnUnhealthy restarts the container when it turns unhealthy.
	RestartOnUnhealthy bool `json:"restart_on_unhealthy"`
	// HealthChecked says the container has a health check: a run then
	// resets the backoff only while healthy.
	HealthChecked bool `json:"health_checked"`
	// Backoff is the backoff in force for this container.
	Backoff Backoff `json:"backoff"`
}

// String returns the policy as its label value ("on-failure:3").
func (p Policy) String() string {
	if p.Kind == KindOnFailure && p.MaxRetries > 0 {
		return p.Kind.String() + ":" + strconv.Itoa(p.MaxRetries)
	}
	return p.Kind.String()
}

// maxRetriesLimit bounds N in on-failure:N; anything larger is a typo.
const maxRetriesLimit = 1 << 20

// Parse reads a container's restart labels over the agent's default backoff.
// healthChecked says whether the container has a health check (from labels
// or its image): restart-on-unhealthy defaults to true when it has one and
// the policy is not "no".
//
// Parse never guesses: any malformed or contradictory label makes it return
// an error that names each offending label and value (wrapping
// errdefs.ErrInvalid), together with the policy "no" over the defaults,
// which the container then runs with. Invalid defaults are an error too.
func Parse(labels map[string]string, defaults Backoff, healthChecked bool) (Policy, error) {
	safe := Policy{Kind: KindNo, HealthChecked: healthChecked, Backoff: defaults}
	if err := defaults.Validate(); err != nil {
		return safe, fmt.Errorf("agent restart defaults: %w", err)
	}
	p := safe
	var errs []error
	bad := func(label, value, why string) {
		errs = append(errs, fmt.Errorf("label %s=%q: %s", label, value, why))
	}

	if v, ok := labels[LabelPolicy]; ok {
		kind, n, why := parseKind(v)
		if why != "" {
			bad(LabelPolicy, v, why)
		}
		p.Kind, p.MaxRetries = kind, n
	}

	p.RestartOnUnhealthy = healthChecked && p.Kind != KindNo
	if v, ok := labels[LabelOnUnhealthy]; ok {
		switch v {
		case "true":
			p.RestartOnUnhealthy = true
			if p.Kind == KindNo && len(errs) == 0 {
				bad(LabelOnUnhealthy, v, "has no effect under restart policy \"no\"; set "+LabelPolicy)
			}
		case "false":
			p.RestartOnUnhealthy = false
		default:
			bad(LabelOnUnhealthy, v, `want "true" or "false"`)
		}
	}

	durations := []struct {
		label string
		dst   *time.Duration
	}{
		{LabelBackoffInitial, &p.Backoff.Initial},
		{LabelBackoffMax, &p.Backoff.Max},
		{LabelBackoffReset, &p.Backoff.ResetAfter},
	}
	durationsOK := true
	for _, d := range durations {
		v, ok := labels[d.label]
		if !ok {
			continue
		}
		dur, err := time.ParseDuration(v)
		switch {
		case err != nil:
			bad(d.label, v, "not a Go duration (e.g. 500ms, 10s, 5m)")
			durationsOK = false
		case dur <= 0:
			bad(d.label, v, "must be positive")
			durationsOK = false
		default:
			*d.dst = dur
		}
	}
	if durationsOK && p.Backoff.Max < p.Backoff.Initial {
		errs = append(errs, fmt.Errorf("backoff cap %s (label %s or the agent's default) is below the initial delay %s (label %s or the agent's default)",
			p.Backoff.Max, LabelBackoffMax, p.Backoff.Initial, LabelBackoffInitial))
	}

	var unknown []string
	for k := range labels {
		if strings.HasPrefix(k, labelPrefix) && k != LabelPolicy && k != LabelOnUnhealthy &&
			k != LabelBackoffInitial && k != LabelBackoffMax && k != LabelBackoffReset {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		errs = append(errs, fmt.Errorf("unknown label %s (known: %s, %s, %s, %s, %s)", k,
			LabelPolicy, LabelOnUnhealthy, LabelBackoffInitial, LabelBackoffMax, LabelBackoffReset))
	}

	if len(errs) > 0 {
		return safe, fmt.Errorf("%w: %w; the container runs with restart policy \"no\"", errdefs.ErrInvalid, errors.Join(errs...))
	}
	return p, nil
}

// parseKind parses a vigil.io/restart-policy value. why is empty when the
// value is valid.
func parseKind(v string) (kind Kind, maxRetries int, why string) {
	const want = `want "no", "always", "on-failure", "on-failure:N" or "unless-stopped"`
	name, count, hasCount := strings.Cut(v, ":")
	switch name {
	case "no":
		kind = KindNo
	case "always":
		kind = KindAlways
	case "unless-stopped":
		kind = KindUnlessStopped
	case "on-failure":
		kind = KindOnFailure
	default:
		return KindNo, 0, want
	}
	if !hasCount {
		return kind, 0, ""
	}
	if kind != KindOnFailure {
		return KindNo, 0, "a retry count is only allowed with on-failure; " + want
	}
	if count == "" || strings.TrimLeft(count, "0123456789") != "" {
		return KindNo, 0, "the retry count after on-failure: must be a decimal number (0 means no limit)"
	}
	n, err := strconv.Atoi(count)
	if err != nil || n > maxRetriesLimit {
		return KindNo, 0, fmt.Sprintf("the retry count is too large (at most %d)", maxRetriesLimit)
	}
	return kind, n, ""
}
