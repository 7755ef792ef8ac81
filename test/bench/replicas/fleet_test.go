package replicasbench

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/store/etcd/etcdtest"
)

var (
	fleetReplicas   = flag.String("fleet-replicas", "", "comma-separated replica counts to measure in one run, the first the baseline (e.g. 1,3); empty skips TestFleet")
	fleetNodes      = flag.Int("fleet-nodes", 2000, "simulated nodes")
	fleetContainers = flag.Int("fleet-containers", 100, "containers per simulated node")
	fleetWindow     = flag.Duration("fleet-window", time.Minute, "the ingest window over which CPU is measured")
	fleetSettle     = flag.Duration("fleet-settle", 15*time.Second, "wait after every node connected, before the window")
	fleetShards     = flag.Int("fleet-shards", 10, "shards each replica is scraped in")
	fleetRamp       = flag.Int("fleet-ramp", 100, "the load generator's --ramp: nodes connect in batches of this many")
	fleetConnect    = flag.Duration("fleet-connect", 10*time.Minute, "how long the nodes may take to connect")
	reportFlag      = flag.String("report", "", "append the results as Markdown to this file")
	leaseTTL        = flag.Duration("lease-ttl", 10*time.Second, "the replicas' --lease-ttl")
)

// replicaProc is one vigil-aggregator process of a replica set.
type replicaProc struct {
	*proc
	id, grpc, http string
}

// replicaSet starts n real vigil-aggregator processes on loopback that
// share their state in one etcd cluster under prefix.
type replicaSet struct {
	t        testing.TB
	bin, dir string
	args     []string // common to every replica
	members  []*replicaProc
}

func newReplicaSet(t testing.TB, bin, dir string, endpoints []string, prefix string, common ...string) *replicaSet {
	rs := &replicaSet{t: t, bin: bin, dir: dir}
	rs.args = append([]string{"--log-level", "warn", "--etcd-endpoints", strings.Join(endpoints, ","), "--etcd-prefix", prefix,
		"--lease-ttl", leaseTTL.String()}, common...)
	return rs
}

// start starts replica i (again, on the same addresses, after a kill).
func (rs *replicaSet) start(i int) *replicaProc {
	rs.t.Helper()
	for len(rs.members) <= i {
		a := freeAddrs(rs.t, 2)
		rs.members = append(rs.members, &replicaProc{id: fmt.Sprintf("r%d", len(rs.members)), grpc: a[0], http: a[1]})
	}
	r := rs.members[i]
	dataDir := filepath.Join(rs.dir, r.id+"-data")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		rs.t.Fatal(err)
	}
	args := append(slices.Clone(rs.args), "--grpc-listen", r.grpc, "--http-listen", r.http, "--data-dir", dataDir,
		"--replica-id", r.id, "--advertise-api", r.grpc)
	r.proc = startProc(rs.t, rs.dir, fmt.Sprintf("%s-%d", r.id, time.Now().UnixNano()), rs.bin, args...)
	return r
}

// selfMetrics reads a replica's own series cheaply (shard 0 of the most
// shards carries them, with few nodes).
func (r *replicaProc) selfMetrics() (map[string]float64, error) {
	s, err := scrapeMetrics(r.http, 0, 1024)
	return s.self, err
}

// fleetResult is one replica count's figures.
type fleetResult struct {
	replicas     int
	perReplica   []replicaFigures
	etcdCPU      float64 // share of a core, all members together
	loadgenCPU   float64
	exposedOnce  bool
	exposedTotal int
}

type replicaFigures struct {
	nodes               int
	cpu                 float64 // share of a core over the window
	samplesPerSec       float64
	msPer1000Samples    float64
	rssBefore, rssAfter uint64
	coldMax, warmMax    time.Duration
	coldCPU, warmCPU    time.Duration
	series              int
	bytes               int64
}

// TestFleet: the load generator's fleet spread over R real aggregator
// replicas sharing a real 3-member etcd cluster on loopback, for each R of
// -fleet-replicas in one run; for each replica, the nodes it holds, its
// ingest CPU over a window without scrapes, its RSS before and after the
// scrapes, and its scrape time in -fleet-shards shards (cold: every node
// rendered again; warm: right after). Also etcd's CPU in the window (the
// leases and keep-alives of the replicas), and whether every node is
// exposed by exactly one replica.
func TestFleet(t *testing.T) {
	if *fleetReplicas == "" {
		t.Skip("benchmark: run with -fleet-replicas 1,3 (starts thousands of simulated nodes)")
	}
	var counts []int
	for _, s := range strings.Split(*fleetReplicas, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			t.Fatalf("-fleet-replicas %q: want positive integers", *fleetReplicas)
		}
		counts = append(counts, n)
	}
	aggBin := build(t, "vigil-aggregator", "github.com/vigilhq/vigil/cmd/aggregator")
	genBin := build(t, "vigil-loadgen", "github.com/vigilhq/vigil/cmd/vigil-loadgen")
	cluster := etcdtest.StartCluster(t, 3)
	var etcdPids []int
	for i := range cluster.Size() {
		etcdPids = append(etcdPids, pidsWithArg(cluster.Endpoint(i))...)
	}
	if len(etcdPids) != cluster.Size() {
		t.Logf("found %d etcd member processes of %d: etcd's CPU will be partial", len(etcdPids), cluster.Size())
	}
	var results []fleetResult
	for _, n := range counts {
		t.Run(fmt.Sprintf("replicas=%d", n), func(t *testing.T) {
			results = append(results, runFleet(t, aggBin, genBin, cluster.Endpoints(), etcdPids, n))
		})
	}
	report(t, results)
}

func runFleet(t *testing.T, aggBin, genBin string, endpoints []string, etcdPids []int, n int) fleetResult {
	dir := t.TempDir()
	tlsDir := filepath.Join(dir, "tls")
	rs := newReplicaSet(t, aggBin, dir, endpoints, fmt.Sprintf("/fleet-%d-%d/", n, time.Now().UnixNano()),
		"--tls-cert", filepath.Join(tlsDir, "aggregator.crt"), "--tls-key", filepath.Join(tlsDir, "aggregator.key"),
		"--tls-ca", filepath.Join(tlsDir, "ca.crt"))
	// Addresses first: the load generator needs them, and writes the TLS
	// files the replicas need.
	var addrs []string
	for i := range n {
		a := freeAddrs(t, 2)
		rs.members = append(rs.members, &replicaProc{id: fmt.Sprintf("r%d", i), grpc: a[0], http: a[1]})
		addrs = append(addrs, a[0])
	}
	gen := startProc(t, dir, "loadgen", genBin, "--tls-dir", tlsDir, "--aggregator", strings.Join(addrs, ","),
		"--nodes", strconv.Itoa(*fleetNodes), "--containers", strconv.Itoa(*fleetContainers),
		"--interval", "10s", "--duration", "0", "--report-every", "30s", "--ramp", strconv.Itoa(*fleetRamp))
	waitFor(t, 30*time.Second, "the load generator's TLS files", func() error {
		_, err := os.Stat(filepath.Join(tlsDir, "aggregator.key"))
		return err
	})
	for i := range n {
		rs.start(i)
	}

	// Every node connected, across the replicas.
	connected := func() (int, []int, error) {
		total, per := 0, make([]int, n)
		for i, r := range rs.members {
			if r.exited() {
				return 0, nil, fmt.Errorf("replica %s exited", r.id)
			}
			self, err := r.selfMetrics()
			if err != nil {
				return 0, nil, err
			}
			per[i] = int(sumSelf(self, "vigil_aggregator_streams_connected"))
			total += per[i]
		}
		return total, per, nil
	}
	start := time.Now()
	waitForPoll(t, *fleetConnect, time.Second, "every node connected", func() error {
		if gen.exited() {
			t.Fatalf("the load generator exited")
		}
		total, per, err := connected()
		if err != nil {
			return err
		}
		if total != *fleetNodes {
			return fmt.Errorf("%d of %d connected (%v)", total, *fleetNodes, per)
		}
		return nil
	})
	t.Logf("%d nodes connected to %d replicas in %s", *fleetNodes, n, time.Since(start).Round(time.Second))
	time.Sleep(*fleetSettle) // a measurement window, not a wait for a condition

	res := fleetResult{replicas: n}
	samples := func(r *replicaProc) float64 {
		self, err := r.selfMetrics()
		if err != nil {
			t.Fatal(err)
		}
		return sumSelf(self, `vigil_aggregator_messages_received_total{kind="resource_samples"}`)
	}
	cpu0 := make([]time.Duration, n)
	s0 := make([]float64, n)
	for i, r := range rs.members {
		cpu0[i], s0[i] = cpuOf(r.cmd.Process.Pid), samples(r)
	}
	var etcd0, gen0 time.Duration
	for _, p := range etcdPids {
		etcd0 += cpuOf(p)
	}
	gen0 = cpuOf(gen.cmd.Process.Pid)
	w0 := time.Now()
	time.Sleep(*fleetWindow) // the measurement window
	el := time.Since(w0)
	var etcd1 time.Duration
	for _, p := range etcdPids {
		etcd1 += cpuOf(p)
	}
	res.etcdCPU = (etcd1 - etcd0).Seconds() / el.Seconds()
	res.loadgenCPU = (cpuOf(gen.cmd.Process.Pid) - gen0).Seconds() / el.Seconds()
	_, per, err := connected()
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range rs.members {
		pid := r.cmd.Process.Pid
		c := cpuOf(pid) - cpu0[i]
		msgs := samples(r) - s0[i]
		f := replicaFigures{nodes: per[i], cpu: c.Seconds() / el.Seconds(), rssBefore: rssOf(pid)}
		// Each resource_samples message carries one sample per container.
		f.samplesPerSec = msgs * float64(*fleetContainers) / el.Seconds()
		if msgs > 0 {
			f.msPer1000Samples = c.Seconds() * 1000 / (msgs * float64(*fleetContainers) / 1000)
		}
		res.perReplica = append(res.perReplica, f)
	}

	// Scrapes, replica after replica: cold then warm.
	exposed := map[string]int{}
	for i, r := range rs.members {
		f := &res.perReplica[i]
		for round := range 2 {
			c0 := cpuOf(r.cmd.Process.Pid)
			r0 := time.Now()
			var slowest time.Duration
			for sh := range *fleetShards {
				s, err := scrapeMetrics(r.http, sh, *fleetShards)
				if err != nil {
					t.Fatalf("replica %s shard %d: %v", r.id, sh, err)
				}
				slowest = max(slowest, s.took)
				if round == 0 {
					f.series += s.series
					f.bytes += s.bytes
					for node := range s.up {
						exposed[node]++
					}
				}
			}
			// The round's CPU less what ingest took over the same time.
			roundCPU := cpuOf(r.cmd.Process.Pid) - c0 - time.Duration(f.cpu*float64(time.Since(r0)))
			if round == 0 {
				f.coldMax, f.coldCPU = slowest, roundCPU
			} else {
				f.warmMax, f.warmCPU = slowest, roundCPU
			}
		}
		f.rssAfter = rssOf(r.cmd.Process.Pid)
	}
	// The replicas are scraped one after another, minutes apart at this
	// scale: a node that moved in between (its replica lost its lease,
	// say) is seen twice or not at all. So this is reported, not asserted;
	// test/replicas and the aggregator's tests check that no two replicas
	// expose a node at once.
	res.exposedOnce = true
	twice := 0
	for _, k := range exposed {
		if k != 1 {
			res.exposedOnce = false
			twice++
		}
	}
	res.exposedTotal = len(exposed)
	if twice > 0 || len(exposed) != *fleetNodes {
		t.Logf("exposure: %d nodes seen across the replicas' scrapes (want %d), %d of them on two replicas: nodes moved during the scrapes", len(exposed), *fleetNodes, twice)
	}
	for i, f := range res.perReplica {
		t.Logf("replica %d: %d nodes, ingest %.1f%% of a core (%.1f ms per 1,000 samples), RSS %.2f GiB before scrapes, %.2f after; slowest of %d shards cold %.2fs warm %.2fs; %d series, %.0f MB",
			i, f.nodes, f.cpu*100, f.msPer1000Samples, gib(f.rssBefore), gib(f.rssAfter), *fleetShards, f.coldMax.Seconds(), f.warmMax.Seconds(), f.series, float64(f.bytes)/1e6)
	}
	t.Logf("etcd (3 members together): %.1f%% of a core; load generator %.1f%%", res.etcdCPU*100, res.loadgenCPU*100)
	gen.kill()
	for _, r := range rs.members {
		r.kill()
	}
	return res
}

func gib(b uint64) float64 { return float64(b) / (1 << 30) }

// report writes the results as a Markdown table (t.Log, and -report).
func report(t *testing.T, results []fleetResult) {
	host, _ := os.Hostname()
	load, _ := os.ReadFile("/proc/loadavg")
	var b strings.Builder
	fmt.Fprintf(&b, "\n%s, %s, %d nodes x %d containers, %d shards per replica, window %s, load average %s\n\n",
		time.Now().UTC().Format(time.DateTime), host, *fleetNodes, *fleetContainers, *fleetShards, *fleetWindow, strings.Join(strings.Fields(string(load))[:3], " "))
	b.WriteString("| replicas | replica | nodes held | ingest CPU | per 1,000 samples | RSS before / after scrapes | slowest shard cold / warm | scrape CPU cold / warm | series | etcd CPU (3 members) |\n")
	b.WriteString("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range results {
		for i, f := range r.perReplica {
			etcd := ""
			if i == 0 {
				etcd = fmt.Sprintf("%.1f%%", r.etcdCPU*100)
			}
			fmt.Fprintf(&b, "| %d | %d | %d | %.1f%% | %.1f ms | %.2f / %.2f GiB | %.2f / %.2f s | %.2f / %.2f s | %d | %s |\n",
				r.replicas, i, f.nodes, f.cpu*100, f.msPer1000Samples, gib(f.rssBefore), gib(f.rssAfter),
				f.coldMax.Seconds(), f.warmMax.Seconds(), f.coldCPU.Seconds(), f.warmCPU.Seconds(), f.series, etcd)
		}
	}
	writeReport(t, b.String())
}

// waitForPoll is waitFor with a polling period of its own (each poll of a
// large fleet costs).
func waitForPoll(tb testing.TB, timeout, every time.Duration, what string, cond func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(every)
	}
}
