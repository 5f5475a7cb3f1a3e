#!/bin/bash
# shellcheck disable=SC2016  # quoted values hold $ and ` literally, on purpose
# Dask scheduler and its scaler for deployment "nomad" (command backend).
# Rendered by dask-deploy 0.1.0 from templates/command; edit freely.
# Run it on the head machine from the folder it was rendered into:
#   ./scheduler-start.sh
# It stays in the foreground; SIGTERM (Ctrl-C, systemctl stop) stops the scaler first, then
# the scheduler. Clients connect to tcp://10.0.0.5:8786.
set -euo pipefail
cd "$(dirname "$0")"

# The Python environment the scheduler and the scaler run from.
export VIRTUAL_ENV=/opt/dask
export PATH="$VIRTUAL_ENV/bin:$PATH"
python=python3

"$python" -m dask scheduler \
  --host 10.0.0.5 \
  --port 8786 \
  --preload dask_deploy.scheduler_preload \
  --idle-timeout 3600 \
  --dashboard-address 10.0.0.5:8787 &
scheduler=$!

# The scaler starts once the scheduler accepts connections (it waits up to startup_timeout).
"$python" -m dask_deploy.cli scale --config scaler-config.yaml &
scaler=$!

stop() {
  trap - TERM INT
  kill -TERM "$scaler" 2>/dev/null || true
  wait "$scaler" || true
  kill -TERM "$scheduler" 2>/dev/null || true
  wait "$scheduler" || true
}
trap 'stop; exit 143' TERM INT

# Whichever ends first ends both: a deployment without its scaler would not scale.
status=0
wait -n || status=$?
echo "the scheduler or the scaler exited with status $status; stopping the other" >&2
stop
exit "$status"
