#!/usr/bin/env bash
# Build the scheduler, worker and scaler images from images/dask-deploy/Dockerfile, offline:
# the libraries' wheels are downloaded here on the host (pinned by constraints.txt) into the
# build context's wheels/, the dask-deploy wheel is built from this checkout into project/, and
# the build installs them with --no-index. Needs an engine (scripts/docker-up.sh) and the base
# image (scripts/base-images.sh). Docker's build cache does the rest: an unchanged checkout
# rebuilds nothing, a change to dask-deploy alone only its small last step (the Dockerfile says
# how the layers are ordered for that).
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
project="$context/project"
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

log "wheels for $version into $wheels and $project"
rm -rf "$wheels" "$project"
mkdir -p "$wheels" "$project"
cp "$repo/constraints.txt" "$wheels/constraints.txt"
# The libraries dask-deploy needs (the scheduler's preload) and, with the Docker, Kubernetes and
# Marathon extras, the scaler's: the images install them before dask-deploy itself, so that a
# change to dask-deploy alone leaves those layers cached (requirements/*.txt name these files).
"$python" - "$repo/pyproject.toml" "$wheels" <<'REQUIRES'
import sys, tomllib
from pathlib import Path
project = tomllib.loads(Path(sys.argv[1]).read_text())["project"]
core, extras = project["dependencies"], project["optional-dependencies"]
scaler = [*core, *(d for extra in ("docker", "kubernetes", "marathon") for d in extras[extra])]
Path(sys.argv[2], "dask-deploy-requires.txt").write_text("\n".join(core) + "\n")
Path(sys.argv[2], "dask-deploy-scaler-requires.txt").write_text("\n".join(scaler) + "\n")
REQUIRES
# The wheel is built from a copy of what it is made of (in a checkout: those files tracked, and
# new ones not ignored): setuptools reuses a build/ folder in the source tree, so a module deleted
# from the checkout stayed in the wheel, and in the images, for as long as that folder lived.
wheel_inputs=(pyproject.toml README.md LICENSE runtime templates)
source_copy="$(mktemp -d "${TMPDIR:-/tmp}/dask-deploy-wheel-source.XXXXXX")"
trap 'rm -rf "$source_copy"' EXIT
if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
  git -C "$repo" ls-files -z --cached --others --exclude-standard -- "${wheel_inputs[@]}" |
    tar -C "$repo" --null --files-from=- --ignore-failed-read -cf - 2>/dev/null |
    tar -C "$source_copy" -xf -
else
  (cd "$repo" && cp -a "${wheel_inputs[@]}" "$source_copy/")
fi
# A fixed date inside the wheel: the same code gives the same bytes, so Docker's build cache
# (which compares contents) reuses the dask-deploy layer too when nothing changed.
SOURCE_DATE_EPOCH=315532800 "$python" -m pip wheel --quiet --no-deps --wheel-dir "$project" \
  "$source_copy" 2>&1 | grep -v 'is ignored' >&2 || true
compgen -G "$project/dask_deploy-$version-*.whl" >/dev/null || { log "FAILED: no dask-deploy wheel built"; exit 1; }
# The host's pip (this machine's configured indexes); the image's Python is Debian bookworm's
# 3.11 on x86_64, like the host, so the same wheels fit.
"$python" -m pip download --quiet --only-binary=:all: --dest "$wheels" -c "$repo/constraints.txt" \
  -r "$context/requirements/worker.txt" -r "$context/requirements/scheduler.txt" \
  -r "$context/requirements/scaler.txt" 2>&1 | grep -v 'is ignored' >&2 || true
# pip itself, which the build runs from its wheel: the host's version.
"$python" -m pip download --quiet --no-deps --dest "$wheels" \
  "pip==$("$python" -m pip --version | cut -d' ' -f2)" 2>&1 | grep -v 'is ignored' >&2 || true
for requirement in pip distributed numpy pandas pyarrow bokeh docker kubernetes marathon; do
  compgen -G "$wheels/${requirement}-*.whl" >/dev/null || { log "FAILED: no $requirement wheel downloaded"; exit 1; }
done

# Without the base tag present, `docker build` would try a registry; refuse instead.
base="$(grep -m1 -oE '^FROM [^ ]+' "$context/Dockerfile" | cut -d' ' -f2)"
docker image inspect "$base" >/dev/null 2>&1 || {
  log "FAILED: base image $base is not present locally; run scripts/base-images.sh (make base-images) first"
  exit 1
}

# The first build makes every stage (the legacy builder builds the stages before its target);
# the others then find all their layers in the cache and only tag.
for role in "${roles[@]}"; do
  tag="$repository-$role:$version"
  log "building $tag"
  started=$SECONDS
  docker build --network host --quiet --target "$role" --tag "$tag" \
    --build-arg VERSION="$version" --build-arg REVISION="$revision" \
    --build-arg SOURCE="$source_url" "$context" >/dev/null
  log "$tag: $(docker image inspect --format '{{.Size}}' "$tag" | numfmt --to=si)B ($((SECONDS - started)) s)"
done

# What a rebuild leaves behind on the engine, about 1 GB per commit: the project's earlier images,
# untagged now (their labels say whose they are), and earlier builder stages, which no tag keeps.
# The current builder stage stays: it is the next build's cache.
current_builder="$(docker build --network host --quiet --target builder "$context")"
docker image prune --force --filter "label=org.opencontainers.image.source=$source_url" >/dev/null
stale_builders="$(docker images --quiet --no-trunc --filter dangling=true \
  --filter label=dask-deploy.stage=builder | grep -vxF "$current_builder" || true)"
if [ -n "$stale_builders" ]; then
  # shellcheck disable=SC2086 # one image id per word
  docker rmi $stale_builders >/dev/null 2>&1 || true
fi
