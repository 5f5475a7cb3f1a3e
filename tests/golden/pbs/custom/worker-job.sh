#!/bin/bash
# shellcheck disable=SC2016,SC1003,SC1090,SC1091  # quoted values hold $, ` and \ literally, on purpose; a prologue may source files only the site has
# One Dask worker of deployment "climate". The scaler submits this script with
# qsub; do not submit it by hand unless you want the scaler to adopt the job as its own.
# Rendered by dask-deploy 0.1.0.
#
# The worker is named after its job id, so the scaler cancels exactly the job of the worker the
# scheduler retired. Near its walltime the scaler retires it through the scheduler (its data
# moves to other workers) at the latest 600 s before the end; as a backstop it retires itself
# 120-240 s before the walltime (--lifetime). It exits when the scheduler is unreachable for 120 s.
# A SIGTERM from outside (qdel, preemption, the walltime) makes it hand its data over through
# the scheduler first (dask_deploy.worker_preload), within the server's kill_delay (Torque's
# default is 2 s: raise it, e.g. qmgr -c 'set queue QUEUE kill_delay = 30').
#PBS -N climate-worker
#PBS -l walltime=4:00:00
#PBS -l select=1:ncpus=8:mem=32000mb
#PBS -j oe
#PBS -A physics
#PBS -q gpu
#PBS -l ngpus=1
#PBS -W sandbox=PRIVATE
set -euo pipefail
cd "${PBS_O_WORKDIR:-$PWD}"
cd /scratch/climate/dask

# Prologue (pbs.prologue): the site's own setup, before anything else.
module load python/3.11
# The Python environment every process runs from.
export VIRTUAL_ENV=/shared/envs/dask
export PATH="$VIRTUAL_ENV/bin:$PATH"
export OMP_NUM_THREADS=1
# The job's output goes to the log folder (pbs.log_directory), beside the scheduler's.
log_dir=/scratch/climate/logs
exec >>"$log_dir/climate-worker-${PBS_JOBID:-$SLURM_JOB_ID}.log" 2>&1
# Torque and PBS name the job PBS_JOBID; SLURM's Torque commands run it as a SLURM job.
exec python3.11 -m dask worker \
  --name "${PBS_JOBID:-$SLURM_JOB_ID}" \
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
