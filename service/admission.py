"""Admission control: bounded concurrency with a bounded waiting line.

``max_concurrent_requests`` videos are processed at once; up to ``max_queued_requests`` more wait
for a slot; anything beyond is refused at once with 503 + Retry-After rather than piling up
memory and latency until the process falls over.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service import metrics
from service.errors import Unavailable


class Admission:
    def __init__(self, max_concurrent: int, max_waiting: int, retry_after_s: int = 5) -> None:
        self._slots = asyncio.Semaphore(max_concurrent)
        self._max_waiting = max_waiting
        self._waiting = 0
        self._retry_after_s = retry_after_s

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.locked() and self._waiting >= self._max_waiting:
            metrics.REJECTED.inc()
            raise Unavailable(
                "the service is at capacity; retry later",
                code="queue_full",
                retry_after_s=self._retry_after_s,
            )
        self._waiting += 1
        metrics.WAITING.set(self._waiting)
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
            metrics.WAITING.set(self._waiting)
        metrics.IN_FLIGHT.inc()
        try:
            yield
        finally:
            metrics.IN_FLIGHT.dec()
            self._slots.release()
