package agent

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// BenchmarkExitBurstFsyncs measures how many fsyncs the state dir makes per
// exit when 100 containers exit at once (all killed together), for policy
// "no" (the exits only) and "always" (each exit also restarted: a begun
// mark per restart, and the restart count). Every exit is checked to be
// counted once. b.N is ignored.
//
//	go test -run '^$' -bench ExitBurstFsyncs -benchtime 1x ./internal/agent
func BenchmarkExitBurstFsyncs(b *testing.B) {
	const n = 100
	for _, policy := range []string{"no", "always"} {
		b.Run(policy, func(b *testing.B) {
			h := newHarness(b)
			h.start(func(c *Config) {
				c.StopWindow = 0
				c.Logger = nil
			})
			ids := make([]string, n)
			var wg sync.WaitGroup
			sem := make(chan struct{}, 8)
			for i := range n {
				ids[i] = fmt.Sprintf("c%03d", i)
				wg.Go(func() {
					sem <- struct{}{}
					defer func() { <-sem }()
					h.run(ids[i], map[string]string{"vigil.io/restart-policy": policy}, "sleep")
				})
			}
			wg.Wait()
			for _, id := range ids {
				h.waitState(id, "running", time.Minute, func(c *vigilv1.Container) bool {
					return c.GetState() == vigilv1.ContainerState_CONTAINER_STATE_RUNNING
				})
			}
			waitUntil(b, 30*time.Second, "the start-up's writes", func() bool { return !h.agent.store.Stats().Dirty })
			before := h.agent.store.Stats()
			h.clearEvents()

			b.ResetTimer()
			cl := h.env.Client(b)
			ctx := namespaces.WithNamespace(context.Background(), h.ns)
			for _, id := range ids {
				wg.Go(func() {
					c, err := cl.LoadContainer(ctx, id)
					if err != nil {
						b.Error(err)
						return
					}
					tk, err := c.Task(ctx, nil)
					if err != nil {
						b.Error(err)
						return
					}
					if err := tk.Kill(ctx, syscall.SIGKILL); err != nil {
						b.Error(err)
					}
				})
			}
			wg.Wait()
			for _, id := range ids {
				h.waitFor(id, "its exit", time.Minute, exited)
				if policy == "always" {
					h.waitFor(id, "its restart", 2*time.Minute, restarted)
				}
			}
			waitUntil(b, 30*time.Second, "the burst's writes", func() bool { return !h.agent.store.Stats().Dirty })
			b.StopTimer()
			after := h.agent.store.Stats()
			for _, id := range ids {
				if k := h.count(id, exited); k != 1 {
					b.Fatalf("%s: %d exits reported, want 1", id, k)
				}
				c := h.containerState(id)
				if got := exitsOf(c, vigilv1.ExitReason_EXIT_REASON_SIGNAL, 137); got != 1 {
					b.Fatalf("%s: %d exits counted, want 1", id, got)
				}
			}
			b.ReportMetric(float64(after.Fsyncs-before.Fsyncs)/n, "fsyncs/exit")
			b.ReportMetric(float64(after.Writes-before.Writes)/n, "writes/exit")
		})
	}
}
