package replicasbench

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/agent/uplink"
	"github.com/vigilhq/vigil/internal/store/etcd/etcdtest"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

var (
	failoverRuns  = flag.Int("failover-runs", 0, "replica kills to measure; 0 skips TestFailover")
	failoverNodes = flag.Int("failover-nodes", 30, "agents (real uplinks) spread over the replicas")
)

// TestFailover: three real vigil-aggregator replicas (--insecure, on
// loopback) on a real 3-member etcd cluster, and -failover-nodes real agent
// uplinks (the agent's stream code with its default backoff and jitter:
// 500 ms doubling to 30 s), each given the three addresses. For each run,
// the replica holding the most nodes is killed with SIGKILL (no lease is
// released: the others wait out its --lease-ttl) and each of its nodes is
// timed from the kill until a surviving replica exposes it up
// (vigil_node_up 1 on its /metrics). The killed replica is started again
// before the next run. Every poll also checks that no node is exposed up
// by two replicas at once.
func TestFailover(t *testing.T) {
	if *failoverRuns < 1 {
		t.Skip("benchmark: run with -failover-runs N")
	}
	aggBin := build(t, "vigil-aggregator", "github.com/vigilhq/vigil/cmd/aggregator")
	cluster := etcdtest.StartCluster(t, 3)
	dir := t.TempDir()
	rs := newReplicaSet(t, aggBin, dir, cluster.Endpoints(), "/failover/", "--insecure")
	for i := range 3 {
		rs.start(i)
	}
	var addrs []string
	for _, r := range rs.members {
		addrs = append(addrs, r.grpc)
	}
	waitFor(t, 60*time.Second, "the replicas serving", func() error {
		for _, r := range rs.members {
			if _, err := r.selfMetrics(); err != nil {
				return err
			}
		}
		return nil
	})

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	quiet := slog.New(slog.DiscardHandler)
	var nodes []string
	for i := range *failoverNodes {
		name := fmt.Sprintf("fo-%03d", i)
		nodes = append(nodes, name)
		snap := &vigilv1.Snapshot{}
		for j := range 5 {
			snap.Containers = append(snap.Containers, &vigilv1.Container{Id: fmt.Sprintf("c%d", j), Namespace: "default",
				State: vigilv1.ContainerState_CONTAINER_STATE_RUNNING, Manager: vigilv1.Manager_MANAGER_VIGIL})
		}
		// Each agent lists the replicas starting at a different one, as a
		// DNS answer's order would vary.
		k := i % len(addrs)
		list := append(slices.Clone(addrs[k:]), addrs[:k]...)
		u, err := uplink.New(uplink.Config{Address: strings.Join(list, ","), NodeName: name, Logger: quiet},
			func() *vigilv1.Snapshot { return snap })
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = u.Run(ctx) }()
		// Samples every 10 s, as the agent's default interval: a node
		// that says nothing for a minute is stale, and not up.
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(10 * time.Second)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
					_ = u.SendResourceSamples(&vigilv1.ResourceSamples{})
				}
			}
		}()
	}

	// holders scrapes every live replica: which one exposes each node up.
	// Two replicas exposing one node up at once fail the test.
	holders := func() (map[string]int, error) {
		h := map[string]int{}
		for i, r := range rs.members {
			if r.exited() {
				continue
			}
			s, err := scrapeMetrics(r.http, 0, 0)
			if err != nil {
				return nil, err
			}
			for node, v := range s.up {
				if v != 1 {
					continue
				}
				if j, ok := h[node]; ok {
					t.Errorf("node %s is exposed up by replicas %d and %d at once", node, j, i)
				}
				h[node] = i
			}
		}
		return h, nil
	}
	allHeld := func() error {
		h, err := holders()
		if err != nil {
			return err
		}
		if len(h) != len(nodes) {
			return fmt.Errorf("%d of %d nodes exposed up", len(h), len(nodes))
		}
		return nil
	}
	waitFor(t, 2*time.Minute, "every node held", allHeld)

	type run struct {
		victim int
		moved  int
		times  []time.Duration
	}
	var runs []run
	for range *failoverRuns {
		h, err := holders()
		if err != nil {
			t.Fatal(err)
		}
		count := make([]int, len(rs.members))
		for _, i := range h {
			count[i]++
		}
		victim := 0
		for i, c := range count {
			if c > count[victim] {
				victim = i
			}
		}
		var moving []string
		for node, i := range h {
			if i == victim {
				moving = append(moving, node)
			}
		}
		rs.members[victim].kill()
		killed := time.Now()
		back := map[string]time.Duration{}
		deadline := killed.Add(2 * time.Minute)
		for len(back) < len(moving) {
			if time.Now().After(deadline) {
				t.Fatalf("run %d: %d of the killed replica's %d nodes served again after 2 minutes", len(runs)+1, len(back), len(moving))
			}
			h, err := holders()
			if err != nil {
				t.Fatal(err)
			}
			now := time.Since(killed)
			for _, node := range moving {
				if _, ok := back[node]; !ok {
					if _, ok := h[node]; ok {
						back[node] = now
					}
				}
			}
			time.Sleep(100 * time.Millisecond) // the polling period, and the figures' resolution
		}
		r := run{victim: victim, moved: len(moving)}
		for _, d := range back {
			r.times = append(r.times, d)
		}
		slices.Sort(r.times)
		runs = append(runs, r)
		t.Logf("run %d: replica %d killed holding %d nodes; served again after p50 %.1f s, max %.1f s",
			len(runs), victim, r.moved, r.times[len(r.times)/2].Seconds(), r.times[len(r.times)-1].Seconds())
		rs.start(victim)
		waitFor(t, time.Minute, "the killed replica back", func() error {
			_, err := rs.members[victim].selfMetrics()
			return err
		})
		waitFor(t, 2*time.Minute, "every node held", allHeld)
	}

	load, _ := os.ReadFile("/proc/loadavg")
	var b strings.Builder
	fmt.Fprintf(&b, "\n%s, failover of %d agents over 3 replicas, --lease-ttl %s, load average %s\n\n",
		time.Now().UTC().Format(time.DateTime), len(nodes), *leaseTTL, strings.Join(strings.Fields(string(load))[:3], " "))
	b.WriteString("| run | nodes moved | p50 | max |\n| ---: | ---: | ---: | ---: |\n")
	for i, r := range runs {
		fmt.Fprintf(&b, "| %d | %d | %.1f s | %.1f s |\n", i+1, r.moved, r.times[len(r.times)/2].Seconds(), r.times[len(r.times)-1].Seconds())
	}
	writeReport(t, b.String())
}
