#!/usr/bin/env bash
# Start a Distribution registry (Debian's docker-registry) on 127.0.0.1, for `make publish` and
# the publish test: a real registry that nothing outside this machine can reach.
#
#   scripts/registry-up.sh [PORT]      # default 5000; installs docker-registry when missing
#
# Storage, configuration, log and pid live in $DASK_DEPLOY_REGISTRY_DIR (default
# /tmp/dask-deploy-registry-<PORT>); scripts/registry-down.sh [PORT] stops exactly that process.
# The Debian package's own service (port 5000 on every interface) is not used. Plain HTTP: the
# Docker engine trusts registries on 127.0.0.0/8 without TLS.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
port="${1:-5000}"
[[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || {
  echo "registry-up: PORT: got '$port', expected an integer from 1 to 65535" >&2
  exit 2
}
state="${DASK_DEPLOY_REGISTRY_DIR:-/tmp/dask-deploy-registry-$port}"
pid_file="$state/registry.pid"
log_file="$state/registry.log"

log() { echo "registry-up: $*" >&2; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
answers() { curl --silent --fail --max-time 2 --output /dev/null "http://127.0.0.1:$port/v2/"; }

"$here/ensure-apt.sh" docker-registry
mkdir -p "$state/data"
if alive "$pid_file" && answers; then
  log "already up on 127.0.0.1:$port (pid $(cat "$pid_file"))"
  exit 0
fi

cat >"$state/config.yml" <<CONFIG
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $state/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
CONFIG

log "starting docker-registry on 127.0.0.1:$port (log: $log_file)"
# Every descriptor above stdio is closed, so the registry holds no lock of its caller's.
(
  for fd in /proc/"$BASHPID"/fd/*; do
    fd="${fd##*/}"
    [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
  done
  exec setsid docker-registry serve "$state/config.yml" >"$log_file" 2>&1 </dev/null
) &
echo $! >"$pid_file"

for _ in $(seq 1 120); do
  if answers; then
    log "up: http://127.0.0.1:$port/v2/"
    exit 0
  fi
  alive "$pid_file" || break
  sleep 0.25
done
log "FAILED: the registry does not answer on 127.0.0.1:$port; tail of $log_file:"
tail -n 20 "$log_file" >&2 || true
"$here/registry-down.sh" "$port" >/dev/null 2>&1 || true
exit 1
