#!/usr/bin/env bash
# `make demo` and `make demo-down`: Vigil's data path on this machine (a
# private containerd, vigil-aggregator, vigil-agent, Prometheus and a few
# containers). The work is done by test/demo, which shares its code with the
# end-to-end test (test/chain).
#   scripts/demo.sh up      start it all (after `make build`), narrate, leave it running
#   scripts/demo.sh status  what runs
#   scripts/demo.sh down    stop and remove everything the demo started; safe to run twice
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "demo: needs root (containerd, network namespaces, cgroups): run 'sudo make demo'" >&2
  exit 1
fi
case "${1:-}" in
  up|status|down) ;;
  *) echo "usage: $0 up|status|down" >&2; exit 2 ;;
esac
# Build the demo program for `up` (so that it matches the tree), and
# otherwise only when it is missing: `down` then works even when the module
# cache is cold or the network is gone.
if [ "$1" = up ] || [ ! -x bin/vigil-demo ]; then
  mkdir -p bin
  go build -o bin/vigil-demo ./test/demo
fi
exec bin/vigil-demo "$@"
