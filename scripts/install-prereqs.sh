#!/usr/bin/env bash
# Installs the system packages Vigil's tests and demo run against, once.
# Safe to run again: it installs only what is missing. Needs root on Debian.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "$1" ]; }
have containerd || need+=(containerd)
have runc || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
{ [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || need+=(busybox-static)
have prometheus || need+=(prometheus)
have prometheus-alertmanager || need+=(prometheus-alertmanager)
have ip || need+=(iproute2)
have kubectl || need+=(kubectl)
have etcd || need+=(etcd-server)
have etcdctl || need+=(etcd-client)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-prereqs: missing ${need[*]} and not root: install them or run as root" >&2
  exit 1
fi
if ! have apt-get; then
  echo "install-prereqs: missing ${need[*]} and no apt-get on this machine" >&2
  exit 1
fi
echo "install-prereqs: installing ${need[*]}"
exec 9>/tmp/vigil-apt.lock
flock 9
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
