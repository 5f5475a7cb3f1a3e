#!/usr/bin/env bash
# Stop the pool scripts/htcondor-up.sh started (its container only). The image, the rootfs
# and the wheels stay, so the next htcondor-up starts in seconds.
set -euo pipefail

# Docker work is serialised with the other engineers' through this lock. A caller that holds it
# already (`flock /tmp/dd-docker.lock make test`: pytest inherited the fd, we did not) would
# otherwise wait for itself forever: an ancestor holding the file open means we are under it.
docker_lock="${DASK_DEPLOY_DOCKER_LOCK:-/tmp/dd-docker.lock}"
under_lock() {
  local pid=$PPID fd
  while [ "${pid:-1}" -gt 1 ]; do
    for fd in "/proc/$pid/fd"/*; do
      [ "$(readlink "$fd" 2>/dev/null)" = "$docker_lock" ] && return 0
    done
    pid="$(awk '/^PPid:/ {print $2}' "/proc/$pid/status" 2>/dev/null)"
  done
  return 1
}
under_lock || { exec 9>"$docker_lock" && flock 9; }
docker rm -f dask-deploy-htcondor >/dev/null 2>&1 || true
