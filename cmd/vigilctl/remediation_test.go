package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/agent/uplink"
	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/store/bolt"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

func TestParseTarget(t *testing.T) {
	restart, link := vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART, vigilv1.RemediationAction_REMEDIATION_ACTION_LINK_UP
	for _, tc := range []struct {
		in     string
		action vigilv1.RemediationAction
		want   string // targetText of the result; "" = an error
	}{
		{"n1/default/web", restart, "n1/default/web"},
		{"n1/shop/frontend/app", restart, "n1/shop/frontend/app"},
		{"n1/default/web%eth0", link, "n1/default/web%eth0"},
		{"n1%eth1", link, "n1%eth1"},
		{"n1", restart, ""},
		{"n1/default", restart, ""},
		{"n1//web", restart, ""},
		{"n1/a/b/c/d", restart, ""},
		{"n1/default/web%eth0", restart, ""},
		{"n1/default/web", link, ""},
		{"n1/default/web%", link, ""},
	} {
		got, err := parseTarget(tc.in, tc.action)
		switch {
		case tc.want == "" && !errors.Is(err, errdefs.ErrInvalid):
			t.Errorf("parseTarget(%q, %v) = %v, %v; want ErrInvalid", tc.in, tc.action, got, err)
		case tc.want != "" && (err != nil || targetText(got) != tc.want):
			t.Errorf("parseTarget(%q, %v) = %v, %v; want %s", tc.in, tc.action, got, err, tc.want)
		}
	}
}

func TestActionArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--insecure", "restart", "n1/default/web"}, "--reason is required"},
		{[]string{"--insecure", "restart", "--reason", "x"}, "no target"},
		{[]string{"--insecure", "stop", "n1/default/web", "--reason", "x", "extra"}, "unexpected arguments"},
		{[]string{"--insecure", "restart", "n1/default/web", "--reason", "x", "--signal", "TERM"}, "flag provided but not defined"},
		{[]string{"--insecure", "remediations", "--limit", "-1"}, "--limit -1"},
	} {
		_, _, err := runTest(context.Background(), tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error saying %q", tc.args, err, tc.want)
		}
	}
	if _, err := parseSignal("SIGNOPE"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("parseSignal(SIGNOPE) = %v", err)
	}
	for in, want := range map[string]uint32{"TERM": 15, "SIGINT": 2, "9": 9, "": 0} {
		if got, err := parseSignal(in); err != nil || got != want {
			t.Errorf("parseSignal(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
}

// TestActionsThroughTheJournal: vigilctl restart reaches the agent's stream
// as a command through a real aggregator with a bbolt journal; dry runs
// send nothing; vigilctl remediations lists what was decided.
func TestActionsThroughTheJournal(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	st, err := bolt.Open(filepath.Join(t.TempDir(), "vigil.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	agg, err := aggregator.New(aggregator.Config{GRPCListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Insecure: true,
		ShutdownTimeout: 2 * time.Second, Logger: quiet, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait(); st.Close() })
	wg.Add(1)
	go func() { defer wg.Done(); _ = agg.Run(ctx) }()
	addr := agg.GRPCAddr().String()

	web := &vigilv1.Container{Id: "web", Namespace: "default", Image: "busybox:1.36", State: vigilv1.ContainerState_CONTAINER_STATE_RUNNING,
		Manager: vigilv1.Manager_MANAGER_VIGIL, RestartCount: 4, CreatedAt: ts(time.Hour)}
	u, err := uplink.New(uplink.Config{Address: addr, NodeName: "node-a", AgentVersion: "v-test", Logger: quiet},
		func() *vigilv1.Snapshot { return &vigilv1.Snapshot{Containers: []*vigilv1.Container{web}} })
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); _ = u.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _, _ := runTest(ctx, "--server", addr, "--insecure", "containers", "--node", "node-a")
		if strings.Contains(out, "web") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("containers never listed web:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}

	out, _, err := runTest(ctx, "--server", addr, "--insecure", "restart", "node-a/default/web", "--reason", "try", "--dry-run")
	if err != nil || !strings.Contains(out, "restart (dry run)") {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	out, _, err = runTest(ctx, "--server", addr, "--insecure", "restart", "node-a/default/web", "--reason", "stuck")
	if err != nil || !strings.Contains(out, "node-a/default/web") {
		t.Fatalf("restart: %v\n%s", err, out)
	}
	select {
	case c := <-u.Commands():
		if c.GetAction() != vigilv1.RemediationAction_REMEDIATION_ACTION_RESTART || c.GetFence().GetRestartCount() != 4 || c.GetReason() == "" {
			t.Errorf("command %v: want a restart fenced at restart count 4, with the reason", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the agent's stream got no command")
	}
	select {
	case c := <-u.Commands():
		t.Fatalf("a second command %v (the dry run must send nothing)", c)
	case <-time.After(300 * time.Millisecond):
	}
	out, _, err = runTest(ctx, "--server", addr, "--insecure", "remediations", "--node", "node-a")
	if err != nil || strings.Count(out, "node-a/default/web") != 2 || !strings.Contains(out, "stuck") {
		t.Fatalf("remediations: %v\n%s", err, out)
	}
	out, _, err = runTest(ctx, "--server", addr, "--insecure", "-o", "json", "remediations")
	if err != nil || !strings.Contains(out, `"remediations"`) {
		t.Fatalf("remediations -o json: %v\n%s", err, out)
	}
}

// TestActionExitStatus: against a real aggregator with a journal, and a
// node whose agent (a fake behind a real uplink) answers each command
// with the outcome its reason names, an action exits 0 only when it was
// done (or, without --wait, accepted for the agent; or a dry run that
// would act), 3 with the reason when it was not (the aggregator's
// suppressions, the agent's refusals and failures), and 4 when --wait saw
// no result in time.
func TestActionExitStatus(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	st, err := bolt.Open(filepath.Join(t.TempDir(), "vigil.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	agg, ctx, spawn := runAggregator(t, aggregator.Config{GRPCListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Insecure: true,
		ShutdownTimeout: 2 * time.Second, Logger: quiet, Store: st})
	addr := agg.GRPCAddr().String()
	containers := []*vigilv1.Container{
		{Id: "web", Namespace: "default", State: vigilv1.ContainerState_CONTAINER_STATE_RUNNING, Manager: vigilv1.Manager_MANAGER_VIGIL},
		{Id: "nginx-id", Namespace: "k8s.io", State: vigilv1.ContainerState_CONTAINER_STATE_RUNNING, Manager: vigilv1.Manager_MANAGER_KUBELET,
			Pod: &vigilv1.PodIdentity{Namespace: "shop", Name: "frontend", ContainerName: "nginx"}},
	}
	u, err := uplink.New(uplink.Config{Address: addr, NodeName: "node-a", AgentVersion: "v-test", Logger: quiet},
		func() *vigilv1.Snapshot {
			return &vigilv1.Snapshot{Containers: containers, Network: []*vigilv1.NetworkNamespace{{Inode: 1, Host: true,
				Interfaces: []*vigilv1.Interface{{Name: "eth0", Index: 2, OperState: vigilv1.LinkOperState_LINK_OPER_STATE_DOWN}}}}}
		})
	if err != nil {
		t.Fatal(err)
	}
	spawn(u.Run)
	// The agent: "outcome=NAME" in the reason is its answer; none, or no
	// such reason, is no answer.
	spawn(func(ctx context.Context) error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case c := <-u.Commands():
				name, _ := strings.CutPrefix(c.GetReason(), "outcome=")
				o := vigilv1.CommandOutcome(vigilv1.CommandOutcome_value["COMMAND_OUTCOME_"+strings.ToUpper(name)])
				if o == vigilv1.CommandOutcome_COMMAND_OUTCOME_UNSPECIFIED {
					continue
				}
				if err := u.SendCommandResult(&vigilv1.CommandResult{CommandId: c.GetId(), Outcome: o,
					Message: "fake agent: " + name, FinishedAt: timestamppb.Now()}); err != nil {
					return err
				}
			}
		}
	})
	waitUntil(t, 20*time.Second, "node-a's containers listed", func() bool {
		out, _, _ := runTest(ctx, "--server", addr, "--insecure", "containers", "--node", "node-a")
		return strings.Contains(out, "web") && strings.Contains(out, "nginx")
	}, nil)

	web, nginx := "node-a/default/web", "node-a/shop/frontend/nginx"
	for _, tc := range []struct {
		args []string
		code int
		// err: what the error (printed on stderr) says; out: the state
		// printed on stdout
		err, out string
	}{
		{[]string{"restart", "node-a/default/nosuch", "--reason", "x"}, exitNotDone,
			`restart node-a/default/nosuch: not done: suppressed (target_unknown): target node-a/default/nosuch: `, "suppressed"},
		{[]string{"stop", nginx, "--reason", "k"}, exitNotDone, "stop " + nginx + ": not done: suppressed (owner): ", "suppressed"},
		{[]string{"stop", nginx, "--reason", "k", "--dry-run"}, exitNotDone, "stop " + nginx + " (dry run): would not be done: suppressed (owner)", "suppressed"},
		{[]string{"restart", web, "--reason", "try", "--dry-run"}, exitOK, "", "restart (dry run)"},
		{[]string{"restart", web, "--reason", "outcome=none"}, exitOK, "", "pending"},
		{[]string{"restart", web, "--reason", "outcome=succeeded", "--wait"}, exitOK, "", "succeeded"},
		{[]string{"kill", nginx, "--reason", "outcome=refused", "--wait", "--signal", "TERM"}, exitNotDone,
			"kill " + nginx + ": not done: suppressed (refused): fake agent: refused", "refused"},
		{[]string{"restart", web, "--reason", "outcome=failed", "--wait"}, exitNotDone, "restart " + web + ": not done: failed: fake agent: failed", "failed"},
		{[]string{"start", web, "--reason", "outcome=fenced", "--wait"}, exitNotDone, "start " + web + ": not done: suppressed (fenced): fake agent: fenced", "fenced"},
		{[]string{"stop", web, "--reason", "outcome=not_found", "--wait"}, exitNotDone, "stop " + web + ": not done: failed (not_found): fake agent: not_found", "not_found"},
		{[]string{"link-up", "node-a%eth0", "--reason", "outcome=succeeded", "--wait"}, exitOK, "", "succeeded"},
		{[]string{"link-up", "node-b%eth0", "--reason", "x"}, exitNotDone, "link-up node-b%eth0: not done: suppressed (target_unknown): ", "suppressed"},
		{[]string{"restart", web, "--reason", "outcome=expired", "--wait"}, exitNotDone, "restart " + web + ": not done: expired: fake agent: expired", "expired"},
		{[]string{"restart", web, "--reason", "outcome=none", "--wait", "--timeout", "5s"}, exitOutcomeUnknown,
			"restart " + web + ": outcome unknown: no result within 5s (still ", "restart"},
	} {
		out, _, err := runTest(ctx, append([]string{"--server", addr, "--insecure"}, tc.args...)...)
		if exitCode(err) != tc.code {
			t.Errorf("%q: exit %d (%v), want %d", tc.args, exitCode(err), err, tc.code)
			continue
		}
		if tc.err != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.err)) {
			t.Errorf("%q: error %v, want it to start %q", tc.args, err, tc.err)
		}
		if !strings.Contains(out, tc.out) {
			t.Errorf("%q: stdout does not say %q:\n%s", tc.args, tc.out, out)
		}
	}
}

// TestActionResult: every state an action's remediation can be in, with
// and without --wait, gives its exit status; the reason and message are
// in the error.
func TestActionResult(t *testing.T) {
	type S = vigilv1.RemediationState
	for _, tc := range []struct {
		state        S
		dryRun, wait bool // the record's dry run; --wait
		asked        bool // --dry-run
		want         int
	}{
		{vigilv1.RemediationState_REMEDIATION_STATE_SUCCEEDED, false, true, false, exitOK},
		{vigilv1.RemediationState_REMEDIATION_STATE_PENDING, false, false, false, exitOK},
		{vigilv1.RemediationState_REMEDIATION_STATE_DISPATCHED, false, false, false, exitOK},
		{vigilv1.RemediationState_REMEDIATION_STATE_PENDING, false, true, false, exitOutcomeUnknown},
		{vigilv1.RemediationState_REMEDIATION_STATE_DISPATCHED, false, true, false, exitOutcomeUnknown},
		{vigilv1.RemediationState_REMEDIATION_STATE_SUPPRESSED, true, false, true, exitOK},
		{vigilv1.RemediationState_REMEDIATION_STATE_SUPPRESSED, true, true, true, exitOK},
		{vigilv1.RemediationState_REMEDIATION_STATE_SUPPRESSED, false, false, true, exitNotDone},
		{vigilv1.RemediationState_REMEDIATION_STATE_SUPPRESSED, false, false, false, exitNotDone},
		{vigilv1.RemediationState_REMEDIATION_STATE_FAILED, false, true, false, exitNotDone},
		{vigilv1.RemediationState_REMEDIATION_STATE_CANCELLED, false, false, false, exitNotDone},
		{vigilv1.RemediationState_REMEDIATION_STATE_EXPIRED, false, true, false, exitNotDone},
		{vigilv1.RemediationState_REMEDIATION_STATE_UNKNOWN, false, true, false, exitOutcomeUnknown},
		{vigilv1.RemediationState_REMEDIATION_STATE_UNSPECIFIED, false, false, false, exitOutcomeUnknown},
		{S(99), false, false, false, exitOutcomeUnknown},
	} {
		inv := &invocation{command: "restart", target: "n/ns/c", dryRun: tc.asked, wait: tc.wait, global: globalFlags{timeout: time.Second}}
		r := &vigilv1.Remediation{State: tc.state, DryRun: tc.dryRun, Result: "why", Message: "the message\nsaid"}
		err := actionResult(inv, r, context.DeadlineExceeded)
		if got := exitCode(err); got != tc.want {
			t.Errorf("%v dry run %v, --wait %v: exit %d (%v), want %d", tc.state, tc.dryRun, tc.wait, got, err, tc.want)
		}
		if err != nil && (!strings.HasPrefix(err.Error(), "restart n/ns/c") || strings.Contains(err.Error(), "\n")) {
			t.Errorf("%v: %q, want it to name the action and be one line", tc.state, err)
		}
		if tc.want == exitNotDone && !strings.Contains(err.Error(), "(why): the message said") {
			t.Errorf("%v: %q, want the result and the message", tc.state, err)
		}
	}
}

// TestWaitReadsTheJournal: --wait reads the journal until the remediation
// ends: again after an unavailable aggregator, asking for ten times more
// of the newest when the remediation was not among them; a journal it may
// not read ends the wait with the outcome unknown (4), saying why.
func TestWaitReadsTheJournal(t *testing.T) {
	const id = "r1"
	state := func(s vigilv1.RemediationState) *vigilv1.Remediation { return &vigilv1.Remediation{Id: id, State: s} }
	var mu sync.Mutex // the server's goroutine appends, the test reads
	var limits []uint32
	f := &fakeVigil{requested: state(vigilv1.RemediationState_REMEDIATION_STATE_PENDING)}
	f.listRemediations = func(n int, req *vigilv1.ListRemediationsRequest) (*vigilv1.ListRemediationsResponse, error) {
		mu.Lock()
		limits = append(limits, req.GetLimit())
		mu.Unlock()
		switch n {
		case 1:
			return nil, status.Error(codes.Unavailable, "restarting")
		case 2:
			return &vigilv1.ListRemediationsResponse{Remediations: []*vigilv1.Remediation{{Id: "newer"}}}, nil
		case 3:
			return &vigilv1.ListRemediationsResponse{Remediations: []*vigilv1.Remediation{state(vigilv1.RemediationState_REMEDIATION_STATE_DISPATCHED)}}, nil
		}
		return &vigilv1.ListRemediationsResponse{Remediations: []*vigilv1.Remediation{state(vigilv1.RemediationState_REMEDIATION_STATE_SUCCEEDED)}}, nil
	}
	addr := serve(t, f)
	out, _, err := runTest(context.Background(), "--server", addr, "--insecure", "--timeout", "60s", "restart", "n/ns/c", "--reason", "r", "--wait")
	if err != nil || !strings.Contains(out, "succeeded") {
		t.Fatalf("restart --wait: %v\n%s", err, out)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []uint32{100, 100, 1000, 1000}; fmt.Sprint(limits) != fmt.Sprint(want) {
		t.Errorf("the journal was read with limits %v, want %v", limits, want)
	}

	f = &fakeVigil{requested: state(vigilv1.RemediationState_REMEDIATION_STATE_PENDING),
		listRemediations: func(int, *vigilv1.ListRemediationsRequest) (*vigilv1.ListRemediationsResponse, error) {
			return nil, status.Error(codes.PermissionDenied, "needs role viewer")
		}}
	addr = serve(t, f)
	_, _, err = runTest(context.Background(), "--server", addr, "--insecure", "--timeout", "60s", "restart", "n/ns/c", "--reason", "r", "--wait")
	if exitCode(err) != exitOutcomeUnknown || !strings.Contains(err.Error(), "outcome unknown (still pending): needs role viewer") {
		t.Errorf("restart --wait, the journal refused: %v (exit %d)", err, exitCode(err))
	}
}
