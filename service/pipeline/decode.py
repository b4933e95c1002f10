"""Stage 2, decode: read the container header, then frames, with PyAV (FFmpeg).

Two rules keep memory bounded: the header is checked before any frame is decoded (absurd sizes or
durations are refused), and callers iterate frames one at a time, asking only for those they need
(``wanted``) at the size they need (``max_side``), so a whole decoded video never sits in memory.

Frame indices are decode order (presentation order for the streams we meet), which is what the
models' "consecutive frames" mean, also for variable-frame-rate files; ``time_s`` carries the real
timestamp. Rotation metadata (phones) is applied so faces are upright.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import av
import numpy as np

from service.errors import NotAVideo, TooLarge

log = logging.getLogger(__name__)


# FFmpeg opens still images as one-frame "videos"; a photo named .mp4 is not what the caller meant.
_IMAGE_DEMUXERS = {"image2", "png", "apng", "bmp", "webp", "tiff", "jpeg_pipe", "png_pipe"}


@dataclass(frozen=True)
class VideoInfo:
    """What the header says, with width/height as displayed (after rotation)."""

    width: int
    height: int
    fps: float
    frames: int
    duration_s: float
    rotation: int
    codec: str


@dataclass(frozen=True)
class DecodedFrame:
    index: int
    time_s: float
    rgb: np.ndarray  # (H, W, 3) uint8, upright


def open_container(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise NotAVideo(f"not a readable media file: {exc}", code="not_a_video") from exc


def frame_rotation(frame: av.VideoFrame) -> int:
    """Counter-clockwise display rotation of a frame in degrees, normalised to 0/90/180/270."""
    return int(round(float(getattr(frame, "rotation", 0) or 0) / 90.0)) % 4 * 90


def probe(path: Path, *, max_side: int, max_duration_s: float) -> VideoInfo:
    """Read the header only and refuse what cannot or should not be decoded."""
    with open_container(path) as container:
        demuxer = container.format.name
        if demuxer in _IMAGE_DEMUXERS or demuxer.endswith("_pipe"):
            raise NotAVideo(f"the file is a still image ({demuxer}), not a video", code="not_a_video")
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["nothing"]
            raise NotAVideo(f"the file has no video stream (it holds {', '.join(kinds)})", code="no_video_stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width <= 0 or height <= 0:
            raise NotAVideo("the video stream declares no frame size", code="not_a_video")
        if width > max_side or height > max_side:
            raise TooLarge(f"frame size {width}x{height} exceeds the limit of {max_side} px", code="video_too_large")
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        if duration > max_duration_s:
            raise TooLarge(f"video lasts {duration:.0f} s; the limit is {max_duration_s:.0f} s", code="video_too_long")
        frames = int(stream.frames or 0) or (round(duration * fps) if fps else 0)
        rotation = 0
        try:  # one frame tells the display rotation, and proves the stream decodes at all
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as exc:
            raise NotAVideo(f"the video stream cannot be decoded: {exc}", code="undecodable") from exc
        if first is None:
            raise NotAVideo("the video stream holds no decodable frame", code="undecodable")
        rotation = frame_rotation(first)
        if rotation % 180:
            width, height = height, width
        return VideoInfo(
            width=width,
            height=height,
            fps=round(fps, 3),
            frames=frames,
            duration_s=round(duration, 3),
            rotation=rotation,
            codec=ctx.name,
        )


def upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a counter-clockwise display rotation of 0/90/180/270 degrees (np.rot90 turns CCW)."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb


def scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) with the longer side at most ``max_side``; shared by the PyAV and GPU paths."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    # even sizes keep swscale's chroma handling exact
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def iter_frames(
    path: Path,
    *,
    max_frames: int,
    wanted: Container[int] | None = None,
    max_side: int | None = None,
    threads: int = 0,
) -> Iterator[DecodedFrame]:
    """Yield upright RGB frames ``0..max_frames-1`` in order (only ``wanted`` ones if given).

    Frames not wanted are decoded (a codec needs its references) but never converted to RGB, which
    is most of the per-frame cost at 1080p. A stream that breaks part-way (a truncated upload) ends
    the iteration with a warning after the frames that did decode; one that yields no frame at all
    is refused as not decodable.
    """
    with open_container(path) as container:
        if not container.streams.video:
            raise NotAVideo("the file has no video stream", code="no_video_stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if threads:
            stream.codec_context.thread_count = threads
        index = 0
        try:
            for frame in container.decode(stream):
                if index >= max_frames:
                    break
                if wanted is None or index in wanted:
                    rotation = frame_rotation(frame)
                    out_w, out_h = scaled_size(frame.width, frame.height, max_side)
                    rgb = frame.to_ndarray(format="rgb24", width=out_w, height=out_h)
                    yield DecodedFrame(index=index, time_s=float(frame.time or 0.0), rgb=upright(rgb, rotation))
                index += 1
        except av.error.FFmpegError as exc:
            if index == 0:
                raise NotAVideo(f"no frame could be decoded: {exc}", code="undecodable") from exc
            log.warning("%s: decoding stopped after %d frames: %s", path, index, exc)
        if index == 0:
            raise NotAVideo("the video stream holds no decodable frame", code="undecodable")


Frame = TypeVar("Frame", bound=Any)  # DecodedFrame or tensor_frames.TensorFrame: anything with ``.rgb``


def same_shape_chunks(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    """Consecutive frames in lists of at most ``size``, cut early where the frame size changes.

    Detectors and warps take a chunk as one stacked batch, which only works for equal shapes; a
    stream may change resolution mid-way, so a chunk never spans such a change.
    """
    chunk: list[Frame] = []
    for frame in frames:
        if chunk and chunk[0].rgb.shape != frame.rgb.shape:
            yield chunk
            chunk = []
        chunk.append(frame)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
