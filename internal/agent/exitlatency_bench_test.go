package agent

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/vigilhq/vigil/internal/pki"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// BenchmarkExitToAggregator measures how long a container's exit takes to
// be visible at the aggregator (issue 22, item 7): from the exit, by
// containerd's timestamp, to the EXITED event at a WatchEvents client, and
// to the exit counted in the aggregator's /metrics (read every 2 ms, so
// that figure is up to 2 ms late). The real agent streams to a real
// aggregator over mutual TLS on loopback; both run in this process, the
// client too. Two shapes: "spaced", one container exiting about every
// 0.5 s, and "burst", 10 containers exiting together every 0.3 s or so.
// b.N is ignored: each shape collects a fixed number of exits and reports
// p50 and p99 (ms).
//
//	go test -run '^$' -bench ExitToAggregator -benchtime 1x ./internal/agent
func BenchmarkExitToAggregator(b *testing.B) {
	for _, shape := range []struct {
		name       string
		containers int
		exits      int
		after      string
	}{
		{"spaced", 1, 40, "400ms"},
		{"burst", 10, 200, "200ms"},
	} {
		b.Run(shape.name, func(b *testing.B) {
			h := newHarness(b)
			rig := streamingAgentWith(b, h, func(c *Config) {
				c.StopWindow = 0
				c.BackoffInitial = 100 * time.Millisecond
				c.BackoffMax = 100 * time.Millisecond
				c.BackoffReset = time.Hour
				c.SampleInterval = 10 * time.Second
				c.Logger = nil
			})
			tlsCfg, err := pki.ClientConfig(rig.client, "localhost")
			if err != nil {
				b.Fatal(err)
			}
			conn, err := grpc.NewClient(rig.aggGRPC, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			stream, err := vigilv1.NewVigilClient(conn).WatchEvents(ctx, &vigilv1.WatchEventsRequest{Node: "test-node"})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := stream.Header(); err != nil {
				b.Fatal(err)
			}

			var (
				mu      sync.Mutex
				exitAt  []time.Time     // by arrival
				toEvent []time.Duration // exit to the event at the client
				toAgent []time.Duration // exit to the agent's event (its Time)
			)
			go func() {
				for {
					resp, err := stream.Recv()
					if err != nil {
						return
					}
					now := time.Now()
					ev := resp.GetEvent()
					if ev.GetType() != vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED || ev.GetExit().GetExitedAt() == nil {
						continue
					}
					at := ev.GetExit().GetExitedAt().AsTime()
					mu.Lock()
					exitAt = append(exitAt, at)
					toEvent = append(toEvent, now.Sub(at))
					toAgent = append(toAgent, ev.GetTime().AsTime().Sub(at))
					mu.Unlock()
				}
			}()

			// The counter at /metrics, polled: the i-th exit (by time) is
			// visible when the total first reaches i+1.
			re := regexp.MustCompile(`(?m)^vigil_container_exits_total\{[^}]*container="exiter[^"]*"[^}]*\} (\d+)$`)
			var seenAt []time.Time // seenAt[i]: when the total first reached i+1
			pollDone := make(chan struct{})
			go func() {
				defer close(pollDone)
				cl := &http.Client{Timeout: 5 * time.Second}
				for ctx.Err() == nil {
					resp, err := cl.Get("http://" + rig.aggHTTP + "/metrics")
					if err != nil {
						continue
					}
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					now := time.Now()
					total := 0
					for _, m := range re.FindAllSubmatch(body, -1) {
						n, _ := strconv.Atoi(string(m[1]))
						total += n
					}
					for len(seenAt) < total {
						seenAt = append(seenAt, now)
					}
					if len(seenAt) >= shape.exits {
						return
					}
					time.Sleep(2 * time.Millisecond)
				}
			}()

			b.ResetTimer()
			for i := range shape.containers {
				h.run(fmt.Sprintf("exiter%d", i), map[string]string{"vigil.io/restart-policy": "always"}, "exit", "1", "--after", shape.after)
			}
			waitUntil(b, 5*time.Minute, fmt.Sprintf("%d exits at the client", shape.exits), func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(toEvent) >= shape.exits
			})
			select {
			case <-pollDone:
			case <-time.After(time.Minute):
				b.Fatalf("the aggregator's /metrics counted %d exits of %d", len(seenAt), shape.exits)
			}
			b.StopTimer()
			cancel()

			mu.Lock()
			times := slices.Clone(exitAt[:shape.exits])
			ev := slices.Clone(toEvent[:shape.exits])
			ag := slices.Clone(toAgent[:shape.exits])
			mu.Unlock()
			slices.SortFunc(times, time.Time.Compare)
			var toMetric []time.Duration
			for i, at := range times {
				toMetric = append(toMetric, seenAt[i].Sub(at))
			}
			report := func(ds []time.Duration, what string) {
				slices.Sort(ds)
				q := func(p float64) float64 { return float64(ds[int(p*float64(len(ds)-1))]) / float64(time.Millisecond) }
				b.ReportMetric(q(0.5), what+"-p50-ms")
				b.ReportMetric(q(0.99), what+"-p99-ms")
				b.ReportMetric(float64(ds[len(ds)-1])/float64(time.Millisecond), what+"-max-ms")
			}
			report(ag, "agent")
			report(ev, "event")
			report(toMetric, "metric")
		})
	}
}
