"""The one retry loop the HTTP backends share: exponential backoff until a deadline."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def retry_with_backoff(
    send: Callable[[], Awaitable[T]],
    *,
    is_retryable: Callable[[Exception], bool],
    retry_for: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    first_delay: float = 0.1,
    log: logging.Logger,
) -> T:
    """``await send()``; on a retryable error wait (doubling, at most 5 s) until ``retry_for`` ends.

    The last error is raised once another wait would pass the deadline, so a caller sees
    the resource manager's own answer, not a timeout of ours.
    """
    deadline = time.monotonic() + retry_for
    delay = first_delay
    while True:
        try:
            return await send()
        except Exception as error:
            if not is_retryable(error) or time.monotonic() + delay > deadline:
                raise
            log.info("%s; retrying in %.2fs", error, delay)
            await sleep(delay)
            delay = min(delay * 2, 5.0)
