#!/usr/bin/env bash
# Stop the registry scripts/registry-up.sh [PORT] started, and only that one. Its storage stays in
# $DASK_DEPLOY_REGISTRY_DIR (default /tmp/dask-deploy-registry-<PORT>).
#
#   scripts/registry-down.sh [PORT]
set -euo pipefail

port="${1:-5000}"
state="${DASK_DEPLOY_REGISTRY_DIR:-/tmp/dask-deploy-registry-$port}"
pid_file="$state/registry.pid"

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

[ -s "$pid_file" ] || exit 0
if alive "$pid_file"; then
  kill "$(cat "$pid_file")" 2>/dev/null || true
  for _ in $(seq 1 40); do alive "$pid_file" || break; sleep 0.25; done
  alive "$pid_file" && kill -KILL "$(cat "$pid_file")" 2>/dev/null
fi
rm -f "$pid_file"
echo "registry-down: stopped 127.0.0.1:$port" >&2
