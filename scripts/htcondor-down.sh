#!/usr/bin/env bash
# Stop the pool scripts/htcondor-up.sh started (its container only). The image, the rootfs
# and the wheels stay, so the next htcondor-up starts in seconds.
set -euo pipefail
exec 9>"${DASK_DEPLOY_DOCKER_LOCK:-/tmp/dd-docker.lock}"
flock 9
docker rm -f dask-deploy-htcondor >/dev/null 2>&1 || true
