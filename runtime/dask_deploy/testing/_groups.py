"""Process groups of the stand-ins' tasks and pods: each runs in a session (and process group)
of its own, and the whole group goes when its main process ends, as a container does.

A group is signalled only while its main process is unreaped. Once reaped, the group's id is
free again and may go to another process group (the test suite goes through the 32768 pids of
a default ``pid_max`` in minutes), which a late ``killpg`` would hit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    """Send ``signum`` to the process's group, unless the process was reaped already."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)


def poll_group(process: subprocess.Popen[bytes]) -> int | None:
    """``process.poll()``, but a main process that ended takes the rest of its group with it:
    the group is SIGKILLed while the unreaped main process still holds its id, then reaped."""
    if process.returncode is None:
        with contextlib.suppress(ChildProcessError):  # reaped elsewhere: poll() says so
            if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                signal_group(process, signal.SIGKILL)
    return process.poll()
