# Sourced by the scripts that run Docker work (htcondor-up.sh, htcondor-down.sh):
#   . "$here/docker-lock.sh"; take_docker_lock
# Docker work is serialised with the other engineers' through this lock. A caller that holds it
# already (`flock /tmp/dd-docker.lock make test`: pytest inherited the fd, we did not) would
# otherwise wait for itself forever: an ancestor holding the file open means we are under it.
# shellcheck shell=bash
docker_lock="${DASK_DEPLOY_DOCKER_LOCK:-/tmp/dd-docker.lock}"

under_docker_lock() {
  local pid=$PPID fd
  while [ "${pid:-1}" -gt 1 ]; do
    for fd in "/proc/$pid/fd"/*; do
      [ "$(readlink "$fd" 2>/dev/null)" = "$docker_lock" ] && return 0
    done
    pid="$(awk '/^PPid:/ {print $2}' "/proc/$pid/status" 2>/dev/null)"
  done
  return 1
}

# Holds the lock on fd 9 until the script exits, unless an ancestor holds it already.
take_docker_lock() {
  under_docker_lock || { exec 9>"$docker_lock" && flock 9; }
}
