"""Decode in one thread while the caller works on the frames already decoded.

A pass over a video alternates two single-threaded jobs: FFmpeg decoding and converting a frame
(PyAV releases the GIL there), then the caller's work on it (BlazeFace, warps: native code that
releases it too). In one thread the two take turns and one of the two cores idles; with the
decode running ahead in a worker thread they overlap. Written here rather than taken from a
library because the small read-ahead packages (e.g. ``prefetch_generator``) neither hand the
worker's exception to the caller (a refused frame size or a cancelled request must reach it as
raised) nor stop the worker when the caller stops early.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

_POLL_S = 0.05  # how often a blocked worker looks whether the caller has gone


@dataclass(frozen=True)
class _End:
    error: BaseException | None = None


def read_ahead(items: Iterator[T], depth: int, check: Callable[[], None] | None = None) -> Iterator[T]:
    """Yield ``items`` in order while a worker thread produces up to ``depth`` more.

    An exception raised by ``items`` is raised here, at its place in the sequence; when the caller
    stops early (``break``, an exception, ``close()``), the worker stops at its next item and
    ``items`` is closed in the worker thread, where it runs. ``depth`` bounds the memory held.
    ``check`` runs before each item is handed over and may raise (a cancelled request's check), so
    a stop is seen at once rather than after the items already read ahead.
    """
    ready: queue.Queue[T | _End] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def offer(item: T | _End) -> bool:
        """Put ``item``, waiting for room; False once the caller has gone."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        end = _End()
        try:
            for item in items:
                if not offer(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which raises it
            end = _End(exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
        offer(end)

    worker = threading.Thread(target=produce, name="read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if check is not None:
                check()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        stop.set()
        worker.join()


__all__ = ["read_ahead"]
