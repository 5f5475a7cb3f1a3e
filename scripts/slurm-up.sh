#!/usr/bin/env bash
# Start a real SLURM on this machine for the tests: our own munged, one slurmctld and
# several slurmd (multiple-slurmd), all on 127.0.0.1, without systemd.
#
#   scripts/slurm-up.sh            # installs slurm-wlm and munge when missing, then starts
#   export SLURM_CONF=/tmp/dask-deploy-slurm/slurm.conf   # for sinfo, sbatch, squeue, ...
#
# Idempotent: when the same configuration is already up and healthy it does nothing.
# Everything (config, key, state, logs, pid files) lives under $DASK_DEPLOY_SLURM_DIR.
# On failure it prints the tail of SLURM's and munge's logs and exits non-zero.
set -euo pipefail

# The daemons started below inherit every open descriptor and keep it for their whole life: a
# caller's lock (`flock /tmp/dd-slurm.lock scripts/slurm-up.sh`) would stay held by munged for as
# long as SLURM runs, and nobody could take it again. Close all but 0-2.
for fd in "/proc/$$/fd"/*; do
  fd="${fd##*/}"
  [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null || true
done

here="$(cd "$(dirname "$0")" && pwd)"
state="${DASK_DEPLOY_SLURM_DIR:-/tmp/dask-deploy-slurm}"
nodes="${DASK_DEPLOY_SLURM_NODES:-3}"
cpus="${DASK_DEPLOY_SLURM_CPUS:-4}"
memory="${DASK_DEPLOY_SLURM_MEMORY:-4000}"
ctld_port="${DASK_DEPLOY_SLURM_PORT:-16817}"
first_node_port=$((ctld_port + 1))
conf="$state/slurm.conf"
export SLURM_CONF="$conf"

log() { echo "slurm-up: $*" >&2; }

show_logs() {
  local file
  for file in "$state"/log/*.log; do
    [ -e "$file" ] || continue
    echo "----- tail of $file" >&2
    tail -n 30 "$file" >&2
  done
}

fail() {
  log "FAILED: $*"
  show_logs
  # Leave nothing half-started behind (the logs stay).
  DASK_DEPLOY_SLURM_LOCKED=1 "$here/slurm-down.sh" "$state" >/dev/null 2>&1 || true
  exit 1
}

# A daemon killed a moment ago may linger as a zombie until it is reaped: that is not alive.
alive() {
  local pid
  [ -s "$1" ] && pid="$(cat "$1")" && kill -0 "$pid" 2>/dev/null || return 1
  [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" != Z* ]]
}

all_nodes_ready() {
  # idle, mixed or allocated; a '*' (not responding) or drain/down state is not ready.
  local states
  states="$(sinfo --noheader --Node --format='%N %t' 2>/dev/null)" || return 1
  [ "$(grep -cE '^node[0-9]+ (idle|mix|alloc)$' <<<"$states")" -eq "$nodes" ]
}

healthy() {
  [ -f "$conf" ] && cmp -s "$conf" "$state/slurm.conf.new" || return 1
  alive "$state/munge-socket/munged.pid" && alive "$state/run/slurmctld.pid" || return 1
  local k
  for k in $(seq 1 "$nodes"); do alive "$state/run/slurmd-node$k.pid" || return 1; done
  scontrol ping >/dev/null 2>&1 && all_nodes_ready
}

render_conf() {
  sed -e "s|@STATE@|$state|g" -e "s|@HOST@|$(hostname -s)|g" -e "s|@NODES@|$nodes|g" \
    -e "s|@CPUS@|$cpus|g" -e "s|@MEMORY@|$memory|g" -e "s|@CTLD_PORT@|$ctld_port|g" \
    -e "s|@FIRST_NODE_PORT@|$first_node_port|g" -e "s|@LAST_NODE_PORT@|$((ctld_port + nodes))|g" \
    "$here/slurm/slurm.conf.in" >"$state/slurm.conf.new"
}

"$here/ensure-apt.sh" slurm-wlm munge
mkdir -p "$state"
# One start or stop at a time, even when two test sessions begin together.
exec 8>"$state.lock"
flock 8

render_conf

if healthy; then
  rm -f "$state/slurm.conf.new"
  log "already up and healthy ($nodes nodes); SLURM_CONF=$conf"
  exit 0
fi

# Only the controller is gone (it crashed or was killed): start it alone. It recovers the jobs
# from its saved state and the running slurmd keep theirs, so nobody's jobs are lost.
only_controller_down() {
  [ -f "$conf" ] && cmp -s "$conf" "$state/slurm.conf.new" || return 1
  alive "$state/munge-socket/munged.pid" && ! alive "$state/run/slurmctld.pid" || return 1
  local k
  for k in $(seq 1 "$nodes"); do alive "$state/run/slurmd-node$k.pid" || return 1; done
}
if only_controller_down; then
  log "restarting slurmctld alone (the daemons and jobs are still there)"
  if slurmctld -f "$conf" </dev/null >>"$state/log/daemons.log" 2>&1 8>&-; then
    for _ in $(seq 1 120); do
      if scontrol ping >/dev/null 2>&1 && all_nodes_ready; then
        rm -f "$state/slurm.conf.new"
        log "up again: $nodes nodes; SLURM_CONF=$conf"
        exit 0
      fi
      sleep 0.25
    done
  fi
  log "slurmctld did not come back alone: starting everything afresh"
fi

# Something is missing or the configuration changed: stop what we started, start afresh.
# The daemons must not inherit the lock (fd 8), or the next slurm-down would wait forever.
DASK_DEPLOY_SLURM_LOCKED=1 "$here/slurm-down.sh" "$state" >/dev/null 2>&1 || true
mv "$state/slurm.conf.new" "$conf"
mkdir -p "$state/ctld" "$state/run" "$state/log" "$state/munge"
for k in $(seq 1 "$nodes"); do mkdir -p "$state/spool/node$k"; done
rm -f "$state"/log/*.log

# munged insists that its key, socket and log belong to the user it runs as, that the key
# is private and that everybody may reach the socket.
mkdir -p "$state/munge-socket"
chown munge:munge "$state/munge" "$state/munge-socket"
chmod 0700 "$state/munge"
chmod 0755 "$state/munge-socket"
if [ ! -s "$state/munge/munge.key" ]; then
  runuser -u munge -- mungekey --create --keyfile="$state/munge/munge.key" ||
    fail "could not create a munge key"
fi
touch "$state/log/munged.log" && chown munge:munge "$state/log/munged.log"
runuser -u munge -- munged --socket="$state/munge-socket/munge.socket" \
  --key-file="$state/munge/munge.key" --pid-file="$state/munge-socket/munged.pid" \
  --log-file="$state/log/munged.log" --seed-file="$state/munge/munged.seed" \
  </dev/null >>"$state/log/daemons.log" 2>&1 8>&- || fail "munged did not start"
for _ in $(seq 1 20); do
  alive "$state/munge-socket/munged.pid" && [ -S "$state/munge-socket/munge.socket" ] && break
  sleep 0.25
done
alive "$state/munge-socket/munged.pid" || fail "munged did not come up"

slurmctld -f "$conf" </dev/null >>"$state/log/daemons.log" 2>&1 8>&- ||
  fail "slurmctld did not start"
for k in $(seq 1 "$nodes"); do
  slurmd -f "$conf" -N "node$k" </dev/null >>"$state/log/daemons.log" 2>&1 8>&- ||
    fail "slurmd -N node$k did not start"
done

log "waiting for $nodes nodes to be idle"
for _ in $(seq 1 120); do
  if all_nodes_ready; then
    log "up: $nodes nodes x $cpus CPUs; export SLURM_CONF=$conf"
    exit 0
  fi
  sleep 0.5
done
sinfo --Node >&2 || true
fail "nodes did not become idle within 60 s"
