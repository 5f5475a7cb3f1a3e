#!/bin/bash
# shellcheck disable=SC2016,SC1003,SC1090,SC1091  # quoted values hold $, ` and \ literally, on purpose; a prologue may source files only the site has
# One Dask worker of deployment "secure". The scaler submits this script with
# bsub; do not submit it by hand unless you want the scaler to adopt the job as its own.
# Rendered by dask-deploy 0.1.0.
#
# The worker is named after its job id, so the scaler cancels exactly the job of the worker the
# scheduler retired. Near its walltime the scaler retires it through the scheduler (its data
# moves to other workers) at the latest 300 s before the end; as a backstop it retires itself
# 60-60 s before the walltime (--lifetime). It exits when the scheduler is unreachable for 60 s.
# bkill and the run limit send SIGINT and SIGTERM, then SIGKILL after JOB_TERMINATE_INTERVAL
# (10 s by default): in between the worker hands its data over through the scheduler first
# (dask_deploy.worker_preload).
#BSUB -J secure-worker
#BSUB -Jd dask-deploy/secure
#BSUB -W 1:00
#BSUB -n 2
#BSUB -R "span[hosts=1]"
#BSUB -M 4096MB
#BSUB -o ../secure-logs/secure-worker-%J.log
set -euo pipefail

exec python3 -m dask worker \
  --name "$LSB_JOBID" \
  --no-dashboard \
  --nthreads 2 \
  --memory-limit 4096MiB \
  --lifetime 3540s \
  --lifetime-stagger 0s \
  --death-timeout 60s \
  --preload-nanny dask_deploy.worker_preload \
  --preload dask_deploy.worker_preload \
  --tls-ca-file /shared/dask/tls/ca.pem \
  --tls-cert /shared/dask/tls/dask.crt \
  --tls-key /shared/dask/tls/dask.key \
  --scheduler-file secure-scheduler.json
