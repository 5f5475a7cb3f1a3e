#!/bin/bash
# shellcheck disable=SC2016  # quoted values hold $ and ` literally, on purpose
# One Dask worker of deployment "dask". The scaler submits this script with
# qsub; do not submit it by hand unless you want the scaler to adopt the job as its own.
# Rendered by dask-deploy 0.1.0.
#
# The worker is named after its job id, so the scaler cancels exactly the job of the worker the
# scheduler retired. Near its walltime the scaler retires it through the scheduler (its data
# moves to other workers) at the latest 300 s before the end; as a backstop it retires itself
# 60-60 s before the walltime (--lifetime). It exits when the scheduler is unreachable for 60 s.
#PBS -N dask-worker
#PBS -l walltime=1:00:00
#PBS -l nodes=1:ppn=2
#PBS -l mem=4096mb
#PBS -j oe
set -euo pipefail
cd "${PBS_O_WORKDIR:-$PWD}"

# Torque and PBS name the job PBS_JOBID; SLURM's Torque commands run it as a SLURM job.
exec python3 -m dask worker \
  --name "${PBS_JOBID:-$SLURM_JOB_ID}" \
  --nthreads 2 \
  --memory-limit 4096MiB \
  --lifetime 3540s \
  --lifetime-stagger 0s \
  --death-timeout 60s \
  --scheduler-file scheduler.json
