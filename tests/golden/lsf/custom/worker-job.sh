#!/bin/bash
# shellcheck disable=SC2016,SC1003,SC1090,SC1091  # quoted values hold $, ` and \ literally, on purpose; a prologue may source files only the site has
# One Dask worker of deployment "climate". The scaler submits this script with
# bsub; do not submit it by hand unless you want the scaler to adopt the job as its own.
# Rendered by dask-deploy 0.1.0.
#
# The worker is named after its job id, so the scaler cancels exactly the job of the worker the
# scheduler retired. Near its walltime the scaler retires it through the scheduler (its data
# moves to other workers) at the latest 600 s before the end; as a backstop it retires itself
# 120-240 s before the walltime (--lifetime). It exits when the scheduler is unreachable for 120 s.
# bkill and the run limit send SIGINT and SIGTERM, then SIGKILL after JOB_TERMINATE_INTERVAL
# (10 s by default): in between the worker hands its data over through the scheduler first
# (dask_deploy.worker_preload).
#BSUB -J climate-worker
#BSUB -Jd dask-deploy/climate
#BSUB -W 4:00
#BSUB -n 8
#BSUB -R "span[hosts=1]"
#BSUB -M 32000MB
#BSUB -o /scratch/climate/logs/climate-worker-%J.log
#BSUB -cwd /scratch/climate/dask
#BSUB -P physics
#BSUB -q gpu
#BSUB -gpu "num=1"
#BSUB -x
set -euo pipefail

# Prologue (lsf.prologue): the site's own setup, before anything else.
module load python/3.11
# The Python environment every process runs from.
export VIRTUAL_ENV=/shared/envs/dask
export PATH="$VIRTUAL_ENV/bin:$PATH"
export OMP_NUM_THREADS=1
exec python3.11 -m dask worker \
  --name "$LSB_JOBID" \
  --interface ib0 \
  --no-dashboard \
  --local-directory "$TMPDIR/dask" \
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
