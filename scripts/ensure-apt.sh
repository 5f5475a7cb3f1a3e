#!/usr/bin/env bash
# Install the Debian packages named on the command line when any is missing.
# Serialised with a lock, because tests and make targets may call it at the same time.
#
#   scripts/ensure-apt.sh PACKAGE...   # install those missing
#   scripts/ensure-apt.sh --update     # refresh the package lists, under the same lock
set -euo pipefail
find_missing() {
  missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ "${1:-}" = "--update" ]; then
  exec 9>/tmp/dask-deploy-apt.lock
  flock 9
  exec $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
fi
find_missing "$@"
[ ${#missing[@]} -eq 0 ] && exit 0
exec 9>/tmp/dask-deploy-apt.lock
flock 9
# Another test worker may have installed them while we waited for the lock.
find_missing "$@"
[ ${#missing[@]} -eq 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
# Lists older than a day (or none at all, on a fresh machine) are refreshed once.
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
fi
echo "ensure-apt: installing ${missing[*]}" >&2
$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
