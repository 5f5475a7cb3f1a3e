#!/bin/bash
# shellcheck disable=SC2016  # quoted values hold $ and ` literally, on purpose
# Workers of deployment "nomad" as Docker containers through the docker CLI:
# the command backend's second example. Rendered by dask-deploy 0.1.0; edit freely.
#   docker-workers.sh start NAME      run one worker container, print its id
#   docker-workers.sh stop NAME...    stop (SIGTERM, SIGKILL after 30 s) and remove them
#   docker-workers.sh list            print "<name> pending|running|exited" per container
# The scaler sets DASK_DEPLOY_DEPLOYMENT and DASK_DEPLOY_SCHEDULER_ADDRESS. Containers carry
# the label dask-deploy.deployment, and list and stop touch no other container.
set -euo pipefail

label="dask-deploy.deployment=$DASK_DEPLOY_DEPLOYMENT"

case "${1:-}" in
start)
  name="$2"
  # Host network: the worker is reachable at this machine's address. Hardened like the
  # docker backend's workers: not root, read-only root, no capabilities, memory and CPU bounds.
  docker run --detach --name "$name" --label "$label" --label dask-deploy.role=worker \
    --network host --pull never \
    --user 2000:2000 --read-only --tmpfs /tmp \
    --cap-drop ALL --security-opt no-new-privileges:true \
    --memory 16g --cpus 4 \
    registry.example.org/dask/worker:2024.1 \
    "$DASK_DEPLOY_SCHEDULER_ADDRESS" \
    --name "$name" \
    --nthreads 4 \
    --memory-limit 16GiB \
    --death-timeout 120 \
    --resources GPU=1 \
    --local-directory /tmp
  ;;
stop)
  shift
  docker stop --time 30 "$@" >/dev/null 2>&1 || true
  docker rm --force --volumes "$@" >/dev/null 2>&1 || true
  ;;
list)
  # Docker's states: created is pending; exited, dead and removing are exited; the rest run.
  docker ps --all --filter "label=$label" --format '{{.Names}} {{.State}}' |
    awk '{
      state = "running"
      if ($2 == "created") state = "pending"
      if ($2 == "exited" || $2 == "dead" || $2 == "removing") state = "exited"
      print $1, state
    }'
  ;;
*)
  echo "usage: $0 start NAME | stop NAME... | list" >&2
  exit 2
  ;;
esac
