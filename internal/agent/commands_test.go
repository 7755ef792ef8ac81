package agent

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/runtime"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

func TestCommandPolicyRefusal(t *testing.T) {
	const (
		kill    = vigilv1.RemediationAction_REMEDIATION_ACTION_KILL
		stop    = vigilv1.RemediationAction_REMEDIATION_ACTION_STOP
		restart = vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART
		start   = vigilv1.RemediationAction_REMEDIATION_ACTION_START
		linkUp  = vigilv1.RemediationAction_REMEDIATION_ACTION_LINK_UP
	)
	open := commandPolicy{authenticated: true}
	vigil := commandTarget{namespace: "default", found: true, manager: runtime.ManagerVigil}
	kubelet := commandTarget{namespace: "k8s.io", found: true, manager: runtime.ManagerKubelet}
	docker := commandTarget{namespace: "moby", found: true, manager: runtime.ManagerDocker}
	monitor := commandTarget{namespace: "default", found: true, manager: runtime.ManagerContainerd}
	for _, tc := range []struct {
		name   string
		policy commandPolicy
		action vigilv1.RemediationAction
		target commandTarget
		refuse string // substring of the refusal; "" for obeyed
	}{
		{"authenticated restart", open, restart, vigil, ""},
		{"authenticated stop", open, stop, vigil, ""},
		{"start", open, start, vigil, ""},
		{"insecure without accept-commands", commandPolicy{}, kill, vigil, "set to accept commands anyway"},
		{"insecure link", commandPolicy{hostLinks: true}, linkUp, commandTarget{}, "set to accept commands anyway"},
		{"namespace not allowed", commandPolicy{authenticated: true, namespaces: []string{"prod"}}, kill, vigil, "not among the namespaces the agent allows commands in"},
		{"namespace allowed", commandPolicy{authenticated: true, namespaces: []string{"default"}}, kill, vigil, ""},
		{"unknown container, allowed namespace", open, kill, commandTarget{namespace: "default"}, ""},
		{"kubelet kill", open, kill, kubelet, ""},
		{"kubelet restart is a kill", open, restart, kubelet, ""},
		{"kubelet stop", open, stop, kubelet, "managed by kubelet"},
		{"kubelet start", open, start, kubelet, "managed by kubelet"},
		{"dockerd stop", open, stop, docker, "managed by docker"},
		{"restart monitor stop", open, stop, monitor, "managed by containerd"},
		{"container link", open, linkUp, vigil, ""},
		{"kubelet pod's link", open, linkUp, kubelet, ""},
		{"host link refused", open, linkUp, commandTarget{}, "not set to allow commands on host links"},
		{"host link allowed", commandPolicy{authenticated: true, hostLinks: true}, linkUp, commandTarget{}, ""},
		{"container link outside the allowlist", commandPolicy{authenticated: true, namespaces: []string{"prod"}}, linkUp, vigil, "not among the namespaces the agent allows commands in"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.policy.refusal(tc.action, tc.target)
			switch {
			case tc.refuse == "" && got != "":
				t.Errorf("refused: %q", got)
			case tc.refuse != "" && !strings.Contains(got, tc.refuse):
				t.Errorf("refusal %q, want one naming %q", got, tc.refuse)
			}
			// The package says the setting; only cmd/agent knows its flags.
			if strings.Contains(got, "--") {
				t.Errorf("refusal %q names a flag", got)
			}
		})
	}
}

func TestFenceBroken(t *testing.T) {
	k := container.Key{Namespace: "default", ID: "web"}
	for _, tc := range []struct {
		fence *vigilv1.Fence
		count uint32
		want  string
	}{
		{nil, 3, ""},
		{&vigilv1.Fence{ContainerId: "web"}, 3, ""},
		{&vigilv1.Fence{ContainerId: "other"}, 3, "container id changed"},
		{&vigilv1.Fence{HasRestartCount: true, RestartCount: 3}, 3, ""},
		{&vigilv1.Fence{HasRestartCount: true, RestartCount: 2}, 3, "restart count is 3, the alert saw 2"},
	} {
		got := fenceBroken(tc.fence, k, tc.count)
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("fence %v, count %d: %q, want %q", tc.fence, tc.count, got, tc.want)
		}
	}
}

func TestParseStopSpec(t *testing.T) {
	for _, tc := range []struct {
		signal, timeout string
		want            stopSpec
		errs            int
	}{
		{"", "", stopSpec{syscall.SIGTERM, 10 * time.Second}, 0},
		{"SIGINT", "", stopSpec{syscall.SIGINT, 10 * time.Second}, 0},
		{"quit", "30", stopSpec{syscall.SIGQUIT, 30 * time.Second}, 0},
		{"9", "1m30s", stopSpec{syscall.SIGKILL, 90 * time.Second}, 0},
		{"SIGNOPE", "forever", stopSpec{syscall.SIGTERM, 10 * time.Second}, 2},
		{"", "11m", stopSpec{syscall.SIGTERM, 10 * time.Second}, 1},
		{"", "-1s", stopSpec{syscall.SIGTERM, 10 * time.Second}, 1},
		{"65", "0", stopSpec{syscall.SIGTERM, 0}, 1},
	} {
		c := runtime.Container{StopSignal: tc.signal, Labels: map[string]string{}}
		if tc.timeout != "" {
			c.Labels[LabelStopTimeout] = tc.timeout
		}
		got, errs := parseStopSpec(&c, 10*time.Second)
		if got != tc.want || len(errs) != tc.errs {
			t.Errorf("signal %q timeout %q: %+v with %d errors %v, want %+v with %d", tc.signal, tc.timeout, got, len(errs), errs, tc.want, tc.errs)
		}
	}
}

// TestDecideCommand: the gate of a command not seen before, in order. Rows
// name the integration tests that prove the same rules end to end.
func TestDecideCommand(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	key := container.Key{Namespace: "prod", ID: "web"}
	open := commandPolicy{authenticated: true}
	found := commandTarget{namespace: "prod", found: true, manager: runtime.ManagerVigil}
	cmd := func(a vigilv1.RemediationAction, mod func(*vigilv1.Command)) *vigilv1.Command {
		c := &vigilv1.Command{Id: "c1", Action: a, Target: &vigilv1.Target{Namespace: "prod", ContainerId: "web"}}
		if mod != nil {
			mod(c)
		}
		return c
	}
	restartCmd := vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART
	killCmd := vigilv1.RemediationAction_REMEDIATION_ACTION_KILL
	withSignal := func(sig uint32) func(*vigilv1.Command) { return func(c *vigilv1.Command) { c.Signal = sig } }
	rows := []struct {
		name, proves string
		cmd          *vigilv1.Command
		in           commandFacts
		accept       bool
		outcome      vigilv1.CommandOutcome
	}{
		{"a restart of a known container is accepted", "TestCommandRunsOnce",
			cmd(restartCmd, nil), commandFacts{now: now, policy: open, target: found}, true, 0},
		{"past its deadline: expired", "table only",
			cmd(restartCmd, func(c *vigilv1.Command) { c.Deadline = timestamppb.New(now.Add(-time.Second)) }),
			commandFacts{now: now, policy: open, target: found}, false, vigilv1.CommandOutcome_COMMAND_OUTCOME_EXPIRED},
		{"an isolated node refuses", "TestIsolatedAgentRefusesCommands",
			cmd(restartCmd, nil), commandFacts{now: now, policy: open, target: found, isolation: "stream down"}, false, vigilv1.CommandOutcome_COMMAND_OUTCOME_REFUSED},
		{"a namespace outside the allowlist is refused before its container is looked for", "TestCommandNamespacesRefused",
			cmd(restartCmd, nil), commandFacts{now: now, policy: commandPolicy{authenticated: true, namespaces: []string{"dev"}}}, false, vigilv1.CommandOutcome_COMMAND_OUTCOME_REFUSED},
		{"an unknown container: not found", "table only",
			cmd(restartCmd, nil), commandFacts{now: now, policy: open, target: commandTarget{namespace: "prod"}}, false, vigilv1.CommandOutcome_COMMAND_OUTCOME_NOT_FOUND},
		{"a restart since the alert breaks the fence", "table only (TestFenceBroken)",
			cmd(restartCmd, func(c *vigilv1.Command) { c.Fence = &vigilv1.Fence{HasRestartCount: true, RestartCount: 1} }),
			commandFacts{now: now, policy: open, target: found, restartCount: 2}, false, vigilv1.CommandOutcome_COMMAND_OUTCOME_FENCED},
		{"an action the agent does not do fails", "table only",
			cmd(vigilv1.RemediationAction_REMEDIATION_ACTION_UNSPECIFIED, nil), commandFacts{now: now, policy: open, target: found}, false, vigilv1.CommandOutcome_COMMAND_OUTCOME_FAILED},
		{"a link up without network monitoring fails", "table only",
			cmd(vigilv1.RemediationAction_REMEDIATION_ACTION_LINK_UP, nil), commandFacts{now: now, policy: commandPolicy{authenticated: true, hostLinks: true}}, false, vigilv1.CommandOutcome_COMMAND_OUTCOME_FAILED},
		{"STOP then START of a known container are accepted", "TestStopThenStartCommands",
			cmd(vigilv1.RemediationAction_REMEDIATION_ACTION_STOP, nil), commandFacts{now: now, policy: open, target: found}, true, 0},
		{"a KILL with SIGTERM is accepted", "TestKillCommandSendsItsSignal",
			cmd(killCmd, withSignal(15)), commandFacts{now: now, policy: open, target: found}, true, 0},
		{"a KILL with signal 0 (SIGKILL) is accepted", "TestKillCommandSendsItsSignal",
			cmd(killCmd, nil), commandFacts{now: now, policy: open, target: found}, true, 0},
		{"a KILL with the highest signal, 64, is accepted", "table only",
			cmd(killCmd, withSignal(64)), commandFacts{now: now, policy: open, target: found}, true, 0},
		{"a KILL with a signal above 64 is refused", "TestKillCommandSendsItsSignal",
			cmd(killCmd, withSignal(65)), commandFacts{now: now, policy: open, target: found}, false, vigilv1.CommandOutcome_COMMAND_OUTCOME_REFUSED},
		{"a KILL with a huge signal is refused", "table only",
			cmd(killCmd, withSignal(1<<31)), commandFacts{now: now, policy: open, target: found}, false, vigilv1.CommandOutcome_COMMAND_OUTCOME_REFUSED},
		{"a RESTART's signal is not read (the aggregator sets it for KILL only)", "table only",
			cmd(restartCmd, withSignal(99)), commandFacts{now: now, policy: open, target: found}, true, 0},
	}
	for _, r := range rows {
		d := decideCommand(r.cmd, key, r.in)
		if d.accept != r.accept || d.outcome != r.outcome || (!d.accept && d.message == "") {
			t.Errorf("%s (%s): accept %v outcome %v %q; want accept %v outcome %v", r.name, r.proves, d.accept, d.outcome, d.message, r.accept, r.outcome)
		}
	}
	if d := decideCommand(cmd(killCmd, withSignal(65)), key, commandFacts{now: now, policy: open, target: found}); !strings.Contains(d.message, "signal 65") || !strings.Contains(d.message, "1 to 64") {
		t.Errorf("the refusal of signal 65 says %q; want it to name the signal and the range", d.message)
	}
}

// TestKillSignal: a KILL sends its signal; 0 is SIGKILL, as before the
// field existed. Its log lines name it.
func TestKillSignal(t *testing.T) {
	kill := func(sig uint32) *vigilv1.Command {
		return &vigilv1.Command{Action: vigilv1.RemediationAction_REMEDIATION_ACTION_KILL, Signal: sig}
	}
	for _, tc := range []struct {
		sig  uint32
		want syscall.Signal
		name string
	}{
		{0, syscall.SIGKILL, "SIGKILL"},
		{9, syscall.SIGKILL, "SIGKILL"},
		{15, syscall.SIGTERM, "SIGTERM"},
		{10, syscall.SIGUSR1, "SIGUSR1"},
		{40, syscall.Signal(40), "40"},
	} {
		if got := killSignal(kill(tc.sig)); got != tc.want {
			t.Errorf("signal %d: sends %v, want %v", tc.sig, got, tc.want)
		}
		if got := commandLogAttrs(kill(tc.sig)); len(got) != 2 || got[0] != "signal" || got[1] != tc.name {
			t.Errorf("signal %d: logged as %v, want signal=%s", tc.sig, got, tc.name)
		}
	}
	if got := commandLogAttrs(&vigilv1.Command{Action: vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART}); got != nil {
		t.Errorf("a RESTART logs a signal: %v", got)
	}
}
