#!/bin/sh
# Build one role's virtualenv inside the image build (the `builder` stage), from /wheels only,
# then remove what nothing imports at run time, and move it to /opt/<role>.
#
#   build-venv.sh worker|scaler      # a whole virtualenv, in /opt/<role>
#   build-venv.sh scheduler          # after worker: only the files it adds to the worker's, in
#                                    # /opt/scheduler (the scheduler image is the worker's + those)
#
# It is built at /opt/venv, where the role's stage will put it back, because its scripts' #!
# lines name that path.
set -eu

role="$1"
venv=/opt/venv
site="$venv/lib/python3.11/site-packages"
install="--quiet --no-index --find-links /wheels -c /wheels/constraints.txt"

if [ "$role" = scheduler ]; then
  # The scheduler deserializes the task graphs clients send (dask.dataframe's and dask.array's
  # included), so it needs the workers' libraries; it adds bokeh for its dashboard. Built over a
  # copy of the worker's virtualenv with a separate pip, keeping only what the install added, so
  # the scheduler image shares every worker layer.
  cp -a /opt/worker "$venv"
  python3 -m venv /tmp/pip
  touch /tmp/before-scheduler
  sleep 1
  # shellcheck disable=SC2086 # $install is a list of options
  /tmp/pip/bin/pip --python "$venv/bin/python" install $install -r /requirements/scheduler.txt
  find "$site" -mindepth 2 -type d \( -name tests -o -name test \) -prune -exec rm -rf {} +
  mkdir -p /opt/scheduler
  (cd / && find "${venv#/}" -newer /tmp/before-scheduler \( -type f -o -type l \) \
    -exec cp -a --parents {} /opt/scheduler/ \;)
  rm -rf "$venv" /tmp/pip /tmp/before-scheduler
  exit 0
fi

python3 -m venv "$venv"
# shellcheck disable=SC2086 # $install is a list of options
"$venv/bin/pip" install $install -r "/requirements/$role.txt"

case "$role" in
  scaler)
    # The Kubernetes backend uses the synchronous client only (kubernetes.client and
    # kubernetes.config). kubernetes 37 also ships kubernetes.aio, an asyncio copy of the whole
    # generated client (67 MB), and requires aiohttp for it; nothing else here imports either.
    "$venv/bin/pip" uninstall --quiet --yes aiohttp aiohttp-retry aiohappyeyeballs aiosignal \
      frozenlist multidict propcache yarl
    rm -rf "$site/kubernetes/aio"
    ;;
  worker)
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
    ;;
esac

# pip is not needed at run time (installing into a running container is not how these images
# are meant to change), and the packages' own test suites (pandas' alone is 60 MB) are not either.
"$venv/bin/pip" uninstall --quiet --yes pip setuptools
find "$site" -mindepth 2 -type d \( -name tests -o -name test \) -prune -exec rm -rf {} +
mv "$venv" "/opt/$role"
