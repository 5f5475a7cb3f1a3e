#!/bin/bash
# shellcheck disable=SC2016,SC1003,SC1090,SC1091  # quoted values hold $, ` and \ literally, on purpose; a prologue may source files only the site has
# Dask scheduler and its scaler for deployment "dask", in one LSF job.
# Rendered by dask-deploy 0.1.0. Submit it from the folder it was rendered into:
#   bsub < scheduler-job.sh
# Clients connect with Client(scheduler_file="dask-scheduler.json"); the scaler
# submits worker-job.sh as the load asks and cancels exactly the workers the scheduler retired.
#BSUB -J dask-scheduler
#BSUB -Jd dask-deploy/dask
#BSUB -W 24:00
#BSUB -n 1
#BSUB -M 2048MB
#BSUB -o ../dask-logs/dask-scheduler-%J.log
set -euo pipefail

# This deployment's own CA, certificate and key (tls.generate), made once and readable by you
# alone: only clients given these files get in. The CA's key is deleted once it has signed.
tls_dir=../dask-tls
if [ ! -s "$tls_dir/tls.key" ]; then
  (
    umask 077
    mkdir -p "$tls_dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=dask-deploy dask CA" \
      -keyout "$tls_dir/ca.key" -out "$tls_dir/ca.pem"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=dask-deploy dask" \
      -keyout "$tls_dir/tls.key" -out "$tls_dir/tls.csr"
    printf 'extendedKeyUsage=serverAuth,clientAuth\n' >"$tls_dir/tls.ext"
    openssl x509 -req -in "$tls_dir/tls.csr" -CA "$tls_dir/ca.pem" -CAkey "$tls_dir/ca.key" \
      -CAcreateserial -days 365 -extfile "$tls_dir/tls.ext" -out "$tls_dir/tls.crt"
    rm -f "$tls_dir/ca.key" "$tls_dir/ca.srl" "$tls_dir/tls.csr" "$tls_dir/tls.ext"
  )
fi
chmod 0700 "$tls_dir"

# Every job writes its output into the log folder (lsf.log_directory), the scaler too.
log_dir=../dask-logs
mkdir -p "$log_dir"
# Absolute, because the scaler starts in another folder when lsf.workdir moves the jobs.
log_dir=$(cd "$log_dir" && pwd)
scheduler_file=dask-scheduler.json
# A file left by an earlier run would send workers and clients to a scheduler that is gone.
rm -f "$scheduler_file"

python3 -m dask scheduler \
  --port 0 \
  --preload dask_deploy.scheduler_preload \
  --protocol tls \
  --dashboard-address :8787 \
  --tls-ca-file ../dask-tls/ca.pem \
  --tls-cert ../dask-tls/tls.crt \
  --tls-key ../dask-tls/tls.key \
  --scheduler-file "$scheduler_file" &
scheduler=$!

# The scaler reads the scheduler's address from the file, so it starts once the file is there.
for _ in $(seq 1 120); do
  [ -s "$scheduler_file" ] && break
  kill -0 "$scheduler" 2>/dev/null || { echo "the scheduler exited before it wrote $scheduler_file" >&2; exit 1; }
  sleep 1
done
[ -s "$scheduler_file" ] || { echo "no $scheduler_file after 120 s" >&2; kill "$scheduler"; exit 1; }

# The scaler runs where bsub was called (beside scaler-config.yaml and worker-job.sh, whatever
# lsf.workdir says) and on the host, outside any image: it calls bsub, bjobs and bkill.
rendered=${LS_SUBCWD:-$PWD}
start_scaler() {
  (
    cd "$rendered"
    exec python3 -m dask_deploy.cli scale --config scaler-config.yaml >>"$log_dir/dask-scaler-$LSB_JOBID.log" 2>&1
  ) &
  scaler=$!
  scaler_started=$SECONDS
}
start_scaler

# bkill, or the run limit, sends SIGINT and SIGTERM (SIGKILL 10 s later, JOB_TERMINATE_INTERVAL):
# stop the scaler first so that it cancels the worker jobs (cleanup_on_exit), then the scheduler.
stop() {
  trap - TERM INT
  kill -TERM "$scaler" 2>/dev/null || true
  wait "$scaler" || true
  kill -TERM "$scheduler" 2>/dev/null || true
  wait "$scheduler" || true
}
trap 'stop; exit 143' TERM INT

# The scheduler's end is the deployment's end. A scaler that dies is started again, as Marathon
# or Kubernetes would: it is level-triggered and takes over the worker jobs it finds. A scaler
# that refused its configuration (exit status 2, the reason is in its log) starts again once
# scaler-config.yaml changes; one that crashes again soon waits twice as long each time (5 s to
# 5 min), so a broken setup neither spins nor floods the log.
delay=5
while true; do
  status=0
  wait -n || status=$?
  kill -0 "$scheduler" 2>/dev/null || break
  if [ "$status" -eq 2 ]; then
    echo "the scaler refused its configuration (see its log in $log_dir); it starts again when $rendered/scaler-config.yaml changes" >&2
    checksum=$(cksum <"$rendered/scaler-config.yaml" 2>/dev/null || true)
    while [ "$(cksum <"$rendered/scaler-config.yaml" 2>/dev/null || true)" = "$checksum" ]; do
      sleep 5 &
      wait "$!" || true
      kill -0 "$scheduler" 2>/dev/null || break 2
    done
    delay=5
  else
    if [ $((SECONDS - scaler_started)) -ge 300 ]; then delay=5; fi
    echo "the scaler exited with status $status; starting it again in $delay s" >&2
    sleep "$delay" &
    wait "$!" || true
    delay=$((delay * 2 > 300 ? 300 : delay * 2))
  fi
  start_scaler
done
stop
exit "$status"
