#!/bin/bash
# shellcheck disable=SC2016  # quoted values hold $ and ` literally, on purpose
# One Dask worker of deployment "climate". The scaler submits this script with
# qsub; do not submit it by hand unless you want the scaler to adopt the job as its own.
# Rendered by dask-deploy 0.1.0.
#
# The worker is named after its job id, so the scaler cancels exactly the job of the worker the
# scheduler retired. Near its walltime the scaler retires it through the scheduler (its data
# moves to other workers) at the latest 600 s before the end; as a backstop it retires itself
# 120-240 s before the walltime (--lifetime). It exits when the scheduler is unreachable for 120 s.
#PBS -N climate-worker
#PBS -l walltime=4:00:00
#PBS -l select=1:ncpus=8:mem=32000mb
#PBS -j oe
#PBS -A physics
#PBS -q gpu
#PBS -l ngpus=1
#PBS -W sandbox=PRIVATE
set -euo pipefail
cd /scratch/climate/dask

# The Python environment every process runs from.
export VIRTUAL_ENV=/shared/envs/dask
export PATH="$VIRTUAL_ENV/bin:$PATH"
export OMP_NUM_THREADS=1
# Torque and PBS name the job PBS_JOBID; SLURM's Torque commands run it as a SLURM job.
exec python3.11 -m dask worker \
  --name "${PBS_JOBID:-$SLURM_JOB_ID}" \
  --nthreads 8 \
  --memory-limit 32000MiB \
  --lifetime 14220s \
  --lifetime-stagger 60s \
  --death-timeout 120s \
  --resources GPU=1 \
  --scheduler-file scheduler.json
