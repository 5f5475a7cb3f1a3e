#!/bin/bash
# shellcheck disable=SC2016,SC1003,SC1090,SC1091  # quoted values hold $, ` and \ literally, on purpose; a prologue may source files only the site has
# One Dask worker of deployment "dask". The scaler submits this script with
# qsub; do not submit it by hand unless you want the scaler to adopt the job as its own.
# Rendered by dask-deploy 0.1.0.
#
# The worker is named after its job id, so the scaler cancels exactly the job of the worker the
# scheduler retired. Near its walltime the scaler retires it through the scheduler (its data
# moves to other workers) at the latest 300 s before the end; as a backstop it retires itself
# 60-60 s before the walltime (--lifetime). It exits when the scheduler is unreachable for 60 s.
# A SIGTERM from outside makes it hand its data over through the scheduler first
# (dask_deploy.worker_preload). Grid Engine's qdel and h_rt send SIGKILL, which nothing can
# answer, unless the queue's terminate_method is SIGTERM (qconf -mq); the scaler's own
# scale-down and the walltime handover above retire through the scheduler before qdel.
#$ -N dask-worker
#$ -S /bin/bash
#$ -A dask-deploy.dask
#$ -l h_rt=1:00:00
#$ -j y
#$ -o ../dask-logs/dask-worker-$JOB_ID.log
#$ -cwd
#$ -pe smp 2
#$ -l mem_free=2048M
set -euo pipefail

exec python3 -m dask worker \
  --name "$JOB_ID" \
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
