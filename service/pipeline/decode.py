"""Stage 2, decode: read the container header, then frames, with PyAV (FFmpeg).

Three rules keep memory and time bounded: the header is checked before any frame is decoded (absurd
sizes or durations are refused); every decoded frame is checked again by the request's
:class:`DecodeGuard` (a stream may change resolution mid-way, and each frame costs decode time in
proportion to its pixels); and callers iterate frames one at a time, asking only for those they need
(``wanted``) at the size they need (``max_side``, scaled by swscale in the same pass that converts to
RGB, so a frame is never converted at full size for a small copy) or only the part they need
(``regions``: the crop pass converts the faces, not the frame), so a whole decoded video never sits
in memory.

Frame indices are decode order (presentation order for the streams we meet), which is what the
models' "consecutive frames" mean, also for variable-frame-rate files; ``time_s`` carries the real
timestamp. Rotation metadata (phones) is applied so faces are upright.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import av
import numpy as np

from service.pipeline.failures import DfsError, NotAVideo, TooLarge

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
    rgb: np.ndarray  # (H, W, 3) uint8, upright: the whole frame, or the region asked for
    origin: tuple[int, int] = (0, 0)  # (x, y) of rgb[0, 0] in the frame: a region's corner
    whole: tuple[int, int] | None = None  # (height, width) of the frame when ``rgb`` is a region of it
    planes: PlaneRegion | None = None  # a copy of the full-size frame's 4:2:0 planes, when ``iter_frames`` was asked


Region = tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels (x1, y1 exclusive)

#: Pixel formats whose region converts to exactly the RGB the whole frame gives there: 8-bit planar
#: 4:2:0, which swscale's unscaled conversion reads per pixel (its luma, its 2x2 block's chroma), so
#: an even-aligned region converts alone (tests/service/test_decode_regions.py holds FFmpeg to it).
#: Other formats (4:2:2, 10-bit, packed) are converted whole.
REGION_FORMATS = frozenset({"yuv420p", "yuvj420p"})

#: Above this share of the frame a region is converted whole: the copy would save nothing.
_REGION_MAX_SHARE = 0.5


#: Decode passes a request makes over its frames: detection at 640 px, then crops at full size
#: (service/pipeline/analyse.py). The pixel budget is predicted for both.
DECODE_PASSES = 2


class RequestCancelled(DfsError):
    """The request was abandoned (client gone, time limit): its worker thread stops at the next frame.

    A thread cannot be killed, so cancellation reaches it as this exception, raised by
    :meth:`DecodeGuard.admit` between frames; the awaiting coroutine has been cancelled already.
    """


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:,.0f} Mpx" if pixels >= 10_000_000 else f"{pixels / 1e6:,.2f} Mpx"


@dataclass
class DecodeGuard:
    """One request's bounds on decoding, checked on every decoded frame of every pass.

    The header check in :func:`probe` sees only the first frame's size, but a stream may switch
    resolution mid-way (a 752 KB file went from 64x64 to 16000x16000 and added 1.8 GB), and decode
    time grows with pixels, not bytes (a 405 KB 8192x8192 black video cost 21 s of both cores). So
    each decoded frame must fit ``max_side`` and is charged to a per-request budget of
    ``max_pixels`` (width x height summed over the frames decoded, in both passes). FFmpeg is also
    told the largest picture (``max_pixels`` codec option) so it refuses to allocate a bigger one.

    ``cancelled`` is set when the request is abandoned; worker threads see it at their next frame.
    """

    max_side: int
    max_pixels: int
    cancelled: threading.Event = field(default_factory=threading.Event)
    pixels: int = 0  # decoded so far, all passes
    frames: int = 0  # decoded so far, all passes
    sizes: list[tuple[int, int]] = field(default_factory=list)  # coded frame sizes met, in order

    def cancel(self) -> None:
        self.cancelled.set()

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise RequestCancelled("the request was cancelled")

    def check_plan(self, width: int, height: int, frames: int) -> None:
        """Refuse before decoding when the header's size times the frames to decode cannot fit."""
        planned = width * height * frames * DECODE_PASSES
        if planned <= self.max_pixels:
            return
        fits = self.max_pixels // (width * height * DECODE_PASSES)
        hint = (
            f"ask for max_frames={fits} or fewer, or send a smaller video"
            if fits >= 1
            else "its frames are too large for this server"
        )
        raise TooLarge(
            f"decoding {frames} frames of {width}x{height} in {DECODE_PASSES} passes is {_megapixels(planned)}, "
            f"above this server's budget of {_megapixels(self.max_pixels)} (DFS_MAX_DECODE_PIXELS); {hint}",
            code="decode_budget_exceeded",
        )

    def admit(self, index: int, width: int, height: int) -> None:
        """Check one decoded frame (coded size, before rotation) and charge it; raise to stop decoding."""
        self.check_cancelled()
        if width > self.max_side or height > self.max_side:
            raise TooLarge(self._size_message(index, width, height), code="video_too_large")
        if (width, height) not in self.sizes:
            self.sizes.append((width, height))
        self.frames += 1
        self.pixels += width * height
        if self.pixels > self.max_pixels:
            raise TooLarge(
                f"decoding stopped at frame {index}: {self.frames} frames decoded add up to "
                f"{_megapixels(self.pixels)}, above this server's budget of {_megapixels(self.max_pixels)} "
                "(DFS_MAX_DECODE_PIXELS)",
                code="decode_budget_exceeded",
            )

    def _size_message(self, index: int, width: int, height: int) -> str:
        first = f" (it began at {self.sizes[0][0]}x{self.sizes[0][1]})" if self.sizes else ""
        return f"frame {index} is {width}x{height}{first}, above the limit of {self.max_side} px (DFS_MAX_VIDEO_SIDE)"

    def limit_codec(self, stream: av.VideoStream) -> None:
        """Tell FFmpeg the largest picture it may allocate (its ``max_pixels`` option, default INT_MAX).

        A frame above it is refused inside the decoder, before its buffer exists, and surfaces as an
        FFmpeg error; :meth:`refused_size` then says whether that was the reason."""
        stream.codec_context.options = {"max_pixels": str(self.max_side * self.max_side)}

    def refused_size(self, stream: av.VideoStream, index: int) -> TooLarge | None:
        """After an FFmpeg error: the size refusal, if the stream's new frame size is over the limit."""
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width > self.max_side or height > self.max_side or width * height > self.max_side * self.max_side:
            return TooLarge(self._size_message(index, width, height), code="video_too_large")
        return None


def ffmpeg_reason(exc: Exception) -> str:
    """FFmpeg's message without the file name PyAV appends to it: the file is the server's staging
    path (or a path under DFS_LOCAL_ROOTS), which an error detail must not reveal."""
    return getattr(exc, "strerror", None) or type(exc).__name__


def open_container(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise NotAVideo(f"not a readable media file: {ffmpeg_reason(exc)}", code="not_a_video") from exc


def decoder_context(stream: av.VideoStream) -> av.VideoCodecContext:
    """The stream's decoder context. PyAV gives None for a codec FFmpeg has no decoder for (a
    Matroska CodecID or MP4 sample entry it does not know: found by tests/fuzz/fuzz_media.py),
    which used to end as an AttributeError, a 500."""
    ctx = stream.codec_context
    if ctx is None:
        raise NotAVideo("the video stream's codec has no decoder on this server", code="undecodable")
    return ctx


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
        ctx = decoder_context(stream)
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
            raise NotAVideo(f"the video stream cannot be decoded: {ffmpeg_reason(exc)}", code="undecodable") from exc
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


def _plane(frame: av.VideoFrame, number: int) -> np.ndarray:
    """One plane of ``frame`` as a (height, width) uint8 view of FFmpeg's buffer (no copy)."""
    plane = frame.planes[number]
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]


def even_bounds(region: Region, width: int, height: int) -> Region | None:
    """``region`` widened to even corners (4:2:0 chroma covers 2x2 pixels) and clipped to the frame;
    None when nothing of it is inside."""
    x0, y0 = max(0, region[0] // 2 * 2), max(0, region[1] // 2 * 2)
    x1, y1 = min(width, -(-region[2] // 2) * 2), min(height, -(-region[3] // 2) * 2)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


@dataclass(frozen=True)
class PlaneRegion:
    """The 4:2:0 planes of an even-aligned rectangle of one frame, copied out of FFmpeg's buffers.

    What :func:`region_rgb` converts, as data: the detection pass keeps the faces' surroundings in
    this form (half the bytes of RGB) so the crop pass converts them later instead of decoding the
    video a second time (:mod:`service.pipeline.kept_faces`). A cut of a cut is the cut of the
    frame, so the RGB is the one the whole frame gives there.
    """

    luma: np.ndarray  # (h, w) uint8
    chroma: tuple[np.ndarray, np.ndarray]  # (h/2, w/2) uint8 each: U, V
    origin: tuple[int, int]  # (x, y) of luma[0, 0] in the frame, both even
    whole: tuple[int, int]  # (height, width) of the frame
    pixel_format: str
    colorspace: int
    color_range: int

    @property
    def bounds(self) -> Region:
        x, y = self.origin
        return x, y, x + self.luma.shape[1], y + self.luma.shape[0]

    @property
    def nbytes(self) -> int:
        return self.luma.nbytes + self.chroma[0].nbytes + self.chroma[1].nbytes

    def _inside(self, region: Region) -> Region | None:
        """``region`` widened to even and clipped to the frame, if that lies wholly inside these planes."""
        inner = even_bounds(region, self.whole[1], self.whole[0])
        x0, y0, x1, y1 = self.bounds
        if inner is None or inner[0] < x0 or inner[1] < y0 or inner[2] > x1 or inner[3] > y1:
            return None
        return inner

    def contains(self, region: Region) -> bool:
        """Whether these planes hold every pixel of ``region`` (as clipped to the frame)."""
        return self._inside(region) is not None

    def cut(self, region: Region) -> PlaneRegion | None:
        """The part of these planes that ``region`` (widened to even, clipped to the frame) covers,
        copied; None unless it lies wholly inside them."""
        inner = self._inside(region)
        if inner is None:
            return None
        x0, y0 = self.origin
        left, top, right, bottom = inner[0] - x0, inner[1] - y0, inner[2] - x0, inner[3] - y0
        return PlaneRegion(
            self.luma[top:bottom, left:right].copy(),
            tuple(c[top // 2 : bottom // 2, left // 2 : right // 2].copy() for c in self.chroma),  # type: ignore[arg-type]
            (inner[0], inner[1]),
            self.whole,
            self.pixel_format,
            self.colorspace,
            self.color_range,
        )

    def rgb(self) -> np.ndarray:
        """(h, w, 3) uint8 RGB, converted by swscale with the frame's own matrix and range."""
        height, width = self.luma.shape
        packed = np.concatenate([self.luma.ravel(), self.chroma[0].ravel(), self.chroma[1].ravel()])
        part = av.VideoFrame.from_ndarray(packed.reshape(-1, width), format=self.pixel_format)
        part.colorspace, part.color_range = self.colorspace, self.color_range  # the same matrix and range
        return part.to_ndarray(format="rgb24")


def frame_planes(frame: av.VideoFrame, region: Region | None = None, *, copy: bool = True) -> PlaneRegion | None:
    """The planes of ``region`` of ``frame`` (all of it by default) as a :class:`PlaneRegion`; None
    where its conversion could not be exact (see :data:`REGION_FORMATS`; a rotated or odd-sized frame).

    ``copy=False`` gives views of FFmpeg's buffers, valid only while ``frame`` is: for converting at once
    (:func:`region_rgb`), where a copy would only be copied again."""
    width, height = frame.width, frame.height
    if frame.format.name not in REGION_FORMATS or width % 2 or height % 2 or frame_rotation(frame):
        return None
    bounds = even_bounds(region or (0, 0, width, height), width, height)
    if bounds is None:
        return None
    x0, y0, x1, y1 = bounds
    luma = _plane(frame, 0)[y0:y1, x0:x1]
    chroma = tuple(_plane(frame, n)[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] for n in (1, 2))
    return PlaneRegion(
        luma.copy() if copy else luma,
        tuple(c.copy() for c in chroma) if copy else chroma,  # type: ignore[arg-type]
        (x0, y0),
        (height, width),
        frame.format.name,
        frame.colorspace,
        frame.color_range,
    )


def region_rgb(frame: av.VideoFrame, region: Region) -> tuple[np.ndarray, tuple[int, int]] | None:
    """RGB of ``region`` of ``frame`` (widened to even bounds) and its corner, converted by swscale from
    the region's own planes: the same pixels as the whole frame's conversion, at the region's cost.

    None where that cannot be promised or would not pay (see :data:`REGION_FORMATS`; a rotated or
    odd-sized frame; a region over half the frame): the caller converts the whole frame.
    """
    bounds = even_bounds(region, frame.width, frame.height)
    if (
        bounds is None
        or (bounds[2] - bounds[0]) * (bounds[3] - bounds[1]) > _REGION_MAX_SHARE * frame.width * frame.height
    ):
        return None
    planes = frame_planes(frame, bounds, copy=False)
    return None if planes is None else (planes.rgb(), planes.origin)


def converted(
    frame: av.VideoFrame, index: int, max_side: int | None, region: Region | None, planes: bool = False
) -> DecodedFrame:
    """``frame`` in upright RGB: ``region`` of it where :func:`region_rgb` can, else all of it at ``max_side``
    (with a copy of its full-size planes when ``planes``, where :func:`frame_planes` can)."""
    time_s = float(frame.time or 0.0)
    if region is not None and (part := region_rgb(frame, region)) is not None:
        return DecodedFrame(index, time_s, part[0], part[1], (frame.height, frame.width))
    out_w, out_h = scaled_size(frame.width, frame.height, max_side)
    rgb = frame.to_ndarray(format="rgb24", width=out_w, height=out_h)
    copied = frame_planes(frame) if planes else None
    return DecodedFrame(index, time_s, upright(rgb, frame_rotation(frame)), planes=copied)


def iter_frames(
    path: Path,
    *,
    max_frames: int,
    wanted: Container[int] | None = None,
    max_side: int | None = None,
    threads: int = 0,
    guard: DecodeGuard | None = None,
    regions: Mapping[int, Region] | None = None,
    planes: bool = False,
) -> Iterator[DecodedFrame]:
    """Yield upright RGB frames ``0..max_frames-1`` in order (only ``wanted`` ones if given).

    Frames not wanted are decoded (a codec needs its references) but never converted to RGB, which
    is most of the per-frame cost at 1080p. A frame with an entry in ``regions`` (full size only) is
    converted inside that region where :func:`region_rgb` can do it exactly, its ``origin`` then
    the region's corner; the crop pass asks this for the faces it cuts. With ``planes``, each wanted
    frame also carries a copy of its full-size 4:2:0 planes (``DecodedFrame.planes``, where exact;
    copied here, in the decoding thread: holding FFmpeg's own frames instead slowed its decoding
    more): the detection pass keeps their part around the faces for the crop pass. A stream that breaks
    part-way (a truncated upload) ends the iteration with a warning after the frames that did
    decode; one that yields no frame at all is refused as not decodable. ``guard`` checks and
    charges every decoded frame, wanted or not (:class:`DecodeGuard`), and stops the iteration
    when the request is cancelled.
    """
    with open_container(path) as container:
        if not container.streams.video:
            raise NotAVideo("the file has no video stream", code="no_video_stream")
        stream = container.streams.video[0]
        decoder_context(stream)
        stream.thread_type = "AUTO"
        if threads:
            stream.codec_context.thread_count = threads
        if guard is not None:
            guard.limit_codec(stream)
        index = 0
        try:
            for frame in container.decode(stream):
                if index >= max_frames:
                    break
                if guard is not None:
                    guard.admit(index, frame.width, frame.height)
                if wanted is None or index in wanted:
                    region = regions.get(index) if regions is not None and max_side is None else None
                    yield converted(frame, index, max_side, region, planes)
                index += 1
            else:  # the stream ended: with frame threads, FFmpeg drops a refused last frame silently
                if guard is not None and (refusal := guard.refused_size(stream, index)) is not None:
                    raise refusal
        except av.error.FFmpegError as exc:
            if guard is not None and (refusal := guard.refused_size(stream, index)) is not None:
                raise refusal from exc
            if index == 0:
                raise NotAVideo(f"no frame could be decoded: {ffmpeg_reason(exc)}", code="undecodable") from exc
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
