package main

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

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
