#!/usr/bin/env bash
# Start OpenSSH servers on 127.0.0.2, 127.0.0.3 and 127.0.0.4 for the ssh backend's tests.
#
#   scripts/sshd-up.sh [HOST...]   # default: all three; idempotent (a running one is kept)
#
# Installs openssh-server/openssh-client when missing. Everything lives in $DASK_DEPLOY_SSH_DIR
# (default /tmp/dask-deploy-sshd): one generated host key per address, one user key
# (id_ed25519) that may log in as the current user, known_hosts listing exactly those host
# keys, and per address an sshd_config, a pid file and a log. Every server listens on
# $DASK_DEPLOY_SSH_PORT (default 2022). Password logins are off; only the user key gets in.
# scripts/sshd-down.sh stops them (all, or the addresses named), and only them.
set -euo pipefail

# The daemons started below inherit every open descriptor and keep it for their whole life: a
# caller's lock (`flock /tmp/dd-ssh.lock scripts/sshd-up.sh`) would stay held by sshd for as
# long as it runs, and nobody could take it again. Close all but 0-2.
for fd in "/proc/$$/fd"/*; do
  fd="${fd##*/}"
  [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null || true
done

here="$(cd "$(dirname "$0")" && pwd)"
state="${DASK_DEPLOY_SSH_DIR:-/tmp/dask-deploy-sshd}"
port="${DASK_DEPLOY_SSH_PORT:-2022}"
hosts=("$@")
[ ${#hosts[@]} -gt 0 ] || hosts=(127.0.0.2 127.0.0.3 127.0.0.4)

log() { echo "sshd-up: $*" >&2; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
# The pid listening on HOST:$port, if any.
listener() {
  ss -Hltnp "src = $1 and sport = :$port" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2 || true
}

"$here/ensure-apt.sh" openssh-server openssh-client
mkdir -p "$state"
chmod 700 "$state"
exec 8>"$state.lock"
flock 8

# sshd refuses to start without its privilege separation directory.
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
[ -d /run/sshd ] || $SUDO mkdir -p /run/sshd
[ -f "$state/id_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -C "dask-deploy-tests" -f "$state/id_ed25519"
cp "$state/id_ed25519.pub" "$state/authorized_keys"
chmod 600 "$state/authorized_keys"

for host in "${hosts[@]}"; do
  key="$state/host-$host"
  [ -f "$key" ] || ssh-keygen -q -t ed25519 -N "" -C "$host" -f "$key"
  config="$state/sshd-$host.conf"
  cat >"$config" <<CONF
ListenAddress $host:$port
HostKey $key
PidFile $state/sshd-$host.pid
AuthorizedKeysFile $state/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
# The state folder is under /tmp; the keys in it are ours and mode 600.
StrictModes no
MaxStartups 100:30:200
MaxSessions 50
# bash runs ~/.bashrc for a command from sshd only at shell level 1. The tests log in as this
# machine's user, whose ~/.bashrc runs 'pyenv init': a synchronous 'pyenv rehash' under a lock
# file that a killed shell leaves behind, after which every login waits 60 s (a CI run failed
# every ssh test so). The backend's scripts need nothing from a login environment.
SetEnv SHLVL=1
# The tests log in ~500 times a run. OpenSSH's default post-quantum hybrid key exchange costs
# the client ~75 ms of CPU per login on these machines, curve25519 ~8 ms; the backend is the
# same either way (it runs the user's ssh, which agrees on whatever the server offers).
KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org
CONF
  if alive "$state/sshd-$host.pid"; then
    log "$host:$port already up (pid $(cat "$state/sshd-$host.pid"))"
    continue
  fi
  # A listener without our pid file: ours if it runs this very config (its pid file was lost),
  # then it is adopted; anything else holding the address is refused by name, never killed.
  holder="$(listener "$host")"
  if [ -n "$holder" ]; then
    # (the listener rewrites its title: "sshd: /usr/sbin/sshd -f CONFIG ... [listener] ...")
    if tr '\0' ' ' <"/proc/$holder/cmdline" 2>/dev/null | grep -qF -- "sshd -f $config "; then
      echo "$holder" >"$state/sshd-$host.pid"
      log "$host:$port already up (pid $holder, pid file restored)"
      continue
    fi
    echo "sshd-up: $host:$port is taken by pid $holder ($(tr '\0' ' ' <"/proc/$holder/cmdline" 2>/dev/null)), not by a server of $state; stop it or set DASK_DEPLOY_SSH_PORT" >&2
    exit 1
  fi
  /usr/sbin/sshd -t -f "$config"
  # -E: the log file; sshd detaches itself and writes its pid file.
  /usr/sbin/sshd -f "$config" -E "$state/sshd-$host.log" 8>&-
  for _ in $(seq 1 50); do alive "$state/sshd-$host.pid" && break; sleep 0.1; done
  alive "$state/sshd-$host.pid" || { tail -n 20 "$state/sshd-$host.log" >&2; exit 1; }
  log "$host:$port up (pid $(cat "$state/sshd-$host.pid"))"
done

# known_hosts for every address whose host key exists, so clients verify each server.
: >"$state/known_hosts.new"
for key in "$state"/host-*.pub; do
  host="${key##*/host-}"
  host="${host%.pub}"
  echo "[$host]:$port $(cut -d' ' -f1-2 "$key")" >>"$state/known_hosts.new"
done
mv "$state/known_hosts.new" "$state/known_hosts"
