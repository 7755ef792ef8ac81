#!/usr/bin/env bash
# Runs Vigil's benchmarks, the ones whose figures docs/benchmarks.md reports.
# Needs root (private containerd, network namespaces). Takes 10-25 minutes;
# BENCH_FULL=1 adds the 500-container runtime run and the 1,000- and
# 2,000-node fleets (another 20 minutes and about 3 GiB of memory).
#
# Every benchmark compares against a baseline measured in the same run: the
# machine may be shared, so compare ratios, not absolute times.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${BENCH_OUT:-bench-results}
mkdir -p "$out"
say() { printf '\n== %s\n' "$*"; }

say "machine"
{ nproc; grep -m1 'model name' /proc/cpuinfo; uname -r; go version; uptime; } | tee "$out/machine.txt"

say "agent: restart overhead (exit to restart call, and containerd's own delete+create+start)"
go test -run '^$' -bench RestartOverhead -benchtime 30x -count 3 ./internal/agent | tee "$out/restart.txt"

say "health: CPU of 200 HTTP probes per second against an idle baseline"
go test -run '^$' -bench BenchmarkProbeCPU -benchtime 1x -count 3 ./internal/health | tee "$out/health.txt"

say "network: CPU per read cycle at 100 and 500 namespaces, against netlink handles and per-cycle setns"
go test -run '^$' -bench ReadCycle -count 3 ./internal/network | tee "$out/network.txt"

say "runtime: cgroup file reads, kept open vs reopened"
go test -run '^$' -bench 'CgroupRead|CgroupFile' -benchmem ./internal/runtime | tee "$out/cgroup.txt"

containers=100
[ "${BENCH_FULL:-}" = 1 ] && containers=100,500
say "runtime: collection cost per cycle, cgroup path vs task Metrics API, at $containers containers (agent + containerd + shims)"
go test -timeout 60m -v -run . ./test/bench/runtime -containers "$containers" | tee "$out/runtime.txt"

say "uplink: send and delivery, against a raw stream"
go test -run '^$' -bench 'Send|Stream' -benchmem ./internal/agent/uplink | tee "$out/uplink.txt"

say "metrics: pre-rendered exposition vs client_golang, same fleet"
go test -run '^$' -bench 'RenderNode|Exposition' -benchmem ./internal/metrics | tee "$out/metrics.txt"

say "aggregator: a loadgen fleet through real gRPC with mTLS"
# cpu PID: the process's user+system CPU so far, in clock ticks.
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
# shards DIR HTTP ROUND AGGPID: scrapes the 10 shards one after another and
# prints each one's time and size, then the aggregator's CPU for the round
# per million series served (a series is a line not starting with #).
shards() {
  local d=$1 http=$2 round=$3 agg=$4 c0 c1 i series=0 s
  c0=$(cpu "$agg")
  for i in $(seq 0 9); do
    curl -sf -o "$d/shard-$i.txt" -w "  $round shard $i of 10: %{time_total} s, %{size_download} bytes\n" "http://$http/metrics?shard=$i&shards=10"
  done
  c1=$(cpu "$agg")
  for i in $(seq 0 9); do
    s=$(grep -vc '^#' "$d/shard-$i.txt" || true)
    series=$((series + s))
  done
  rm -f "$d"/shard-*.txt
  awk -v c=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v n=$series -v r="$round" 'BEGIN{
    printf "  %s round: %d series, aggregator CPU %.2f s, %.2f s per million series\n", r, n, c/hz, (n ? c/hz*1e6/n : 0) }'
}
fleet() { # NODES CONTAINERS
  local n=$1 m=$2 d agg up= cpu0 cpu1 grpc=127.0.0.1:27450 http=127.0.0.1:27451
  # Whatever way fleet ends (a failed step exits the script under set -e),
  # the loadgen and the aggregator go with it. Globals: an EXIT trap runs
  # after fleet's locals are gone.
  fleet_pids= fleet_dir=$(mktemp -d)
  trap 'kill $fleet_pids 2>/dev/null || true; wait $fleet_pids 2>/dev/null || true; rm -rf "$fleet_dir"; trap - RETURN EXIT' RETURN EXIT
  d=$fleet_dir
  CGO_ENABLED=0 go build -trimpath -tags grpcnotrace -o "$d/vigil-aggregator" ./cmd/aggregator
  CGO_ENABLED=0 go build -o "$d/vigil-loadgen" ./cmd/vigil-loadgen
  "$d/vigil-loadgen" --tls-dir "$d/tls" --target $grpc --nodes "$n" --containers "$m" --interval 10s --duration 0 >"$d/loadgen.log" 2>&1 &
  fleet_pids=$!
  for _ in $(seq 50); do [ -f "$d/tls/aggregator.key" ] && break; sleep 0.2; done
  if [ ! -f "$d/tls/aggregator.key" ]; then
    echo "fleet ${n}x${m}: the loadgen wrote no TLS key in 10 s; its log ends:" >&2
    tail -n 20 "$d/loadgen.log" >&2
    return 1
  fi
  "$d/vigil-aggregator" --grpc-listen $grpc --http-listen $http --log-level warn \
    --tls-cert "$d/tls/aggregator.crt" --tls-key "$d/tls/aggregator.key" --tls-ca "$d/tls/ca.crt" >"$d/aggregator.log" 2>&1 &
  agg=$!
  fleet_pids="$fleet_pids $agg"
  # Wait until every node is connected (the port may not listen yet: curl
  # fails then), then let it settle.
  for _ in $(seq 300); do
    up=$(curl -s "http://$http/metrics?shard=0&shards=1" | awk '/^vigil_aggregator_streams_connected /{print $2}' || true)
    [ "${up%.*}" = "$n" ] && break
    sleep 1
  done
  if [ "${up%.*}" != "$n" ]; then
    echo "fleet ${n}x${m}: ${up:-no} nodes connected of $n after 300 s; the logs end:" >&2
    tail -n 20 "$d/loadgen.log" "$d/aggregator.log" >&2
    return 1
  fi
  sleep 15
  cpu0=$(cpu "$agg")
  sleep 60
  cpu1=$(cpu "$agg")
  awk -v c=$((cpu1 - cpu0)) -v hz="$(getconf CLK_TCK)" -v f="${n}x${m}" 'BEGIN{
    printf "fleet %s: ingest CPU over 60 s: %.0f ms (%.1f%% of a core)\n", f, c/hz*1000, c/hz/60*100 }'
  # Cold: the first scrapes render every node; warm: right after, most are
  # cached.
  shards "$d" $http cold "$agg"
  shards "$d" $http warm "$agg"
  grep VmRSS "/proc/$agg/status"
}
fleet 100 100 | tee "$out/fleet-100x100.txt"
if [ "${BENCH_FULL:-}" = 1 ]; then
  fleet 1000 100 | tee "$out/fleet-1000x100.txt"
  fleet 2000 100 | tee "$out/fleet-2000x100.txt"
fi

say "replicas: webhook to agent on bbolt and a 3-member etcd; failover of a killed replica's nodes"
go test -run '^$' -bench WebhookToAgent -benchtime 500x -count 2 ./test/bench/replicas | tee "$out/replicas-webhook.txt"
go test -timeout 20m -v -run TestFailover ./test/bench/replicas -failover-runs 4 -report "$out/replicas-failover.md" | grep -v '^ *{"level' | tee "$out/replicas-failover.txt"
if [ "${BENCH_FULL:-}" = 1 ]; then
  say "replicas: the loadgen fleet over 1 and 3 replicas on etcd"
  go test -timeout 80m -v -run TestFleet ./test/bench/replicas -fleet-replicas 1,3 -fleet-nodes 2000 -report "$out/replicas-fleet.md" | grep -v '^ *{"level' | tee "$out/replicas-fleet.txt"
fi

say "done: results in $out/, write-ups in docs/benchmarks.md"
