#!/bin/bash
# One Dask worker of deployment "dask". The scaler submits this script with
# bsub; do not submit it by hand unless you want the scaler to adopt the job as its own.
# Rendered by dask-deploy 0.1.0.
#
# The worker is named after its job id, so the scaler cancels exactly the job of the worker the
# scheduler retired. It retires itself 300-420 s before the walltime (--lifetime), moving its
# data to other workers, and exits when the scheduler is unreachable for 60 s.
#BSUB -J dask-worker
#BSUB -Jd dask-deploy/dask
#BSUB -W 1:00
#BSUB -n 2
#BSUB -R "span[hosts=1]"
#BSUB -M 4096MB
#BSUB -o dask-worker-%J.log
set -euo pipefail

exec python3 -m dask worker \
  --name "$LSB_JOBID" \
  --nthreads 2 \
  --memory-limit 4096MiB \
  --lifetime 3240s \
  --lifetime-stagger 60s \
  --death-timeout 60s \
  --scheduler-file scheduler.json
