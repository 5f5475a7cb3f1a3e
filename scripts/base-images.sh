#!/usr/bin/env bash
# Provide the base image our Dockerfiles name in FROM (debian:bookworm-slim) without pulling:
# no registry can be reached here. When the tag is already present locally nothing happens;
# otherwise a stand-in is built under the SAME tag, so the Dockerfiles keep their ordinary FROM
# and build unchanged anywhere a registry is reachable.
#
#   scripts/base-images.sh          # needs a running engine (scripts/docker-up.sh)
#
# The stand-in is what debian:bookworm-slim is: a minbase bookworm rootfs from the Debian
# mirror this machine's apt already uses, the same apt sources, dpkg excluding docs and man
# pages. The rootfs tarball is cached in $DASK_DEPLOY_CACHE (default <repo>/.state/base-images),
# so a rerun after `docker rmi` only re-imports it.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
cache="${DASK_DEPLOY_CACHE:-$repo/.state/base-images}"
tag="debian:bookworm-slim"
suite="bookworm"
tarball="$cache/debian-$suite-minbase.tar"

log() { echo "base-images: $*" >&2; }

# One import at a time on this machine (two test sessions, or a test worker and `make images`).
exec 9>"${TMPDIR:-/tmp}/dask-deploy-base-images.lock"
flock 9

if docker image inspect "$tag" >/dev/null 2>&1; then
  log "$tag present; nothing to do"
  exit 0
fi

# The first deb.debian.org-style URI apt uses for the main archive on this machine.
mirror="$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
  /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -oE 'https?://[^ ]+/debian/?$' | head -1 || true)"
[ -n "$mirror" ] || { log "FAILED: no Debian mirror found in /etc/apt/sources.list*"; exit 1; }
mirror="${mirror%/}"

if [ ! -s "$tarball" ]; then
  "$here/ensure-apt.sh" debootstrap
  mkdir -p "$cache"
  rootfs="$(mktemp -d "$cache/rootfs.XXXXXX")"
  trap 'rm -rf "$rootfs"' EXIT
  log "debootstrap --variant=minbase $suite from $mirror (a minute or two)"
  if ! debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1; then
    log "FAILED: debootstrap; tail of $cache/debootstrap.log:"
    tail -n 30 "$cache/debootstrap.log" >&2
    exit 1
  fi
  # What the official slim image carries: deb822 sources, no docs/man/locales, clean apt cache.
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $mirror-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
DPKG
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
  find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
  rm -rf "$rootfs"/usr/share/{man,info,locale}/* "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/tmp/*
  tar --numeric-owner --xattrs -C "$rootfs" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi

log "importing $tarball as $tag"
docker import --change 'CMD ["bash"]' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --message "dask-deploy stand-in for $tag (debootstrap minbase)" "$tarball" "$tag" >/dev/null
log "$tag ready ($(docker image inspect --format '{{.Size}}' "$tag" | numfmt --to=iec))"
