#!/usr/bin/env bash
# Stop the Grid Engine that scripts/sge-up.sh started: its jobs, the execution daemon and the
# master. The Debian init script cannot stop them, so this asks the master itself (qconf -k*).
# Idempotent: when nothing runs it does nothing. The configuration stays for the next sge-up.
set -euo pipefail
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
command -v qconf >/dev/null || exit 0
exec 8>/tmp/dask-deploy-sge.lock
flock 8
host="$(hostname)"
if qstat -u '*' >/dev/null 2>&1; then
  qdel -u '*' >/dev/null 2>&1 || true
  qconf -kej "$host" >/dev/null 2>&1 || true
  qconf -km >/dev/null 2>&1 || true
fi
for pidfile in /var/spool/gridengine/execd/*/execd.pid /var/spool/gridengine/qmaster/qmaster.pid; do
  [ -s "$pidfile" ] || continue
  pid="$(cat "$pidfile")"
  for _ in $(seq 1 40); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
done
echo "sge-down: stopped" >&2
