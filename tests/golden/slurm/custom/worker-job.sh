#!/bin/bash
# shellcheck disable=SC2016,SC1003,SC1090,SC1091  # quoted values hold $, ` and \ literally, on purpose; a prologue may source files only the site has
# One Dask worker of deployment "climate". The scaler submits this script with
# sbatch; do not submit it by hand unless you want the scaler to adopt the job as its own.
# Rendered by dask-deploy 0.1.0.
#
# The worker is named after its job id, so the scaler cancels exactly the job of the worker the
# scheduler retired. Near its walltime the scaler retires it through the scheduler (its data
# moves to other workers) at the latest 600 s before the end; as a backstop it retires itself
# 120-240 s before the walltime (--lifetime). It exits when the scheduler is unreachable for 120 s.
# A SIGTERM from outside (scancel, preemption, the walltime) makes it hand its data over through
# the scheduler first (dask_deploy.worker_preload), within SLURM's KillWait (30 s by default).
#SBATCH --job-name=climate-worker
#SBATCH --comment=dask-deploy/climate
#SBATCH --time=240
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32000M
#SBATCH --output=/scratch/climate/logs/climate-worker-%j.log
#SBATCH --chdir=/scratch/climate/dask
#SBATCH --partition=compute
#SBATCH --account=proj-42
#SBATCH --qos=high
#SBATCH --constraint=haswell
#SBATCH --exclusive=user
set -euo pipefail

# The Python environment every process runs from.
export VIRTUAL_ENV=/shared/envs/dask
export PATH="$VIRTUAL_ENV/bin:$PATH"
export OMP_NUM_THREADS=1
export MALLOC_TRIM_THRESHOLD_=65536
exec python3.11 -m dask worker \
  --name "$SLURM_JOB_ID" \
  --no-dashboard \
  --nthreads 8 \
  --memory-limit 32000MiB \
  --lifetime 14220s \
  --lifetime-stagger 60s \
  --death-timeout 120s \
  --preload-nanny dask_deploy.worker_preload \
  --preload dask_deploy.worker_preload \
  --tls-ca-file ../climate-tls/ca.pem \
  --tls-cert ../climate-tls/tls.crt \
  --tls-key ../climate-tls/tls.key \
  --resources GPU=1 \
  --scheduler-file climate-scheduler.json
