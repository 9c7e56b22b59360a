#!/usr/bin/env bash
# A Docker daemon for the docker sandbox tests, idempotent: installs docker.io (and debootstrap, which builds the
# sandbox image) when missing, starts dockerd when `docker info` fails, waits up to 60 s, prints one line.
set -euo pipefail

log=/var/log/dockerd.log

if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q docker.io debootstrap >/dev/null
fi

ready() { docker info >/dev/null 2>&1; }

wait_ready() {
  for _ in $(seq 60); do
    ready && return 0
    kill -0 "$1" 2>/dev/null || return 1  # dockerd gave up: no point waiting
    sleep 1
  done
  return 1
}

if ! ready; then
  # Defaults first (overlay2, iptables); nested or minimal VMs may need vfs and no iptables.
  for flags in "" "--storage-driver=vfs" "--storage-driver=vfs --iptables=false --bridge=none"; do
    # shellcheck disable=SC2086  # the flags are meant to split
    nohup dockerd $flags >"$log" 2>&1 &
    pid=$!
    if wait_ready "$pid"; then
      break
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "dockerd ${flags:-(defaults)} did not come up; last lines of $log:" >&2
    tail -n 5 "$log" >&2
  done
fi

if ready; then
  echo "dockerd: ready ($(docker info --format 'server {{.ServerVersion}}, storage {{.Driver}}, cgroup v{{.CgroupVersion}}'))"
else
  echo "dockerd: could not start a Docker daemon (see $log)" >&2
  exit 1
fi
