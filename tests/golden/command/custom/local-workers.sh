#!/bin/bash
# shellcheck disable=SC2016  # quoted values hold $ and ` literally, on purpose
# Workers of deployment "nomad" as `dask worker` processes on this machine:
# the command backend's first example. Rendered by dask-deploy 0.1.0; edit freely.
#   local-workers.sh start NAME      start one worker, print its process group id
#   local-workers.sh stop NAME...    stop these workers (SIGTERM, SIGKILL after 30 s)
#   local-workers.sh list            print "<name> running|exited" per worker
# The scaler sets DASK_DEPLOY_SCHEDULER_ADDRESS. Each worker runs in a process group of its own
# whose id is in <state>/<name>.pid, so stop ends exactly that worker and its children.
set -euo pipefail

state=/var/lib/dask/workers
export VIRTUAL_ENV=/opt/dask
export PATH="$VIRTUAL_ENV/bin:$PATH"
mkdir -p "$state"

case "${1:-}" in
start)
  name="$2"
  # setsid: a new session and process group whose id is the worker's pid. Its output goes to
  # a log file: a worker holding our stdout would keep the scaler waiting for it.
  setsid python3 -m distributed.cli.dask_worker \
    "$DASK_DEPLOY_SCHEDULER_ADDRESS" \
    --name "$name" \
    --local-directory "$state/$name" \
    --nthreads 4 \
    --memory-limit 16GiB \
    --death-timeout 120 \
    --resources GPU=1 \
    </dev/null >"$state/$name.log" 2>&1 &
  pid="$!"
  # setsid makes the group in the child, after the fork, and list and stop address the group:
  # return once it exists (or the worker is already gone), so that a list right after this
  # start cannot report the new worker exited and forget it while it runs.
  for _ in $(seq 1 100); do
    if kill -0 -- "-$pid" 2>/dev/null || ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.05
  done
  echo "$pid" >"$state/$name.pid"
  echo "$pid"
  ;;
stop)
  shift
  groups=()
  for name in "$@"; do
    [ -s "$state/$name.pid" ] || continue
    pid="$(cat "$state/$name.pid")"
    kill -TERM -- "-$pid" 2>/dev/null || true
    groups+=("$pid")
  done
  for _ in $(seq 1 300); do
    alive=()
    for pid in "${groups[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive+=("$pid"); done
    groups=("${alive[@]}")
    [ -z "${groups[*]}" ] && break
    sleep 0.1
  done
  # Only the groups still there: an ended group's id may be another process's by now.
  for pid in "${groups[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  for name in "$@"; do rm -rf "${state:?}/$name.pid" "${state:?}/$name"; done
  ;;
list)
  for record in "$state"/*.pid; do
    [ -e "$record" ] || continue
    name="$(basename "$record" .pid)"
    if kill -0 -- "-$(cat "$record")" 2>/dev/null; then
      echo "$name running"
    else
      # Reported once, then forgotten; its log stays for a look.
      echo "$name exited"
      rm -rf "$record" "${state:?}/$name"
    fi
  done
  ;;
*)
  echo "usage: $0 start NAME | stop NAME... | list" >&2
  exit 2
  ;;
esac
