package agent

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/network"
	"github.com/vigilhq/vigil/internal/runtime"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// Collector names of vigil_agent_collector_success and
// vigil_agent_collector_duration_seconds.
const (
	collectorResources = "resources"
	collectorNetwork   = "network"
)

// sampleResult is one sampling cycle's outcome, for the loop.
type sampleResult struct {
	// stats are the latest resource samples by container (nil when the
	// read failed: the previous ones stay).
	stats map[container.Key]*vigilv1.ResourceSample
	// net is the network read, nil when off or failed; ns its protocol
	// form.
	net *network.Snapshot
	ns  []*vigilv1.NetworkNamespace
}

// sampler reads resources and networks every SampleInterval (the first
// time a second after start, so that the aggregator has numbers early),
// sends the samples upstream and hands the result to the loop, which
// applies what it decides on (network conditions, probe results). A slow
// containerd or netlink delays a sample, never a restart or a health
// decision. It owns a.self.statsBuf. When the loop has not taken the last
// result yet, the sampler waits for it (the channel holds one).
func (a *Agent) sampler(ctx context.Context) error {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		res := a.sample(ctx)
		select {
		case a.samples <- res:
		case <-ctx.Done():
			return nil
		}
		a.sendNodeStatus()
		t.Reset(a.cfg.SampleInterval)
	}
}

// sample reads resources and networks once and sends them upstream.
func (a *Agent) sample(ctx context.Context) sampleResult {
	var res sampleResult
	start := time.Now()
	stats, err := a.rt.Stats(ctx, a.self.statsBuf[:0])
	resDur := time.Since(start)
	a.self.observeCollector(collectorResources, err == nil, resDur)
	if err != nil {
		a.log.Warn("resource stats", "err", err)
	}
	a.self.statsBuf = stats
	batch := &vigilv1.ResourceSamples{Samples: make([]*vigilv1.ResourceSample, 0, len(stats)), CollectionDuration: durationpb.New(resDur)}
	res.stats = make(map[container.Key]*vigilv1.ResourceSample, len(stats))
	for i := range stats {
		s := statsProto(&stats[i])
		if b, ok := a.fsUsage.get(stats[i].Key); ok {
			s.FsUsageBytes = b
		}
		batch.Samples = append(batch.Samples, s)
		res.stats[stats[i].Key] = s
	}
	if a.up != nil {
		a.up.SendResourceSamples(batch)
	}

	if a.net != nil {
		nstart := time.Now()
		snap, err := a.net.Read(ctx)
		ndur := time.Since(nstart)
		a.self.observeCollector(collectorNetwork, err == nil, ndur)
		if err != nil {
			a.log.Warn("network read", "err", err)
		} else {
			for _, e := range snap.Errors {
				a.log.Debug("network namespace not read", "err", e)
			}
			res.net = snap
			res.ns = make([]*vigilv1.NetworkNamespace, 0, len(snap.Namespaces))
			for i := range snap.Namespaces {
				res.ns = append(res.ns, snap.Namespaces[i].Proto())
			}
			if a.up != nil {
				a.up.SendNetworkSamples(&vigilv1.NetworkSamples{Namespaces: res.ns, CollectionDuration: durationpb.New(ndur)})
			}
		}
	}
	a.self.observeCollection(time.Since(start))
	return res
}

// onSample applies a sampling cycle on the loop: the latest samples for the
// local /metrics, network conditions (and the health decisions they bring),
// and the coalesced update of probe results and counters.
func (a *Agent) onSample(ctx context.Context, res sampleResult) {
	a.mu.Lock()
	a.lastStats = res.stats
	a.mu.Unlock()
	if res.net != nil {
		a.applyConditions(ctx, res.net)
		a.mu.Lock()
		a.lastNet = res.ns
		a.mu.Unlock()
	}
	a.mu.RLock()
	probed := make([]*tracked, 0, len(a.containers))
	for _, t := range a.containers {
		if t.healthCfg != nil && t.c.State == runtime.StateRunning {
			probed = append(probed, t)
		}
	}
	a.mu.RUnlock()
	// Probe results and counters between status changes reach the
	// aggregator once per interval, coalesced: one update per container
	// whose results or counters changed, not one message per probe.
	a.recheckCrossNode(probed)
	for _, t := range a.refreshProbes(true, probed...) {
		a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_UPDATED, "probe results and counters", nil, nil)
	}
}
