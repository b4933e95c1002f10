"""Cancel a request's work when its client disconnects.

A client that gave up used to leave its video computing (both cores busy for over two minutes):
nothing listens to the connection while a route awaits its work. Here the work runs as a task and a
watcher awaits the ASGI ``http.disconnect`` message beside it; when it comes first, the task is
cancelled. The stages carry the cancellation into their worker threads (they stop at the next frame,
:func:`service.pipeline.analyse._in_thread`) and into the batchers (a cancelled request's queued crops
are dropped before inference, :class:`service.pipeline.engines.DynamicBatcher`), and the task is
awaited until all of that has happened, so the admission slot frees only once the work has stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.requests import Request

from service import metrics
from service.errors import ServiceError

log = logging.getLogger(__name__)

T = TypeVar("T")


class ClientDisconnected(ServiceError):
    """The client went away before its answer was ready; the status (nginx's 499) reaches only the
    log and the metrics, as there is nobody left to read it."""

    status_code, code = 499, "client_closed_request"


async def until_disconnected(request: Request) -> None:
    """Return once the client has disconnected.

    Meant for after the request body has been read: from then on an ASGI server answers ``receive()``
    only with ``http.disconnect``, when the connection closes (Starlette's ``is_disconnected()`` would
    have to be polled instead)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it, wait until it has stopped, and raise
    :class:`ClientDisconnected`."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the handler itself is cancelled (shutdown): take the work with it
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    if watcher.cancelled() or watcher.exception() is not None:  # could not watch: just let the work finish
        if not watcher.cancelled():
            log.warning("request %s: cannot watch for a disconnect: %r", _request_id(request), watcher.exception())
        return await task
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # it ended some other way meanwhile: retrieved, and moot with nobody to answer
    endpoint = request.url.path
    metrics.CANCELLED.labels(endpoint).inc()
    log.info("request %s: the client disconnected; its work was cancelled", _request_id(request))
    raise ClientDisconnected("the client disconnected before the answer was ready; the work was cancelled")


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)
