"""Local processes for the end-to-end and fault tests: ports, start, stop whatever happens."""

from __future__ import annotations

import functools
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

#: Scaler values of the stand-in end-to-end tests: 1 to 3 workers, ticks of 0.5 s and a short
#: window, so that a burst, its scale-up and the idle scale-down after it fit in a minute.
BURST_SCALER_VALUES: dict[str, Any] = {
    "minimum": 1,
    "maximum": 3,
    "interval": 0.5,
    "startup_timeout": 60,
    "scale_down_window": 2,
    "metrics_port": None,
}


#: The ports free_port hands out: below the kernel's ephemeral range (32768-60999 here), where
#: every bind to port 0 and every outgoing connection on the machine takes its port, and below
#: the Marathon stand-in's offers (31000-32000). Nothing else takes one between the pick and the
#: bind by the scheduler, container or server a test starts, seconds later.
TEST_PORTS = range(20000, 31000)
#: The folder holding one file per port handed out in this run. The xdist controller sets it
#: before it starts its workers (tests/conftest.py), so no two tests of a run get one port.
PORTS_HANDED_OUT = "DASK_DEPLOY_TEST_PORTS"


def ports_folder() -> Path:
    """This run's folder of ports handed out (one of this process's own outside pytest)."""
    named = os.environ.get(PORTS_HANDED_OUT)
    return Path(named) if named else _ports_folder_of_this_process()


@functools.cache
def _ports_folder_of_this_process() -> Path:
    return Path(tempfile.mkdtemp(prefix="dask-deploy-test-ports-"))


def free_port() -> int:
    """A port that is free on 127.0.0.1 now and that no other test of this run was given."""
    folder = ports_folder()
    for port in random.SystemRandom().sample(TEST_PORTS, 500):
        try:
            os.close(os.open(folder / str(port), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue  # another test has it
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue  # something outside the tests holds it; it stays marked
        return port
    raise RuntimeError(f"no free port left in {TEST_PORTS} (handed out: {folder})")


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Does something accept connections on ``host`` (default 127.0.0.1):``port``?"""
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) == 0


def wait_for(
    what: str,
    condition: Callable[[], Any],
    timeout: float = 90,
    logs: Callable[[], str] = lambda: "",
    poll: float = 0.25,
) -> Any:
    """Poll ``condition`` until it returns something truthy, and return that.

    On timeout the test fails saying what it waited for, followed by ``logs()`` (log tails of
    the processes involved), so a failure in CI explains itself.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting until {what}\n{logs()}")


def tail(path: Path, lines: int = 20) -> str:
    if not path.is_file():
        return f"--- {path.name}: (no log)"
    return f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def start(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group, so stopping it stops its children too."""
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Local processes (scheduler, scaler) that are stopped, whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in reversed(started):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
