#!/bin/sh
# Build the images' virtualenvs inside the image build (the `builder` stage), from local wheels
# only, and remove what nothing imports at run time.
#
#   build-venv.sh libraries      # the third-party libraries of each role, from /wheels:
#                                #   /opt/worker     a whole virtualenv
#                                #   /opt/scheduler  only the files the scheduler adds to the worker's
#                                #   /opt/scaler     a whole virtualenv
#   build-venv.sh dask-deploy    # the dask-deploy wheel from /project, without dependencies:
#                                #   /opt/dask-deploy  only its files (all three images add them)
#
# Two steps, so that a commit that changes only dask-deploy rebuilds only its few hundred KB:
# every library layer stays cached. Virtualenvs are built at /opt/venv, where the images put
# them back, because their scripts' #! lines name that path.
set -eu

step="${1:-}"
venv=/opt/venv
site="$venv/lib/python3.11/site-packages"
install="--quiet --no-cache-dir --no-index --find-links /wheels -c /wheels/constraints.txt"
# pip runs from its wheel (as get-pip does), with the virtualenv's Python, so it installs into
# the virtualenv without being installed there itself: no pip or setuptools to remove after, and
# no python3-venv (ensurepip) to install first.
set -- /wheels/pip-*.whl
pip_wheel="$1"
pip() { "$venv/bin/python" "$pip_wheel/pip" "$@"; }

# The modules a scaler process loads on Docker, Kubernetes and Marathon (see scaler below).
scaler_imports='
import dask, dask.utils, distributed, distributed.comm.tcp, distributed.protocol
import jinja2, jsonschema, prometheus_client, yaml
import docker, marathon, kubernetes.client, kubernetes.config
from kubernetes.client import ApiClient, Configuration
ApiClient(Configuration()).param_serialize(
    method="GET", resource_path="/api/v1/pods", auth_settings=["BearerToken"]
)
'

# The packages' own test suites (pandas' alone is 60 MB) are not needed at run time. (Nor is
# pip: installing into a running container is not how these images are meant to change.)
drop_tests() {
  find "$site" -mindepth 2 -type d \( -name tests -o -name test \) -prune -exec rm -rf {} +
}

worker() {
  python3 -m venv --without-pip "$venv"
  # shellcheck disable=SC2086 # $install is a list of options
  pip install $install -r /requirements/worker.txt
  # pyarrow: Arrow Flight (an RPC framework, 33 MB) is not used by Dask, and `import
  # pyarrow.flight` is optional in pyarrow itself; headers and Cython sources only serve
  # compiling extensions against pyarrow, which no worker does.
  rm -rf "$site"/pyarrow/*flight* "$site"/pyarrow/include "$site"/pyarrow/includes \
    "$site"/pyarrow/src "$site"/pyarrow/*.pyx "$site"/pyarrow/*.pxd
  # The wheel carries libarrow_python*.so and .so.<major>.<minor>.<patch> as copies of the
  # .so.<major> that everything loads; links keep those names for whoever looks them up.
  for soname in "$site"/pyarrow/libarrow_python*.so.[0-9]*; do
    case "${soname##*.so.}" in *.*) continue ;; esac
    for copy in "${soname%.so.*}.so" "$soname".*; do
      if [ -f "$copy" ] && [ ! -L "$copy" ]; then ln -sf "$(basename "$soname")" "$copy"; fi
    done
  done
  drop_tests
  mv "$venv" /opt/worker
}

scheduler() {
  # The scheduler deserializes the task graphs clients send (dask.dataframe's and dask.array's
  # included), so it needs the workers' libraries; it adds bokeh for its dashboard and the
  # libraries dask-deploy needs (for the optional preload). Installed over the worker's
  # virtualenv (hard links: pip only adds files), keeping only what the install added, so the
  # scheduler image shares every worker layer.
  cp -al /opt/worker "$venv"
  touch /tmp/before-scheduler
  sleep 1
  # shellcheck disable=SC2086 # $install is a list of options
  pip install $install -r /requirements/scheduler.txt
  drop_tests
  keep_new_files /tmp/before-scheduler /opt/scheduler
  rm -rf "$venv"
}

scaler() {
  # Built beside the worker's (see libraries below), so at its own path, then moved: the
  # #! lines of its scripts and its activate scripts are pointed at /opt/venv.
  venv=/opt/scaler-build
  site="$venv/lib/python3.11/site-packages"
  python3 -m venv --without-pip "$venv"
  # Without bytecode: it gets some below, only for the modules it loads.
  # shellcheck disable=SC2086 # $install is a list of options
  pip install $install --no-compile -r /requirements/scaler.txt
  # The Kubernetes backend builds its requests itself and sends them with the official client's
  # ApiClient (authentication, TLS, transport) and kubernetes.config (kubeconfig, service
  # account). The package also ships, generated from the API's OpenAPI document, one class per
  # API group (kubernetes.client.api, 23 MB) and one per object kind (kubernetes.client.models,
  # 10 MB), which the backend never loads (it reads JSON), and kubernetes.aio, an asyncio copy
  # of the whole client (67 MB) with aiohttp. Their __init__ files stay: they import lazily, so
  # `import kubernetes.client` works and only naming a removed class fails.
  pip uninstall --quiet --yes aiohttp aiohttp-retry aiohappyeyeballs aiosignal \
    frozenlist multidict propcache yarl
  rm -rf "$site/kubernetes/aio"
  find "$site/kubernetes/client/api" "$site/kubernetes/client/models" -type f \
    ! -name __init__.py -delete
  find "$site/kubernetes" -name '*_test.py' -delete
  # Bytecode (__pycache__) doubles a package on disk; so it is written only for what the
  # scaler loads (dask-deploy's own in the dask-deploy step). Anything else compiles when
  # first imported, in memory: the image's files are read-only to uid 10001.
  env -u PYTHONDONTWRITEBYTECODE "$venv/bin/python" -c "$scaler_imports"
  drop_tests
  grep -rlI "$venv" "$venv/bin" | xargs sed -i "s|$venv|/opt/venv|g"
  mv "$venv" /opt/scaler
}

dask_deploy() {
  # Installed without its dependencies (the libraries step put them in the scheduler's and the
  # scaler's virtualenvs) into an empty virtualenv at the same path: the files it adds
  # (the package with its bytecode, its metadata, the `dask-deploy` script) are the same
  # for every image. The worker's has none of them: it loads only dask_deploy.worker_preload,
  # which needs nothing but distributed (tests/unit/test_worker_preload_imports.py).
  python3 -m venv --without-pip "$venv"
  touch /tmp/before-dask-deploy
  sleep 1
  pip install --quiet --no-cache-dir --no-index --no-deps /project/*.whl
  keep_new_files /tmp/before-dask-deploy /opt/dask-deploy
  rm -rf "$venv"
}

# Copy the files under $venv newer than $1 into $2 (with their full path), then drop $1.
keep_new_files() {
  mkdir -p "$2"
  (cd / && find "${venv#/}" -newer "$1" \( -type f -o -type l \) -exec cp -a --parents -t "$2/" {} +)
  rm -f "$1"
}

case "$step" in
  libraries)
    # The scaler's virtualenv and the worker's (then the scheduler's) are independent: on a
    # machine with two or more cores, installing them side by side shortens the build.
    scaler &
    scaler_pid=$!
    worker
    scheduler
    wait "$scaler_pid"
    ;;
  dask-deploy) dask_deploy ;;
  *)
    echo "build-venv.sh: step: got '$step', expected libraries or dask-deploy" >&2
    exit 2
    ;;
esac
