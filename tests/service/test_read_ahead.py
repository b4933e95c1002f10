"""read_ahead: a pass's decode runs in a worker thread ahead of the caller, in order, bounded, with
the worker's errors raised to the caller and the worker stopped when the caller stops."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.pipeline.decode import DecodeGuard, RequestCancelled, iter_frames
from service.pipeline.read_ahead import read_ahead


def test_items_arrive_in_order_from_another_thread_and_at_most_depth_ahead() -> None:
    produced: list[int] = []
    threads: set[str] = set()

    def numbers() -> Iterator[int]:
        for n in range(50):
            threads.add(threading.current_thread().name)
            produced.append(n)
            yield n

    seen = []
    for n in read_ahead(numbers(), depth=4):
        time.sleep(0.002)
        assert len(produced) - len(seen) <= 4 + 2, "the worker runs at most depth (+ one in hand) ahead"
        seen.append(n)
    assert seen == list(range(50))
    assert threads == {"read-ahead"}


def test_an_error_is_raised_at_its_place_and_an_early_stop_ends_the_worker() -> None:
    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("frame 3 is refused")

    got = []
    with pytest.raises(ValueError, match="frame 3 is refused"):
        for n in read_ahead(failing(), depth=2):
            got.append(n)
    assert got == [1, 2]

    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()

    before = threading.active_count()
    stream = read_ahead(endless(), depth=3)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()  # the caller stops early
    assert closed.wait(2), "the source was closed in its worker"
    assert threading.active_count() == before, "no worker thread is left behind"


def test_a_cancelled_decode_reaches_the_caller_through_the_worker(videos: dict[str, Path]) -> None:
    guard = DecodeGuard(max_side=8192, max_pixels=10**12)
    frames = read_ahead(iter_frames(videos["one_face"], max_frames=40, guard=guard), depth=4)
    first = next(frames)
    assert first.index == 0 and isinstance(first.rgb, np.ndarray)
    guard.cancel()
    with pytest.raises(RequestCancelled):
        for _ in frames:
            pass


def test_a_check_stops_the_caller_before_the_items_already_read_ahead() -> None:
    """A cancelled request's check runs before every hand-over, so the frames already decoded ahead
    are not worked on after the cancel."""
    stop = threading.Event()

    def check() -> None:
        if stop.is_set():
            raise RequestCancelled("the request was cancelled")

    stream = read_ahead(iter(range(100)), depth=8, check=check)
    assert next(stream) == 0
    time.sleep(0.2)  # the worker has filled the queue
    stop.set()
    with pytest.raises(RequestCancelled):
        next(stream)
