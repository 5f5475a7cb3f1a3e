#!/usr/bin/env bash
# Build the scheduler, worker and scaler images (scripts/build-images.sh), or reuse them when they
# were built from the current commit, and push them to a registry, each under the tag and the
# tag's minor version; print each pushed image's digest.
#
#   scripts/publish-images.sh REGISTRY [TAG]     # make publish REGISTRY=... [TAG=...]
#
# REGISTRY is host[:port][/path]; the images become <REGISTRY>/dask-deploy-<role>:<TAG> and, when
# TAG is major.minor.patch, <REGISTRY>/dask-deploy-<role>:<major>.<minor> too. TAG defaults to the
# package version. Log in first (`docker login HOST`) when the registry wants credentials.
# Render with what was published: SET='image.repository=<REGISTRY>/dask-deploy image.tag="<TAG>"'.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
python="${PYTHON:-$repo/.venv/bin/python}"
local_repository="${DASK_DEPLOY_IMAGE_REPOSITORY:-ghcr.io/dask-deploy/dask-deploy}"
name="${local_repository##*/}"
registry="${1:-}"
version="$("$python" -c 'import tomllib; print(tomllib.load(open("'"$repo"'/pyproject.toml", "rb"))["project"]["version"])')"
tag="${2:-$version}"

log() { echo "publish: $*" >&2; }
refuse() { echo "publish: $1: got '$2', expected $3" >&2; exit 2; }

# Docker's reference grammar, lower-case path components, no scheme and no tag.
component='[a-z0-9]+([._-]+[a-z0-9]+)*'
host='([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*(:[0-9]+)?'
[[ "$registry" =~ ^$host(/$component)*$ ]] ||
  refuse REGISTRY "$registry" "host[:port][/path] without scheme or tag, e.g. 127.0.0.1:5000/dask-deploy"
[[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] ||
  refuse TAG "$tag" "letters, digits, '_', '.' and '-', at most 128, not starting with '.' or '-'"
tags=("$tag")
if [[ "$tag" =~ ^([0-9]+)\.([0-9]+)\.[0-9]+$ ]]; then
  tags+=("${BASH_REMATCH[1]}.${BASH_REMATCH[2]}")
fi

"$here/docker-up.sh"
"$here/base-images.sh"

# Reuse the local images when all three were built from this very commit (a clean checkout at
# HEAD; a build from uncommitted changes is labelled <commit>-dirty and never reused); else build.
head="$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
reuse=yes
for role in scheduler worker scaler; do
  built="$(docker image inspect --format '{{index .Config.Labels "org.opencontainers.image.revision"}}' \
    "$local_repository-$role:$version" 2>/dev/null || true)"
  [ "$built" = "$head" ] && [ "$head" != unknown ] || reuse=no
done
if [ "$reuse" = yes ] && [ -z "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
  log "reusing the local images built from $head"
else
  PYTHON="$python" "$here/build-images.sh"
fi

for role in scheduler worker scaler; do
  source_image="$local_repository-$role:$version"
  target="$registry/$name-$role"
  for each in "${tags[@]}"; do
    docker tag "$source_image" "$target:$each"
    log "pushing $target:$each"
    docker push --quiet "$target:$each" >/dev/null
  done
  digest="$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$source_image" |
    grep -m1 "^$target@sha256:" | cut -d@ -f2 || true)"
  [ -n "$digest" ] || { log "FAILED: no digest recorded for $target after the push"; exit 1; }
  echo "$target:$tag $digest"
done
log "pushed tags ${tags[*]}; render with:"
log "  make render BACKEND=kubernetes SET='image.repository=$registry/$name image.tag=\"$tag\"'"
