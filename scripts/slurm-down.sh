#!/usr/bin/env bash
# Stop the SLURM that scripts/slurm-up.sh started, and only that: cancel its jobs, then stop
# the daemons whose pid files slurm-up left under its folder.
#
#   scripts/slurm-down.sh                 # the one in $DASK_DEPLOY_SLURM_DIR (or the default)
#   scripts/slurm-down.sh DIR [DIR ...]   # each of these (the test workers' SLURMs)
#
# Logs and the munge key stay, so a failure can still be read afterwards.
set -euo pipefail

# A daemon killed a moment ago may linger as a zombie until it is reaped: that is not alive.
alive() {
  local pid
  [ -s "$1" ] && pid="$(cat "$1")" && kill -0 "$pid" 2>/dev/null || return 1
  [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" != Z* ]]
}

stop_one() {
  local state="$1" pid_file still
  local -a pid_files
  export SLURM_CONF="$state/slurm.conf"
  [ -d "$state/run" ] || return 0
  if [ -z "${DASK_DEPLOY_SLURM_LOCKED:-}" ]; then
    exec 8>"$state.lock"
    flock 8
  fi

  # Jobs first, while slurmctld can still tell the slurmd to end them: with proctrack/linuxproc
  # a job's processes would otherwise outlive the daemons.
  if alive "$state/run/slurmctld.pid"; then
    scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 1 40); do
      [ -z "$(squeue --noheader --all --format=%i 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi

  pid_files=("$state"/run/slurmd-*.pid "$state/run/slurmctld.pid" "$state/munge-socket/munged.pid")
  for pid_file in "${pid_files[@]}"; do
    alive "$pid_file" && kill "$(cat "$pid_file")" 2>/dev/null || true
  done
  for _ in $(seq 1 40); do
    still=0
    for pid_file in "${pid_files[@]}"; do alive "$pid_file" && still=1; done
    [ "$still" -eq 0 ] && break
    sleep 0.25
  done
  for pid_file in "${pid_files[@]}"; do
    alive "$pid_file" && kill -KILL "$(cat "$pid_file")" 2>/dev/null || true
  done
  rm -rf "$state/run" "$state/ctld" "$state/spool"
  echo "slurm-down: stopped $state" >&2
}

if [ "$#" -eq 0 ]; then
  set -- "${DASK_DEPLOY_SLURM_DIR:-/tmp/dask-deploy-slurm}"
fi
# Each in a subshell of its own (its lock, its SLURM_CONF), all at once.
pids=()
for state in "$@"; do
  stop_one "$state" &
  pids+=("$!")
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit "$status"
