package main

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/agent/uplink"
	"github.com/vigilhq/vigil/internal/aggregator"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// vigilctl against the real aggregator, fed by a real uplink: what an agent
// reports is what the operator reads, and events arrive while watched.
func TestAgainstRealAggregator(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	agg, err := aggregator.New(aggregator.Config{GRPCListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Insecure: true,
		ShutdownTimeout: 2 * time.Second, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Add(1)
	go func() { defer wg.Done(); _ = agg.Run(ctx) }()
	addr := agg.GRPCAddr().String()

	web := &vigilv1.Container{Id: "web", Namespace: "default", Image: "busybox:1.36", State: vigilv1.ContainerState_CONTAINER_STATE_RUNNING,
		Manager: vigilv1.Manager_MANAGER_VIGIL, CreatedAt: ts(time.Hour)}
	u, err := uplink.New(uplink.Config{Address: addr, NodeName: "node-a", AgentVersion: "v-test", Logger: quiet},
		func() *vigilv1.Snapshot {
			return &vigilv1.Snapshot{Containers: []*vigilv1.Container{web}, Status: &vigilv1.NodeStatus{RuntimeAvailable: true, RuntimeVersion: "1.6.20"}}
		})
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); _ = u.Run(ctx) }()

	var out string
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out, "web") {
		if time.Now().After(deadline) {
			t.Fatalf("containers never listed web:\n%s", out)
		}
		time.Sleep(10 * time.Millisecond)
		out, _, err = runTest(ctx, "--server", addr, "--insecure", "containers", "--node", "node-a")
		if err != nil {
			t.Fatal(err)
		}
	}
	if !strings.HasPrefix(out, "NODE ") || !strings.Contains(out, "busybox:1.36") || !strings.Contains(out, "Running") {
		t.Errorf("containers:\n%s", out)
	}
	out, _, err = runTest(ctx, "--server", addr, "--insecure", "nodes")
	if err != nil || !strings.Contains(out, "node-a") || !strings.Contains(out, "Up") || !strings.Contains(out, "v-test") {
		t.Errorf("nodes: %v\n%s", err, out)
	}

	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	var events syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- runAt(watchCtx, []string{"--server", addr, "--insecure", "events"}, &events, &syncBuffer{}, time.Now, noEnv)
	}()
	// The subscription starts asynchronously: send until one is seen.
	for i := 0; !strings.Contains(events.String(), "exited"); i++ {
		if i == 500 {
			t.Fatalf("no event line:\n%s", events.String())
		}
		exited := &vigilv1.Container{Id: "web", Namespace: "default", State: vigilv1.ContainerState_CONTAINER_STATE_STOPPED}
		if err := u.SendContainerEvent(&vigilv1.ContainerEvent{Type: vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED,
			Time: ts(0), Container: exited, Exit: &vigilv1.ExitStatus{Code: 3, Reason: vigilv1.ExitReason_EXIT_REASON_ERROR}}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	stopWatch()
	if err := <-done; err != nil {
		t.Errorf("events: %v", err)
	}
	if line := events.String(); !strings.Contains(line, "node-a") || !strings.Contains(line, "error(3)") {
		t.Errorf("event output:\n%s", line)
	}
}
