"""One periodic background job: run ``job`` every ``interval_s`` until cancelled.

A failing run is logged (``event``, with the job's name) and the next one goes ahead: the
jobs that use this (sweeps, presence and skew flushes, pings, registry refreshes) are
advisory and must never stop the gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


async def every(
    interval_s: float, job: Callable[[], Awaitable[None]], log: Any, event: str
) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(event, job=getattr(job, "__name__", repr(job)), error=repr(exc))
