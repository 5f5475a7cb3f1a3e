#!/usr/bin/env bash
# Stop the OpenSSH servers scripts/sshd-up.sh started: all of them, or the addresses named.
#
#   scripts/sshd-down.sh [HOST...]
#
# Only the listening server is stopped; sessions it already handed off (and the detached
# workers started through them) keep running, as when a real host's sshd goes away.
set -euo pipefail
state="${DASK_DEPLOY_SSH_DIR:-/tmp/dask-deploy-sshd}"
hosts=("$@")
if [ ${#hosts[@]} -eq 0 ]; then
  for pid_file in "$state"/sshd-*.pid; do
    [ -e "$pid_file" ] || continue
    host="${pid_file##*/sshd-}"
    hosts+=("${host%.pid}")
  done
fi
# The lock scripts/sshd-up.sh holds: a server it starts meanwhile keeps its pid file.
mkdir -p "$state"
exec 8>"$state.lock"
flock 8
for host in "${hosts[@]}"; do
  pid_file="$state/sshd-$host.pid"
  [ -s "$pid_file" ] || continue
  pid="$(cat "$pid_file")"
  if kill "$pid" 2>/dev/null; then
    # Gone, and its address free, before the next sshd-up may bind it.
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "sshd-down: $host (pid $pid) did not stop within 10 s" >&2
      exit 1
    fi
    echo "sshd-down: $host stopped (pid $pid)" >&2
  fi
  rm -f "$pid_file"
done
