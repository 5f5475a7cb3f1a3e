"""Worker-side pieces of the benchmark harness: the sleeping task and a boot delay.

Start a worker with ``--preload dask_deploy.simulate.workload`` and the environment
variable ``DASK_DEPLOY_BOOT_DELAY_FILE`` naming a file that holds a number of
seconds: the worker waits that long before it registers with the scheduler, which
models a resource manager's scheduling and image-pull time. The harness rewrites
the file between phases (no delay while warming up, the configured delay after).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

BOOT_DELAY_FILE = "DASK_DEPLOY_BOOT_DELAY_FILE"


def sleep_task(duration: float, output_bytes: int, *inputs: object) -> bytes:
    """Sleep ``duration`` seconds and return ``output_bytes`` bytes (inputs are ignored)."""
    time.sleep(duration)
    return b"x" * output_bytes


def boot_delay() -> float:
    """Seconds to wait before registering, read from the file named by the environment."""
    path = os.environ.get(BOOT_DELAY_FILE)
    if not path:
        return 0.0
    try:
        return max(0.0, float(Path(path).read_text().strip() or 0))
    except (OSError, ValueError):
        return 0.0


async def dask_setup(worker: object) -> None:
    """Preload hook: runs before the worker registers with the scheduler."""
    await asyncio.sleep(boot_delay())
