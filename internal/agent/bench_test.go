package agent

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// BenchmarkRestartOverhead measures, per policy restart, the time from a
// task's exit (containerd's timestamp) to its replacement running, and the
// part of it that containerd itself spends deleting the old task and
// creating and starting the new one, and Vigil's overhead: the time from the
// exit to the agent's restart call (event delivery from containerd, the
// decision, the durable write of the exit, the timer), measured directly. The stop window is
// off and every restart is a first one (the backoff resets after a 1 ms
// run), so no deliberate delay is included.
//
//	go test -run '^$' -bench RestartOverhead -benchtime 30x ./internal/agent
func BenchmarkRestartOverhead(b *testing.B) {
	h := newHarness(b)
	h.start(func(c *Config) {
		c.StopWindow = 0
		c.BackoffInitial = time.Millisecond
		c.BackoffMax = time.Millisecond
		c.BackoffReset = time.Millisecond
		c.Logger = nil
	})
	h.run("bench", map[string]string{"vigil.io/restart-policy": "always"}, "exit", "1", "--after", "100ms")
	b.ResetTimer()
	h.waitFor("bench", "restarts", time.Duration(b.N)*5*time.Second+30*time.Second, func(ev *vigilv1.ContainerEvent) bool {
		return ev.GetType() == vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_RESTARTED && int(ev.GetContainer().GetRestartCount()) >= b.N
	})
	b.StopTimer()

	var mfs []*dto.MetricFamily
	hist := func(name string) *dto.Histogram {
		for _, mf := range mfs {
			if mf.GetName() == name {
				return mf.GetMetric()[0].GetHistogram()
			}
		}
		b.Fatalf("metric %s not gathered", name)
		return nil
	}
	// The start event can arrive before the restart call returns and
	// records its duration: wait for the last one.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var err error
		if mfs, err = h.lastRegistry.Gather(); err != nil {
			b.Fatal(err)
		}
		if int(hist("vigil_agent_restart_runtime_seconds").GetSampleCount()) >= b.N || time.Now().After(deadline) {
			break
		}
	}
	h.stop()
	lag := hist("vigil_agent_restart_exit_to_running_seconds")
	over := hist("vigil_agent_restart_overhead_seconds")
	rt := hist("vigil_agent_restart_runtime_seconds")
	if lag.GetSampleCount() == 0 || rt.GetSampleCount() == 0 {
		b.Fatal("no restart measured")
	}
	lagMean := lag.GetSampleSum() / float64(lag.GetSampleCount())
	rtMean := rt.GetSampleSum() / float64(rt.GetSampleCount())
	b.ReportMetric(lagMean*1000, "ms-exit-to-running")
	b.ReportMetric(rtMean*1000, "ms-containerd-delete-create-start")
	b.ReportMetric(over.GetSampleSum()/float64(over.GetSampleCount())*1000, "ms-vigil-overhead")
	b.ReportMetric(float64(lag.GetSampleCount()), "restarts")
}
