package health

import (
	"time"
)

// Status is a container's health status, in Docker's vocabulary. Its values
// are the protocol's HealthStatus numbers, so that the agent converts with a
// plain cast.
type Status int

const (
	StatusNone      Status = iota + 1 // no health check
	StatusStarting                    // not yet healthy, failures within the start period do not count
	StatusHealthy                     // the last probe succeeded
	StatusUnhealthy                   // Retries consecutive probes failed
)

// String returns Docker's name of the status.
func (s Status) String() string {
	switch s {
	case StatusNone:
		return "none"
	case StatusStarting:
		return "starting"
	case StatusHealthy:
		return "healthy"
	case StatusUnhealthy:
		return "unhealthy"
	}
	return "unknown"
}

// HistoryLen is how many probe results a Health keeps.
const HistoryLen = 5

// Result is one probe run.
type Result struct {
	// Start is when the probe started.
	Start time.Time
	// Duration is how long it took.
	Duration time.Duration
	// OK is true when the probe succeeded.
	OK bool
	// Code is the exec exit code, the HTTP status code or the gRPC serving
	// status; -1 when the probe could not get that far.
	Code int
	// Output is the command's output, the response body, or the error,
	// capped.
	Output string
}

// Health is a container's health state: a snapshot, safe to keep.
type Health struct {
	// Status is the current status.
	Status Status
	// FailingStreak counts the consecutive failures that counted (failures
	// within the start period while starting do not).
	FailingStreak int
	// Kind is the probe kind.
	Kind Kind
	// Source is where the configuration came from (SourceLabel, SourceImage).
	Source string
	// Last holds the last HistoryLen results, oldest first.
	Last []Result
	// Probes and Failures count the probes run, and the failures that
	// counted (not those within the start period while starting), since the
	// container was added to the Scheduler, or since the Update that gave it
	// a new task (zero from a bare Machine), so that the agent can add them
	// to its lifetime counters.
	Probes, Failures uint64
}

// Machine is the health state machine of one container, with Docker's
// rules: it starts in StatusStarting; a success makes it healthy and clears
// the failing streak; a failure within the start period while still
// starting does not count; Retries counted failures in a row make it
// unhealthy; one success makes it healthy again. It does no I/O and is not
// safe for concurrent use.
type Machine struct {
	cfg       Config
	startedAt time.Time
	h         Health
}

// NewMachine returns the state machine of a container whose task started at
// startedAt, with the check cfg.
func NewMachine(cfg Config, startedAt time.Time) *Machine {
	return &Machine{cfg: cfg, startedAt: startedAt, h: Health{Status: StatusStarting, Kind: cfg.Kind, Source: cfg.Source}}
}

// Record applies one probe result and returns the status before it.
func (m *Machine) Record(r Result) (before Status) {
	before = m.h.Status
	if len(m.h.Last) == HistoryLen {
		copy(m.h.Last, m.h.Last[1:])
		m.h.Last = m.h.Last[:HistoryLen-1]
	}
	m.h.Last = append(m.h.Last, r)
	switch {
	case r.OK:
		m.h.FailingStreak = 0
		m.h.Status = StatusHealthy
	case m.h.Status == StatusStarting && r.Start.Before(m.startedAt.Add(m.cfg.StartPeriod)):
		// Within the start period: the failure does not count.
	default:
		m.h.FailingStreak++
		if m.h.FailingStreak >= m.cfg.Retries {
			m.h.Status = StatusUnhealthy
		}
	}
	return before
}

// Health returns a copy of the current state.
func (m *Machine) Health() Health {
	h := m.h
	h.Last = append([]Result(nil), m.h.Last...)
	return h
}

// Status returns the current status.
func (m *Machine) Status() Status { return m.h.Status }
