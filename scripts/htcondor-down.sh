#!/usr/bin/env bash
# Stop the pool scripts/htcondor-up.sh started (its container only). The image, the rootfs
# and the wheels stay, so the next htcondor-up starts in seconds.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/docker-lock.sh
. "$here/docker-lock.sh"
take_docker_lock
docker rm -f dask-deploy-htcondor >/dev/null 2>&1 || true
