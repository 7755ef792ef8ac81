#!/usr/bin/env bash
# Runs Vigil's benchmarks, the ones whose figures docs/benchmarks.md reports.
# Needs root (private containerd, network namespaces). Takes 10-25 minutes;
# BENCH_FULL=1 adds the 500-container runtime run and the 1,000-node fleet
# (another 15 minutes and about 2 GiB of memory).
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
fleet() { # NODES CONTAINERS
  local n=$1 m=$2 d agg lg grpc=127.0.0.1:27450 http=127.0.0.1:27451
  d=$(mktemp -d)
  CGO_ENABLED=0 go build -o "$d/vigil-aggregator" ./cmd/aggregator
  CGO_ENABLED=0 go build -o "$d/vigil-loadgen" ./cmd/vigil-loadgen
  "$d/vigil-loadgen" --tls-dir "$d/tls" --target $grpc --nodes "$n" --containers "$m" --interval 10s --duration 0 >"$d/loadgen.log" 2>&1 &
  lg=$!
  for _ in $(seq 50); do [ -f "$d/tls/aggregator.key" ] && break; sleep 0.2; done
  "$d/vigil-aggregator" --grpc-listen $grpc --http-listen $http --log-level warn \
    --tls-cert "$d/tls/aggregator.crt" --tls-key "$d/tls/aggregator.key" --tls-ca "$d/tls/ca.crt" >"$d/aggregator.log" 2>&1 &
  agg=$!
  # Wait until every node is connected, then let it settle.
  for _ in $(seq 300); do
    up=$(curl -s "http://$http/metrics?shard=0&shards=1" | awk '/^vigil_aggregator_streams_connected /{print $2}')
    [ "${up%.*}" = "$n" ] && break
    sleep 1
  done
  sleep 15
  cpu0=$(awk '{print $14+$15}' /proc/$agg/stat)
  sleep 60
  cpu1=$(awk '{print $14+$15}' /proc/$agg/stat)
  echo "fleet ${n}x${m}: ingest CPU over 60 s: $(( (cpu1-cpu0) ))0 ms ($(awk -v c=$((cpu1-cpu0)) 'BEGIN{printf "%.1f", c/60}')% of a core)"
  for i in $(seq 0 9); do
    curl -s -o /dev/null -w "  shard $i of 10: %{time_total} s, %{size_download} bytes\n" "http://$http/metrics?shard=$i&shards=10"
  done
  grep VmRSS /proc/$agg/status
  kill $lg $agg; wait $lg $agg 2>/dev/null || true
  rm -rf "$d"
}
fleet 100 100 | tee "$out/fleet-100x100.txt"
if [ "${BENCH_FULL:-}" = 1 ]; then fleet 1000 100 | tee "$out/fleet-1000x100.txt"; fi

say "done: results in $out/, write-ups in docs/benchmarks.md"
