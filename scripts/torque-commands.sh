#!/usr/bin/env bash
# Put SLURM's Torque-compatible qsub/qstat/qdel (Debian's slurm-wlm-torque) into a folder, for
# the pbs tests on the project's SLURM:
#
#   scripts/torque-commands.sh /tmp/dask-deploy-torque/bin   # prints the folder
#   export PATH=/tmp/dask-deploy-torque/bin:$PATH SLURM_CONF=/tmp/dask-deploy-slurm/slurm.conf
#
# The package cannot be installed beside gridengine-client (both ship /usr/bin/qsub, and Debian
# marks them as conflicting), and the sge tier needs Grid Engine's. So its three Perl scripts are
# unpacked from the .deb (fetched with apt-get download) into the folder, with its Perl modules
# (libslurm-perl, libslurmdb-perl, libswitch-perl) installed as usual. The scripts call sbatch,
# salloc, srun and scancel beside themselves ($FindBin::Bin), so links to SLURM's go there too.
# Idempotent.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
folder="${1:-/tmp/dask-deploy-torque/bin}"
"$here/ensure-apt.sh" slurm-client libslurm-perl libslurmdb-perl libswitch-perl
if [ -x "$folder/qsub" ] && [ -x "$folder/qstat" ] && [ -x "$folder/qdel" ]; then
  echo "$folder"
  exit 0
fi
work="$(mktemp -d /tmp/dask-deploy-torque.XXXXXX)"
trap 'rm -rf "$work"' EXIT
if ! (cd "$work" && apt-get download slurm-wlm-torque >/dev/null 2>&1); then
  # No lists, or stale ones: refresh them under ensure-apt.sh's lock, as other test workers may
  # be installing packages at this moment (a second apt-get update would fail on apt's lock).
  "$here/ensure-apt.sh" --update
  (cd "$work" && apt-get download slurm-wlm-torque >/dev/null)
fi
dpkg-deb -x "$work"/slurm-wlm-torque_*.deb "$work/root"
mkdir -p "$folder"
for command in qsub qstat qdel; do
  install -m 0755 "$work/root/usr/bin/$command" "$folder/$command"
done
for command in sbatch salloc srun scancel; do
  ln -sf "$(command -v "$command")" "$folder/$command"
done
echo "$folder"
