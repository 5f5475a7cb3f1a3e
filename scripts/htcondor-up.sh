#!/usr/bin/env bash
# Start a real HTCondor personal pool for the tests, in a container on the host's network.
#
#   scripts/htcondor-up.sh        # builds the image when missing (~5 min), then starts the pool
#   export PATH="$PWD/scripts/htcondor/bin:$PATH"   # condor_submit/_q/_history/_rm/_hold
#
# HTCondor is not packaged for bookworm, but trixie ships `htcondor`. The image is built here,
# never pulled: debootstrap a minimal trixie from Debian's archive, `docker import` it,
# `apt-get install htcondor` inside it, and install dask/distributed into /opt/dask from wheels
# downloaded on the host (pip inside a container fails TLS) at the pins of constraints.txt.
# Idempotent: the rootfs, the wheels and the image are kept and reused; a running, healthy pool
# is left as it is. Everything lives under $DASK_DEPLOY_HTCONDOR_DIR; the pool's shared folder
# ($DASK_DEPLOY_HTCONDOR_DIR/share, same path inside and out) holds job files and logs.
# Docker work is serialised with the other engineers' through /tmp/dd-docker.lock.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/docker-lock.sh
. "$here/docker-lock.sh"
repo="$(cd "$here/.." && pwd)"
state="${DASK_DEPLOY_HTCONDOR_DIR:-/tmp/dask-deploy-htcondor}"
image="dask-deploy/htcondor:trixie"
base_image="dask-deploy/trixie-base:local"
container="dask-deploy-htcondor"
mirror="${DASK_DEPLOY_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Jobs owned by root are refused, so they are submitted by this user, with the host user's uid
# when that is not root (files in the shared folder then belong to the host user).
submitter="dask-deploy-condor"
submitter_uid="$(id -u)"
[ "$submitter_uid" -ne 0 ] || submitter_uid=2742

log() { echo "htcondor-up: $*" >&2; }
fail() {
  log "FAILED: $*"
  if docker inspect "$container" >/dev/null 2>&1; then
    docker exec "$container" sh -c 'tail -n 20 /var/log/condor/*Log' >&2 2>/dev/null || true
  fi
  exit 1
}

"$here/docker-up.sh"
"$here/ensure-apt.sh" debootstrap
mkdir -p "$state/share"
chmod 1777 "$state/share"
healthy() {
  [ "$(docker inspect -f '{{.State.Running}}' "$container" 2>/dev/null)" = "true" ] &&
    docker exec "$container" condor_status -af Name 2>/dev/null | grep -q slot
}
# A healthy pool needs nothing: answer without queueing behind other Docker work for the lock.
if docker image inspect "$image" >/dev/null 2>&1 && healthy; then
  log "already up ($container)"
  exit 0
fi
take_docker_lock

build_image() {
  local started=$SECONDS
  if [ ! -x "$state/rootfs/usr/bin/python3" ]; then
    log "debootstrap trixie from $mirror (a few minutes)"
    rm -rf "$state/rootfs.partial"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      trixie "$state/rootfs.partial" "$mirror" >"$state/debootstrap.log" 2>&1 ||
      { tail -n 20 "$state/debootstrap.log" >&2; fail "debootstrap"; }
    mv "$state/rootfs.partial" "$state/rootfs"
  fi
  local python
  python="$(basename "$(readlink -f "$state/rootfs/usr/bin/python3")")"   # python3.13
  local version="${python#python}"
  log "downloading dask/distributed wheels for Python $version at the pins of constraints.txt"
  python3 -m pip download -q --dest "$state/wheels" --only-binary=:all: \
    --python-version "$version" --implementation cp --abi "cp${version/./}" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 \
    --platform manylinux2010_x86_64 --platform manylinux_2_5_x86_64 \
    --platform manylinux1_x86_64 --platform any \
    -c "$repo/constraints.txt" dask distributed 2>/dev/null || fail "pip download"
  log "docker import of the trixie rootfs"
  tar -C "$state/rootfs" -c . | docker import - "$base_image" >/dev/null
  log "apt-get install htcondor; dask into /opt/dask"
  docker rm -f "$container-build" >/dev/null 2>&1 || true
  docker run --name "$container-build" --network host -v "$state/wheels:/wheels:ro" \
    "$base_image" sh -euc '
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -q >/dev/null
      apt-get install -y -q --no-install-recommends htcondor procps >/dev/null
      python3 -m venv /opt/dask
      /opt/dask/bin/pip install -q --no-index --find-links /wheels dask distributed
      apt-get clean; rm -rf /var/lib/apt/lists/*' || fail "installing htcondor and dask"
  docker commit -c 'CMD ["/usr/sbin/condor_master", "-f"]' "$container-build" "$image" >/dev/null
  docker rm "$container-build" >/dev/null
  log "image $image built in $((SECONDS - started)) s"
}


started=$SECONDS
docker image inspect "$image" >/dev/null 2>&1 || build_image
if healthy; then
  log "already up ($container)"
  exit 0
fi
docker rm -f "$container" >/dev/null 2>&1 || true
config="$state/dask-deploy.conf"
cat >"$config" <<CONF
# A personal pool on loopback only (written by scripts/htcondor-up.sh).
use ROLE: Personal
CONDOR_HOST = 127.0.0.1
NETWORK_INTERFACE = 127.0.0.1
# Without this the daemons advertise and use the host's IPv6 address despite the line above.
ENABLE_IPV6 = FALSE
# ROLE: Personal puts the collector on a random port; the tools must find it at a fixed one.
COLLECTOR_HOST = 127.0.0.1:9618
SHARED_PORT_PORT = 9618
# One partitionable slot large enough for several small workers; run everything at once.
NUM_CPUS = 8
MEMORY = 8192
NUM_SLOTS = 1
NUM_SLOTS_TYPE_1 = 1
SLOT_TYPE_1 = cpus=100%, memory=100%
SLOT_TYPE_1_PARTITIONABLE = TRUE
START = TRUE
SUSPEND = FALSE
PREEMPT = FALSE
KILL = FALSE
SCHEDD_INTERVAL = 5
NEGOTIATOR_INTERVAL = 2
NEGOTIATOR_CYCLE_DELAY = 5
CONF
docker run -d --name "$container" --network host \
  -v "$state/share:$state/share" -v "$config:/etc/condor/config.d/99-dask-deploy.conf:ro" \
  "$image" /usr/sbin/condor_master -f >/dev/null || fail "docker run"
docker exec "$container" sh -c "id -u $submitter >/dev/null 2>&1 || useradd -m -u $submitter_uid $submitter" ||
  fail "creating the submitting user"
for _ in $(seq 1 120); do
  if healthy; then
    log "up in $((SECONDS - started)) s: $container (collector 127.0.0.1:9618, submitter $submitter)"
    exit 0
  fi
  sleep 1
done
fail "no slot advertised after 120 s"
