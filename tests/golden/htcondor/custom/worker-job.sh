#!/bin/bash
# One Dask worker of deployment "physics", the executable of worker.sub.
# Rendered by dask-deploy 0.1.0. Its argument is the job id $(ClusterId).$(ProcId),
# which names the worker, so the scaler removes exactly the job the scheduler retired.
# It exits when the scheduler is unreachable for 120 s.
# condor_rm and a preemption send SIGTERM, then SIGKILL after the job's kill time: in between
# the worker hands its data over through the scheduler first (dask_deploy.worker_preload).
set -euo pipefail

# The Python environment every process runs from.
export VIRTUAL_ENV=/shared/envs/dask
export PATH="$VIRTUAL_ENV/bin:$PATH"
export OMP_NUM_THREADS=1
exec python3.11 -m dask worker \
  --name "$1" \
  --nthreads 8 \
  --memory-limit 32000MiB \
  --lifetime 14400s \
  --lifetime-stagger 90s \
  --death-timeout 120s \
  --preload-nanny dask_deploy.worker_preload \
  --preload dask_deploy.worker_preload \
  --tls-ca-file ../physics-tls/ca.pem \
  --tls-cert ../physics-tls/tls.crt \
  --tls-key ../physics-tls/tls.key \
  --resources GPU=1 \
  --scheduler-file physics-scheduler.json
