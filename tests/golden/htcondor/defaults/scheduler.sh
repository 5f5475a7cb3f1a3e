#!/bin/bash
# Dask scheduler and its scaler for deployment "dask", on the submit host.
# Rendered by dask-deploy 0.1.0. Run it from the folder it was rendered into, which the
# execute nodes must see (they read the scheduler file there), and keep it running:
#   nohup ./scheduler.sh >/dev/null 2>&1 &
# It writes its log, and the scaler's, to ../dask-logs/dask-scheduler.log.
# Clients connect with Client(scheduler_file="dask-scheduler.json") and the TLS files (README.md); the scaler
# submits worker.sub as the load asks and removes exactly the workers the scheduler retired.
# It runs here, not in a job, because condor_submit/condor_q/condor_rm need the schedd of a
# submit host, which an execute slot usually cannot reach.
set -euo pipefail

cd "$(dirname "$0")"
# Every log goes to the log folder (htcondor.log_directory): this script's and the scaler's here,
# the worker jobs' there too (worker.sub), so it must exist before the first submit.
log_dir=../dask-logs
mkdir -p "$log_dir"
exec >>"$log_dir/dask-scheduler.log" 2>&1

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

# The scaler runs here, beside scaler-config.yaml and worker.sub; its output goes where this
# script's goes (the log folder).
rendered=$PWD
start_scaler() {
  python3 -m dask_deploy.cli scale --config scaler-config.yaml &
  scaler=$!
  scaler_started=$SECONDS
}
start_scaler

# SIGTERM or Ctrl-C: stop the scaler first so that it removes the worker jobs (cleanup_on_exit),
# then the scheduler.
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
    echo "the scaler refused its configuration (above); it starts again when $rendered/scaler-config.yaml changes" >&2
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
