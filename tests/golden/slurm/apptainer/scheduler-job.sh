#!/bin/bash
# shellcheck disable=SC2016  # quoted values hold $ and ` literally, on purpose
# Dask scheduler and its scaler for deployment "boxed", in one SLURM allocation.
# Rendered by dask-deploy 0.1.0. Submit it from the folder it was rendered into:
#   sbatch scheduler-job.sh
# Clients connect with Client(scheduler_file="scheduler.json"); the scaler
# submits worker-job.sh as the load asks and cancels exactly the workers the scheduler retired.
#SBATCH --job-name=boxed-scheduler
#SBATCH --comment=dask-deploy/boxed
#SBATCH --time=1440
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=2048M
#SBATCH --output=boxed-scheduler-%j.log
set -euo pipefail

# This deployment's own CA, certificate and key (tls.generate), made once and readable by you
# alone: only clients given these files get in. The CA's key is deleted once it has signed.
tls_dir=tls
if [ ! -s "$tls_dir/tls.key" ]; then
  (
    umask 077
    mkdir -p "$tls_dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=dask-deploy boxed CA" \
      -keyout "$tls_dir/ca.key" -out "$tls_dir/ca.pem"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=dask-deploy boxed" \
      -keyout "$tls_dir/tls.key" -out "$tls_dir/tls.csr"
    printf 'extendedKeyUsage=serverAuth,clientAuth\n' >"$tls_dir/tls.ext"
    openssl x509 -req -in "$tls_dir/tls.csr" -CA "$tls_dir/ca.pem" -CAkey "$tls_dir/ca.key" \
      -CAcreateserial -days 365 -extfile "$tls_dir/tls.ext" -out "$tls_dir/tls.crt"
    rm -f "$tls_dir/ca.key" "$tls_dir/ca.srl" "$tls_dir/tls.csr" "$tls_dir/tls.ext"
  )
fi
chmod 0700 "$tls_dir"

scheduler_file=scheduler.json
# A file left by an earlier run would send workers and clients to a scheduler that is gone.
rm -f "$scheduler_file"

apptainer exec --bind /scratch --cleanenv /shared/images/dask-deploy_0.1.0.sif python3 -m dask scheduler \
  --port 0 \
  --preload dask_deploy.scheduler_preload \
  --protocol tls \
  --dashboard-address :8787 \
  --tls-ca-file tls/ca.pem \
  --tls-cert tls/tls.crt \
  --tls-key tls/tls.key \
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
  apptainer exec --bind /scratch --cleanenv /shared/images/dask-deploy_0.1.0.sif python3 -m dask_deploy.cli scale --config scaler-config.yaml &
  scaler=$!
}
start_scaler

# scancel, or the walltime, sends SIGTERM: stop the scaler first so that it cancels the worker
# jobs (cleanup_on_exit), then the scheduler.
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
