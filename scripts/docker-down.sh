#!/usr/bin/env bash
# Stop the Docker engine that scripts/docker-up.sh started, and only that one: an engine
# that was already running when docker-up ran was never recorded and is left alone.
# Images and the data root stay, so the next docker-up (and `make images`) is fast.
set -euo pipefail

state="${DASK_DEPLOY_DOCKER_DIR:-/tmp/dask-deploy-docker}"
pid_file="$state/dockerd.pid"

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

[ -s "$pid_file" ] || exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if alive "$pid_file"; then
  $SUDO kill "$(cat "$pid_file")" 2>/dev/null || true
  # dockerd stops its containers (10 s grace each) and its containerd before it exits.
  for _ in $(seq 1 120); do alive "$pid_file" || break; sleep 0.25; done
  if alive "$pid_file"; then
    $SUDO kill -KILL "$(cat "$pid_file")" 2>/dev/null || true
  fi
fi
rm -f "$pid_file"
echo "docker-down: stopped" >&2
