package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/statedir"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// TestSecondAgentOnStateDirRefused (issue 21): a second agent on the same
// state dir refuses to start and names the holder's pid; once the first
// stops, another starts.
func TestSecondAgentOnStateDirRefused(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(nil)
	cfg := DefaultConfig()
	cfg.NodeName, cfg.StateDir, cfg.ContainerdAddress, cfg.Network = "test-node", h.stateDir, h.env.Address, false
	_, err := New(cfg)
	if !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "pid ") {
		t.Fatalf("second agent: %v; want a conflict naming the pid", err)
	}
	h.stop()
	h.start(nil) // the lock was released
}

// TestCorruptStateFileKeepsCounters (issue 21): a state file corrupted
// between two agent runs is set aside, and the agent starts from the last
// good copy: the counters are kept (at most its last write behind), the
// recovery is visible in the agent's status and self-metrics.
func TestCorruptStateFileKeepsCounters(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(func(c *Config) { c.BackoffInitial = 100 * time.Millisecond; c.BackoffMax = 100 * time.Millisecond })
	h.run("crasher", map[string]string{"vigil.io/restart-policy": "on-failure:3"}, "exit", "1", "--after", "100ms")
	h.waitFor("crasher", "give up", 60*time.Second, isDecision(vigilv1.RestartDecisionKind_RESTART_DECISION_KIND_GIVE_UP))
	before := h.waitState("crasher", "4 exits counted", 10*time.Second, func(c *vigilv1.Container) bool {
		return exitsOf(c, vigilv1.ExitReason_EXIT_REASON_ERROR, 1) == 4
	})
	h.stop()
	path := filepath.Join(h.stateDir, statedir.FileName)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b[:len(b)/2], 0o600); err != nil { // a torn file
		t.Fatal(err)
	}
	h.start(nil)
	after := h.waitState("crasher", "known again", 30*time.Second, func(*vigilv1.Container) bool { return true })
	// The last write before the stop was at most one change (the give-up
	// decision's state, or the last exit): the counts are those of the
	// last good copy, never zero.
	if got := exitsOf(after, vigilv1.ExitReason_EXIT_REASON_ERROR, 1); got < 3 {
		t.Fatalf("exits after a corrupt state file = %d, want at least 3 (were %d)", got, exitsOf(before, vigilv1.ExitReason_EXIT_REASON_ERROR, 1))
	}
	if got := after.GetCounters().GetRestartsTotal(); got < 2 {
		t.Fatalf("restarts after a corrupt state file = %d, want at least 2 (were %d)", got, before.GetCounters().GetRestartsTotal())
	}
	if st := h.agentStatus(); st.GetStateRecoveredFrom() != "last-good" {
		t.Errorf("agent status says the state came from %q, want last-good", st.GetStateRecoveredFrom())
	}
	matches, _ := filepath.Glob(path + ".corrupt-*")
	if len(matches) != 1 {
		t.Errorf("the corrupt file was not set aside: %v", matches)
	}
}

// agentStatus is the running agent's own status, as it sends it upstream.
func (h *harness) agentStatus() *vigilv1.AgentStatus {
	h.mu.Lock()
	a := h.agent
	h.mu.Unlock()
	return a.nodeStatus().GetAgent()
}
