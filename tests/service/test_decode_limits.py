"""Decode limits per request: every frame's size, a pixel budget over both passes, cancellation that
reaches the worker threads, and honest frame counts (see service/pipeline/decode.py, analyse.py)."""

from __future__ import annotations

import asyncio
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from service.config import Settings
from service.errors import NotAVideo, TooLarge, http_status
from service.pipeline.analyse import _in_thread, check_decoded_frames
from service.pipeline.decode import DecodeGuard, RequestCancelled, VideoInfo, iter_frames, probe
from tests import media


@pytest.fixture(scope="module")
def switch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 frames of 64x64, then one of 4000x4000: the header says 64x64."""
    return media.resolution_switch(tmp_path_factory.mktemp("switch") / "switch.ts", (64, 64, 30), (4000, 4000, 1))


def test_a_frame_above_the_size_limit_mid_stream_is_refused(switch: Path) -> None:
    """It used to pass the header check and be reported as 64x64; FFmpeg is now told the largest
    picture it may allocate, and the refusal names the frame's size."""
    assert probe(switch, max_side=1024, max_duration_s=60).width == 64  # what the header says
    guard = DecodeGuard(max_side=1024, max_pixels=10**12)
    with pytest.raises(TooLarge) as refused:
        for _ in iter_frames(switch, max_frames=256, max_side=640, guard=guard):
            pass
    assert http_status(refused.value) == 413 and refused.value.code == "video_too_large"
    assert "4000x4000" in refused.value.detail and "64x64" in refused.value.detail
    assert "DFS_MAX_VIDEO_SIDE" in refused.value.detail
    assert guard.frames == 30, "only the small frames were decoded"


def test_detection_copies_are_scaled_in_the_rgb_conversion(switch: Path) -> None:
    """A 4000x4000 frame asked for at 640 px is never converted to RGB at full size (48 MB)."""
    tracemalloc.start()
    try:
        frames = [f.rgb.shape for f in iter_frames(switch, max_frames=256, wanted=range(30, 31), max_side=640)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert frames == [(640, 640, 3)]
    assert peak < 4000 * 4000 * 3 // 8, f"peak {peak} bytes: a full-size RGB frame was made"


def test_the_pixel_budget_stops_decoding(videos: dict[str, Path]) -> None:
    guard = DecodeGuard(max_side=8192, max_pixels=272 * 240 * 10)  # one_face: 272x240, 40 frames
    with pytest.raises(TooLarge) as refused:
        for _ in iter_frames(videos["one_face"], max_frames=256, guard=guard):
            pass
    assert refused.value.code == "decode_budget_exceeded" and "DFS_MAX_DECODE_PIXELS" in refused.value.detail
    assert guard.frames == 11


def test_the_budget_is_checked_against_the_header_first_and_says_what_fits() -> None:
    guard = DecodeGuard(max_side=8192, max_pixels=1000 * 1000 * 10 * 2)
    guard.check_plan(1000, 1000, 10)  # 10 frames, both passes: exactly the budget
    with pytest.raises(TooLarge) as refused:
        guard.check_plan(1000, 1000, 11)
    assert refused.value.code == "decode_budget_exceeded" and "max_frames=10 or fewer" in refused.value.detail
    default = Settings().max_decode_pixels
    DecodeGuard(8192, default).check_plan(1920, 1080, 256)  # the README's 1080p x 256 frames fits
    DecodeGuard(8192, default).check_plan(3840, 2160, 256)  # and 4K UHD
    with pytest.raises(TooLarge):
        DecodeGuard(8192, default).check_plan(8192, 8192, 256)  # a 405 KB black 8K video cost 21 s


def _info(frames: int) -> VideoInfo:
    return VideoInfo(width=64, height=64, fps=24.0, frames=frames, duration_s=frames / 24, rotation=0, codec="h264")


def test_fewer_frames_than_claimed_is_a_warning_and_too_few_is_a_415() -> None:
    settings = Settings()  # DFS_MIN_DECODED_FRAMES = 8
    assert check_decoded_frames(_info(40), 40, 256, settings) == []
    assert check_decoded_frames(_info(40), 38, 256, settings) == [], "a frame or two short is within tolerance"
    (warning,) = check_decoded_frames(_info(40), 20, 256, settings)
    assert "only 20 of the 40 frames" in warning and "truncated" in warning
    (warning,) = check_decoded_frames(_info(1000), 100, 256, settings)
    assert "only 100 of the first 256 frames" in warning and "claims 1000" in warning
    with pytest.raises(NotAVideo) as refused:
        check_decoded_frames(_info(1), 1, 256, settings)  # a still GIF
    assert http_status(refused.value) == 415 and refused.value.code == "too_few_frames"
    assert "DFS_MIN_DECODED_FRAMES" in refused.value.detail
    assert check_decoded_frames(_info(40), 4, 4, settings) == [], "a request's own small max_frames is no fault"
    assert check_decoded_frames(_info(24), 24, 256, settings) == [], "a 1-second clip passes"


def test_a_cancelled_stage_stops_its_thread_before_the_await_ends(videos: dict[str, Path]) -> None:
    """Cancelling the awaiting task sets the guard; the thread stops at its next frame, and the task
    ends only after it has (so its admission slot frees only when the work has stopped)."""
    guard = DecodeGuard(max_side=8192, max_pixels=10**12)
    running = threading.Event()
    decoded: list[int] = []

    def stage() -> None:
        while True:  # a long decode: the video again and again
            for frame in iter_frames(videos["one_face"], max_frames=256, guard=guard):
                decoded.append(frame.index)
                running.set()
                time.sleep(0.005)

    async def cancel_soon() -> None:
        task = asyncio.ensure_future(_in_thread(guard, stage))
        while not running.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_soon())
    assert guard.cancelled.is_set()
    count = len(decoded)
    time.sleep(0.1)
    assert len(decoded) == count, "the thread kept decoding after its request was cancelled"
    with pytest.raises(RequestCancelled):
        guard.admit(0, 64, 64)
