package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/testenv"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// TestShimLostRestartIsNotARun: a restart whose create loses its shim
// ("ttrpc: closed", test/crash under load; here a createRuntime hook kills
// the shim) is no run of the container. Under on-failure:1, "recovers"
// loses its shim twice and is then restarted: the losses used none of its
// one restart. "always" loses its shim at every create: after
// shimLostRetryMax tries off the policy the next loss counts, and
// on-failure:1 gives up with a reason that names the shim.
func TestShimLostRestartIsNotARun(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(nil)
	policy := map[string]string{"vigil.io/restart-policy": "on-failure:1"}
	markers := map[string]string{}
	for _, id := range []string{"recovers", "always"} {
		markers[id] = filepath.Join(t.TempDir(), id)
		h.env.RunContainer(t, testenv.ContainerSpec{Namespace: h.ns, ID: id, Image: h.env.WorkloadImage(t, h.ns),
			Args: []string{"exit", "1", "--after", "1s"}, Labels: policy, Hooks: testenv.KillShimHooks(markers[id])})
		// The first task is made: from now on, every create kills its shim.
		if err := os.WriteFile(markers[id], nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	shimLosses := func(id string) int {
		a := h.agent
		a.mu.RLock()
		defer a.mu.RUnlock()
		if c, ok := a.containers[container.Key{Namespace: h.ns, ID: id}]; ok {
			return c.shimLostRetries
		}
		return 0
	}
	deadline := time.Now().Add(60 * time.Second)
	for shimLosses("recovers") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("recovers: %d restarts whose shim was lost, want 2; events:\n%s", shimLosses("recovers"), h.describe("recovers"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := os.Remove(markers["recovers"]); err != nil {
		t.Fatal(err)
	}
	h.waitFor("recovers", "a restart once its shim lives", 60*time.Second, restarted)
	// Its second exit uses the one restart on-failure:1 allows: the shim
	// losses did not.
	giveUp := isDecision(vigilv1.RestartDecisionKind_RESTART_DECISION_KIND_GIVE_UP)
	h.waitFor("recovers", "give-up after its second exit", 60*time.Second, giveUp)
	if n := h.count("recovers", exited); n != 2 {
		t.Errorf("recovers: %d exits, want 2 (the first run and the restarted one)\n%s", n, h.describe("recovers"))
	}

	// 1+2+4+8+16 s off the policy, then the sixth loss is counted.
	ev := h.waitFor("always", "give-up once its shim losses are counted", 120*time.Second, giveUp)
	if reason := ev.GetDecision().GetReason(); !strings.Contains(reason, "lost the task's shim 6 times in a row") {
		t.Errorf("always: give-up reason %q does not say the shim was lost", reason)
	}
	if n := h.count("always", restarted); n != 0 {
		t.Errorf("always: %d restarts, want none\n%s", n, h.describe("always"))
	}
	if st := h.containerState("always"); !st.GetBackoff().GetGaveUp() {
		t.Errorf("always: state %v, want given up", st)
	}
	if got := metricValue(t, h, "vigil_agent_restart_shim_lost_total", "result", "counted"); got != 1 {
		t.Errorf("shim losses counted against the policy: %v, want 1 (always's sixth)", got)
	}
	if got := metricValue(t, h, "vigil_agent_restart_shim_lost_total", "result", "retried"); got < 7 {
		t.Errorf("shim losses retried: %v, want at least 7 (always's 5, recovers' 2)", got)
	}
}
