#!/bin/bash
# shellcheck disable=SC2016,SC1003,SC1090,SC1091  # quoted values hold $, ` and \ literally, on purpose; a prologue may source files only the site has
# One Dask worker of deployment "dask". The scaler submits this script with
# sbatch; do not submit it by hand unless you want the scaler to adopt the job as its own.
# Rendered by dask-deploy 0.1.0.
#
# The worker is named after its job id, so the scaler cancels exactly the job of the worker the
# scheduler retired. Near its walltime the scaler retires it through the scheduler (its data
# moves to other workers) at the latest 300 s before the end; as a backstop it retires itself
# 60-60 s before the walltime (--lifetime). It exits when the scheduler is unreachable for 60 s.
# A SIGTERM from outside (scancel, preemption, the walltime) makes it hand its data over through
# the scheduler first (dask_deploy.worker_preload), within SLURM's KillWait (30 s by default).
#SBATCH --job-name=dask-worker
#SBATCH --comment=dask-deploy/dask
#SBATCH --time=60
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --mem=4096M
#SBATCH --output=../dask-logs/dask-worker-%j.log
set -euo pipefail

exec python3 -m dask worker \
  --name "$SLURM_JOB_ID" \
  --no-dashboard \
  --nthreads 2 \
  --memory-limit 4096MiB \
  --lifetime 3540s \
  --lifetime-stagger 0s \
  --death-timeout 60s \
  --preload-nanny dask_deploy.worker_preload \
  --preload dask_deploy.worker_preload \
  --tls-ca-file ../dask-tls/ca.pem \
  --tls-cert ../dask-tls/tls.crt \
  --tls-key ../dask-tls/tls.key \
  --scheduler-file dask-scheduler.json
