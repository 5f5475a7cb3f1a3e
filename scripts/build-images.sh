#!/usr/bin/env bash
# Build the scheduler, worker and scaler images from images/dask-deploy/Dockerfile, offline:
# wheels are downloaded here on the host (pinned by constraints.txt) into the build context
# and installed in the build with --no-index. Needs an engine (scripts/docker-up.sh) and the
# base image (scripts/base-images.sh).
#
#   scripts/build-images.sh [ROLE...]      # default: scheduler worker scaler
#
# Tags: $DASK_DEPLOY_IMAGE_REPOSITORY-<role>:<package version>
# (default ghcr.io/dask-deploy/dask-deploy-worker:0.1.0 and so on).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
context="$repo/images/dask-deploy"
wheels="$context/wheels"
python="${PYTHON:-$repo/.venv/bin/python}"
repository="${DASK_DEPLOY_IMAGE_REPOSITORY:-ghcr.io/dask-deploy/dask-deploy}"
roles=("$@")
[ ${#roles[@]} -gt 0 ] || roles=(scheduler worker scaler)

log() { echo "build-images: $*" >&2; }

# One build at a time on this machine: each run empties and refills $wheels, so two at once
# (two test sessions finding the images stale) would build from a half-filled folder.
exec 9>"${TMPDIR:-/tmp}/dask-deploy-build-images.lock"
flock 9

version="$("$python" -c 'import tomllib; print(tomllib.load(open("'"$repo"'/pyproject.toml", "rb"))["project"]["version"])')"
# The commit the images are built from; "-dirty" when the checkout has uncommitted changes, so a
# published image never claims a commit it was not built from.
revision="$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
if [ "$revision" != unknown ] && [ -n "$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  revision="$revision-dirty"
fi
source_url="$("$python" -c 'import tomllib; print(tomllib.load(open("'"$repo"'/pyproject.toml", "rb"))["project"]["urls"]["Source"])')"

log "wheels for $version into $wheels"
rm -rf "$wheels"
mkdir -p "$wheels"
cp "$repo/constraints.txt" "$wheels/constraints.txt"
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$wheels" "$repo" 2>&1 | grep -v 'is ignored' >&2 || true
package_wheel="$(ls "$wheels"/dask_deploy-"$version"-*.whl)"
# The host's pip (this machine's configured indexes); the image's Python is Debian bookworm's
# 3.11 on x86_64, like the host, so the same wheels fit.
"$python" -m pip download --quiet --only-binary=:all: --dest "$wheels" -c "$repo/constraints.txt" \
  -r "$context/requirements/scheduler.txt" -r "$context/requirements/worker.txt" \
  "${package_wheel}[docker,kubernetes,marathon]" 2>&1 | grep -v 'is ignored' >&2 || true
for requirement in distributed numpy pandas pyarrow bokeh docker kubernetes marathon; do
  compgen -G "$wheels/${requirement}-*.whl" >/dev/null || { log "FAILED: no $requirement wheel downloaded"; exit 1; }
done

# Without the base tag present, `docker build` would try a registry; refuse instead.
base="$(grep -m1 -oE '^FROM [^ ]+' "$context/Dockerfile" | cut -d' ' -f2)"
docker image inspect "$base" >/dev/null 2>&1 || {
  log "FAILED: base image $base is not present locally; run scripts/base-images.sh (make base-images) first"
  exit 1
}

for role in "${roles[@]}"; do
  tag="$repository-$role:$version"
  log "building $tag"
  docker build --network host --quiet --target "$role" --tag "$tag" \
    --build-arg VERSION="$version" --build-arg REVISION="$revision" \
    --build-arg SOURCE="$source_url" "$context" >/dev/null
  log "$tag: $(docker image inspect --format '{{.Size}}' "$tag" | numfmt --to=si)B"
done
