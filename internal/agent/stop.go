package agent

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/runtime"
)

// LabelStopTimeout is how long the agent waits, after the stop signal,
// before it kills a container's task with SIGKILL when it stops it (before
// an unhealthy restart, or for a STOP or RESTART command): Docker's
// --stop-timeout. A Go duration ("30s") or whole seconds ("30"), at most
// maxStopTimeout. Without it, the agent's --stop-grace.
const LabelStopTimeout = "vigil.io/stop-timeout"

// maxStopTimeout bounds LabelStopTimeout: a stop holds an action slot and
// the container's restart for that long.
const maxStopTimeout = 10 * time.Minute

// stopSpec is how the agent stops one container's task: the image's
// STOPSIGNAL (SIGTERM when it has none), then SIGKILL after grace.
type stopSpec struct {
	signal syscall.Signal
	grace  time.Duration
}

func (s stopSpec) options() []runtime.StopOption {
	return []runtime.StopOption{runtime.WithStopSignal(s.signal)}
}

// parseStopSpec reads c's stop signal (runtime.Container.StopSignal) and
// LabelStopTimeout. What is malformed is reported in errs and replaced by
// the default (SIGTERM, defaultGrace): a container is always stoppable.
func parseStopSpec(c *runtime.Container, defaultGrace time.Duration) (spec stopSpec, errs []error) {
	spec = stopSpec{signal: syscall.SIGTERM, grace: defaultGrace}
	if c.StopSignal != "" {
		sig, err := runtime.ParseSignal(c.StopSignal)
		if err != nil {
			errs = append(errs, fmt.Errorf("stop signal of the image: %w", err))
		} else {
			spec.signal = sig
		}
	}
	if v, ok := c.Labels[LabelStopTimeout]; ok {
		d, err := parseStopTimeout(v)
		if err != nil {
			errs = append(errs, err)
		} else {
			spec.grace = d
		}
	}
	return spec, errs
}

func parseStopTimeout(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	d, err := time.ParseDuration(v)
	if err != nil {
		n, nerr := strconv.Atoi(v)
		if nerr != nil {
			return 0, fmt.Errorf("label %s=%q: want a duration (30s) or whole seconds (30): %w", LabelStopTimeout, v, errdefs.ErrInvalid)
		}
		d = time.Duration(n) * time.Second
	}
	if d < 0 || d > maxStopTimeout {
		return 0, fmt.Errorf("label %s=%q: want between 0 and %v: %w", LabelStopTimeout, v, maxStopTimeout, errdefs.ErrInvalid)
	}
	return d, nil
}

// stopSpecLocked is how t is stopped now. Called with a.mu held.
func (a *Agent) stopSpecLocked(t *tracked) stopSpec {
	spec, _ := parseStopSpec(&t.c, a.cfg.StopGrace)
	return spec
}
