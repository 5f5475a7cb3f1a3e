#!/bin/bash
# One Dask worker of deployment "dask", the executable of worker.sub.
# Rendered by dask-deploy 0.1.0. Its argument is the job id $(ClusterId).$(ProcId),
# which names the worker, so the scaler removes exactly the job the scheduler retired.
# It exits when the scheduler is unreachable for 60 s.
# condor_rm and a preemption send SIGTERM, then SIGKILL after the job's kill time: in between
# the worker hands its data over through the scheduler first (dask_deploy.worker_preload).
set -euo pipefail

exec python3 -m dask worker \
  --name "$1" \
  --nthreads 2 \
  --memory-limit 4096MiB \
  --death-timeout 60s \
  --preload-nanny dask_deploy.worker_preload \
  --preload dask_deploy.worker_preload \
  --tls-ca-file ../dask-tls/ca.pem \
  --tls-cert ../dask-tls/tls.crt \
  --tls-key ../dask-tls/tls.key \
  --scheduler-file dask-scheduler.json
