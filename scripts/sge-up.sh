#!/usr/bin/env bash
# Start a real Grid Engine (Debian's gridengine 8.1.9) on this machine for the tests: one
# sge_qmaster and one sge_execd on this host, reached through its name on 127.0.0.1.
#
#   scripts/sge-up.sh              # installs gridengine-master/-exec/-client when missing, then starts
#   qsub / qstat / qdel            # work right away (the Debian wrappers find SGE_ROOT themselves)
#
# Idempotent: when both daemons answer it only re-applies the configuration (cheap, no restart).
# Facts of the Debian package this script handles (each checked on a fresh machine):
#  - the non-interactive install leaves act_qmaster empty: it must name this host, and because
#    127.0.0.1 reverse-resolves to "localhost", host_aliases maps localhost to the same host;
#  - min_uid/min_gid are 1000, so root cannot submit: lowered to 0 (the tests run as root);
#  - `qconf -Mconf FILE` only accepts a file named "global";
#  - the scheduler runs every 15 s by default: every second here;
#  - jobs start as login shells of their owner by default (login_shells bash,...), so root's
#    jobs here would run this machine's ~/.profile: its `pyenv init` takes a lock file that a
#    job killed by qdel at that moment leaves behind, and from then on every login on the
#    machine (ssh sessions too) waits 60 s for it. Jobs start as plain shells (login_shells
#    none): the rendered job scripts never rely on a login environment (sge.prologue is for that);
#  - the init script cannot stop the daemons: scripts/sge-down.sh uses `qconf -km` / `-ke`.
# On failure it prints the tail of the daemons' messages and exits non-zero.
set -euo pipefail

# The daemons started below inherit every open descriptor and keep it for their whole life: a
# caller's lock (`flock /tmp/some.lock scripts/sge-up.sh`) would stay held. Close all but 0-2.
for fd in "/proc/$$/fd"/*; do
  fd="${fd##*/}"
  [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null || true
done

here="$(cd "$(dirname "$0")" && pwd)"
slots="${DASK_DEPLOY_SGE_SLOTS:-8}"
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
common="$SGE_ROOT/$SGE_CELL/common"
host="$(hostname)"
master_spool=/var/spool/gridengine/qmaster
execd_spool=/var/spool/gridengine/execd
work="$(mktemp -d /tmp/dask-deploy-sge-up.XXXXXX)"
trap 'rm -rf "$work"' EXIT

log() { echo "sge-up: $*" >&2; }

fail() {
  log "FAILED: $*"
  local file
  for file in "$master_spool/messages" "$execd_spool"/*/messages; do
    [ -e "$file" ] || continue
    echo "----- tail of $file" >&2
    tail -n 30 "$file" >&2
  done
  exit 1
}

alive() {
  local pid
  [ -s "$1" ] && pid="$(cat "$1")" && kill -0 "$pid" 2>/dev/null || return 1
  [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" != Z* ]]
}

"$here/ensure-apt.sh" gridengine-master gridengine-exec gridengine-client
# One start at a time, even when two test sessions begin together.
exec 8>/tmp/dask-deploy-sge.lock
flock 8

# Where the clients and daemons find the master, and which name 127.0.0.1 goes by.
if [ "$(cat "$common/act_qmaster" 2>/dev/null)" != "$host" ]; then
  echo "$host" >"$common/act_qmaster"
fi
if [ "$host" != localhost ] && ! grep -qx "$host localhost" "$common/host_aliases" 2>/dev/null; then
  echo "$host localhost" >"$common/host_aliases"
fi
mkdir -p /var/run/gridengine && chown sgeadmin:sgeadmin /var/run/gridengine

master_answers() { qstat -u '*' >/dev/null 2>&1; }

if ! alive "$master_spool/qmaster.pid"; then
  log "starting sge_qmaster"
  rm -f "$master_spool/qmaster.pid" "$master_spool/lock"
  # The daemons must not inherit the lock (fd 8), or the next start would wait on them.
  /usr/sbin/sge_qmaster </dev/null >/dev/null 2>&1 8>&- || fail "sge_qmaster did not start"
fi
for _ in $(seq 1 120); do
  master_answers && break
  sleep 0.5
done
master_answers || fail "sge_qmaster does not answer within 60 s"

# Configuration: every step below is idempotent (replace, or add when absent).
# qconf reports every success on stderr: keep quiet unless it fails.
quiet_qconf() {
  local out
  out="$(qconf "$@" 2>&1)" || fail "qconf $*: $out"
}
apply() { # apply SHOW MODIFY ADD NAME FILE: modify when NAME exists, add otherwise
  local show="$1" modify="$2" add="$3" name="$4" file="$5"
  if qconf "$show" "$name" >/dev/null 2>&1; then
    quiet_qconf "$modify" "$file"
  else
    quiet_qconf "$add" "$file"
  fi
}

mkdir -p "$work/conf"
qconf -sconf global | sed -e '/^#/d' \
  -e 's/^min_uid .*/min_uid 0/' -e 's/^min_gid .*/min_gid 0/' \
  -e 's/^login_shells .*/login_shells none/' \
  -e 's/^execd_params .*/execd_params ENABLE_ADDGRP_KILL=true/' \
  -e 's/^load_report_time .*/load_report_time 00:00:05/' \
  -e 's/^max_unheard .*/max_unheard 00:00:30/' >"$work/conf/global"
quiet_qconf -Mconf "$work/conf/global"

qconf -ssconf | sed -e 's/^schedule_interval .*/schedule_interval 0:0:1/' \
  -e 's/^job_load_adjustments .*/job_load_adjustments NONE/' \
  -e 's/^load_adjustment_decay_time .*/load_adjustment_decay_time 0:0:0/' \
  -e 's/^flush_submit_sec .*/flush_submit_sec 1/' \
  -e 's/^flush_finish_sec .*/flush_finish_sec 1/' >"$work/sched"
quiet_qconf -Msconf "$work/sched"

qconf -sh 2>/dev/null | grep -qx "$host" || quiet_qconf -ah "$host"
qconf -ss 2>/dev/null | grep -qx "$host" || quiet_qconf -as "$host"

cat >"$work/exechost" <<EOF
hostname              $host
load_scaling          NONE
complex_values        NONE
user_lists            NONE
xuser_lists           NONE
projects              NONE
xprojects             NONE
usage_scaling         NONE
report_variables      NONE
EOF
apply -se -Me -Ae "$host" "$work/exechost"

cat >"$work/allhosts" <<EOF
group_name @allhosts
hostlist $host
EOF
apply -shgrp -Mhgrp -Ahgrp @allhosts "$work/allhosts"

# "smp": every slot of a job on one host, the usual name for multi-threaded jobs (-pe smp N).
cat >"$work/smp" <<EOF
pe_name            smp
slots              999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    \$pe_slots
control_slaves     FALSE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
EOF
apply -sp -Mp -Ap smp "$work/smp"

# all.q starts from the template of this very version, with our host, slots and PE; no load
# threshold, because a busy shared machine must not put the only queue into alarm state.
if qconf -sq all.q >"$work/queue.base" 2>/dev/null; then :; else qconf -sq >"$work/queue.base"; fi
sed -e 's/^qname .*/qname all.q/' -e 's/^hostlist .*/hostlist @allhosts/' \
  -e "s/^slots .*/slots $slots/" -e 's/^pe_list .*/pe_list smp/' \
  -e 's/^load_thresholds .*/load_thresholds NONE/' -e 's/^shell .*/shell \/bin\/bash/' \
  "$work/queue.base" >"$work/all.q"
apply -sq -Mq -Aq all.q "$work/all.q"

# sge_execd names its spool folder after what gethostname resolves to ("localhost" here).
execd_alive() {
  local pidfile
  for pidfile in "$execd_spool"/*/execd.pid; do
    alive "$pidfile" && return 0
  done
  return 1
}
if ! execd_alive; then
  log "starting sge_execd"
  mkdir -p "$execd_spool" && chown sgeadmin:sgeadmin "$execd_spool"
  /usr/sbin/sge_execd </dev/null >/dev/null 2>&1 8>&- || fail "sge_execd did not start"
fi

# Ready when the execution host reports load and its queue instance takes jobs (no state flags).
queue_ready() {
  qstat -f -q "all.q@$host" 2>/dev/null | awk -v q="all.q@$host" '$1 == q { print NF }' | grep -qx 5
}
for _ in $(seq 1 120); do
  queue_ready && break
  sleep 0.5
done
queue_ready || { qstat -f >&2 || true; fail "queue all.q@$host is not ready within 60 s"; }
log "up: all.q@$host with $slots slots; qsub, qstat and qdel are ready"
