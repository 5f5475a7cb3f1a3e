#!/bin/bash
# shellcheck disable=SC2016  # quoted values hold $ and ` literally, on purpose
# Dask scheduler and its scaler for deployment "dask", in one LSF job.
# Rendered by dask-deploy 0.1.0. Submit it from the folder it was rendered into:
#   bsub < scheduler-job.sh
# Clients connect with Client(scheduler_file="scheduler.json"); the scaler
# submits worker-job.sh as the load asks and cancels exactly the workers the scheduler retired.
#BSUB -J dask-scheduler
#BSUB -Jd dask-deploy/dask
#BSUB -W 24:00
#BSUB -n 1
#BSUB -M 2048MB
#BSUB -o dask-scheduler-%J.log
set -euo pipefail

scheduler_file=scheduler.json
# A file left by an earlier run would send workers and clients to a scheduler that is gone.
rm -f "$scheduler_file"

python3 -m dask scheduler \
  --port 0 \
  --preload dask_deploy.scheduler_preload \
  --dashboard-address :8787 \
  --scheduler-file "$scheduler_file" &
scheduler=$!

# The scaler reads the scheduler's address from the file, so it starts once the file is there.
for _ in $(seq 1 120); do
  [ -s "$scheduler_file" ] && break
  kill -0 "$scheduler" 2>/dev/null || { echo "the scheduler exited before it wrote $scheduler_file" >&2; exit 1; }
  sleep 1
done
[ -s "$scheduler_file" ] || { echo "no $scheduler_file after 120 s" >&2; kill "$scheduler"; exit 1; }

start_scaler() {
  python3 -m dask_deploy.cli scale --config scaler-config.yaml &
  scaler=$!
}
start_scaler

# bkill, or the run limit, sends SIGINT and SIGTERM (SIGKILL 10 s later, JOB_TERMINATE_INTERVAL):
# stop the scaler first so that it kills the worker jobs (cleanup_on_exit), then the scheduler.
stop() {
  trap - TERM INT
  kill -TERM "$scaler" 2>/dev/null || true
  wait "$scaler" || true
  kill -TERM "$scheduler" 2>/dev/null || true
  wait "$scheduler" || true
}
trap 'stop; exit 143' TERM INT

# The scheduler's end is the deployment's end. A scaler that dies is started again, as Marathon
# or Kubernetes would: it is level-triggered and takes over the worker jobs it finds. The pause
# keeps a scaler that cannot start (a broken configuration) from spinning.
while true; do
  status=0
  wait -n || status=$?
  kill -0 "$scheduler" 2>/dev/null || break
  echo "the scaler exited with status $status; starting it again in 5 s" >&2
  sleep 5 &
  wait "$!" || true
  start_scaler
done
stop
exit "$status"
