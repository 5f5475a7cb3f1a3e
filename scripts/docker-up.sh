#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine, for `make images` and the docker tests.
#
#   scripts/docker-up.sh     # installs docker.io when missing; starts dockerd when none answers
#
# When an engine already answers, it is used as it is and nothing is recorded, so
# scripts/docker-down.sh leaves it alone. Otherwise we start `dockerd --bridge=none`:
# every container of this project runs with --network host, so no bridge, no NAT rules and
# no private-range address is ever needed. The pid of the dockerd we started is recorded in
# $DASK_DEPLOY_DOCKER_DIR/dockerd.pid; docker-down stops exactly that process.
# On failure it prints the tail of dockerd's log and exits non-zero.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
state="${DASK_DEPLOY_DOCKER_DIR:-/tmp/dask-deploy-docker}"
log_file="$state/dockerd.log"
pid_file="$state/dockerd.pid"

log() { echo "docker-up: $*" >&2; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

"$here/ensure-apt.sh" docker.io
mkdir -p "$state"
exec 8>"$state.lock"
flock 8

if docker info >/dev/null 2>&1; then
  if alive "$pid_file"; then
    log "already up (started by us, pid $(cat "$pid_file"))"
  else
    log "already up (not started by us; left alone by docker-down)"
  fi
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# A dockerd we started earlier that no longer answers: stop it before starting afresh.
if alive "$pid_file"; then
  $SUDO kill "$(cat "$pid_file")" 2>/dev/null || true
  for _ in $(seq 1 40); do alive "$pid_file" || break; sleep 0.25; done
fi
rm -f "$pid_file"

log "starting dockerd --bridge=none (log: $log_file)"
# --iptables/--ip-masq off: without a bridge there is nothing to route, and no rule of ours
# should land in the host's firewall. containerd is started by dockerd itself.
# Every descriptor above stdio is closed for dockerd: our fd 8 and whatever lock a caller holds
# (`flock /tmp/some.lock make test` hands its fd down to us). dockerd would otherwise hold those
# locks for its whole life and block everyone waiting on them.
(
  for fd in /proc/"$BASHPID"/fd/*; do
    fd="${fd##*/}"
    [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
  done
  exec $SUDO setsid dockerd --bridge=none --iptables=false --ip-masq=false --ip6tables=false \
    --pidfile="$state/dockerd.self.pid" >"$log_file" 2>&1 </dev/null
) &
echo $! >"$pid_file"

for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then
    log "up: $(docker version --format 'engine {{.Server.Version}}'), storage $(docker info --format '{{.Driver}}')"
    exit 0
  fi
  if ! alive "$pid_file"; then break; fi
  sleep 0.5
done
log "FAILED: no engine answers after starting dockerd; tail of $log_file:"
tail -n 40 "$log_file" >&2 || true
"$here/docker-down.sh" >/dev/null 2>&1 || true
exit 1
