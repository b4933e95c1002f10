"""Stage 2 on the GPU: decode a local video file with NVDEC (PyNvVideoCodec 2.x) into CUDA tensors.

Same contract as :func:`service.pipeline.decode.iter_frames` (frames ``0..max_frames-1`` in
presentation order, only the ``wanted`` ones converted, optional ``max_side`` downscale, display
rotation applied, a stream that breaks part-way ends with a warning), but each frame is an RGB
``(3, H, W)`` uint8 tensor in GPU memory: NVDEC writes NV12 to the device,
:mod:`service.pipeline.gpu_color` converts it there and :mod:`service.pipeline.gpu_warp` scales it,
so a frame never crosses PCIe.

What NVDEC cannot do is refused up front with :class:`NvdecUnsupported` (a
:class:`~service.pipeline.tensor_frames.FrameSourceUnsupported`), before any frame is yielded,
so the caller decodes that file with PyAV instead: codecs other than H.264/HEVC/VP9/AV1, anything
but 8-bit 4:2:0 (10-bit arrives as P016, 4:2:2/4:4:4 in other layouts), and any failure to create
the decoder or to decode the first frame.

The container header, the display rotation and the colour tags are read with PyAV (already a
dependency, one frame decoded on the CPU): PyNvVideoCodec's demuxer exposes less of them across
versions, and taking them from PyAV makes both paths agree on what the stream says.

PyNvVideoCodec details this code relies on (2.x API reference and its Demuxer/Decoder bindings):
``CreateDemuxer(path)`` iterates packets and ends with an empty packet that flushes the decoder;
``CreateDecoder(gpuid, codec, cudacontext=0 -> the device's primary context (torch's),
cudastream, usedevicememory=True)``; ``Decode(packet)`` returns frames in display order whose
``timestamp`` is the packet pts in the stream's time base; a frame exports DLPack
(``torch.from_dlpack``) as NV12 uint8 (1.5H, W). The decoder recycles its output surfaces on
later ``Decode`` calls, so each frame is converted (a new tensor) before decoding goes on, on the
same CUDA stream the decoder was given (torch's current stream), which orders the conversion
before any reuse of the surface.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import av
import torch

from service.pipeline.decode import DecodeGuard, RequestCancelled, ffmpeg_reason, frame_rotation, open_container
from service.pipeline.failures import NotAVideo, RequestFailure
from service.pipeline.gpu_color import Matrix, matrix_for_tags, nv12_to_rgb
from service.pipeline.gpu_warp import resize_max_side
from service.pipeline.tensor_frames import DecoderUnavailable, FrameSourceUnsupported, TensorFrame

log = logging.getLogger(__name__)

# FFmpeg codec names NVDEC decodes on the data-centre GPUs we target (Ampere/Hopper: H.264, HEVC,
# VP9, AV1; older codecs are not on every chip, and PyAV handles them well enough).
NVDEC_CODECS = frozenset({"h264", "hevc", "vp9", "av1"})
# 8-bit 4:2:0, which NVDEC outputs as NV12; "j" formats are the same layout at full range.
NVDEC_PIXEL_FORMATS = frozenset({"yuv420p", "yuvj420p", "nv12"})


class NvdecUnavailable(DecoderUnavailable):
    """NVDEC cannot run on this machine (no CUDA, PyNvVideoCodec missing or broken)."""


class NvdecUnsupported(FrameSourceUnsupported):
    """NVDEC cannot decode this file; decode it with PyAV."""


@lru_cache(maxsize=1)
def nvdec_available() -> tuple[bool, str]:
    """(usable, why): whether torch sees a CUDA device and PyNvVideoCodec imports.

    Cached: the answer does not change while the process runs, and the service asks per request.
    """
    try:
        import torch as _torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        return False, f"torch is not importable: {exc}"
    if not _torch.cuda.is_available():
        return False, "torch sees no CUDA device" + (" (CPU-only torch build)" if _torch.version.cuda is None else "")
    try:
        import PyNvVideoCodec as nvc  # noqa: N813 - the library's own name
    except ImportError as exc:
        return False, f"PyNvVideoCodec is not installed ({exc}); pip install PyNvVideoCodec"
    except Exception as exc:  # noqa: BLE001 - a broken install (missing libnvcuvid) must not crash start-up
        return False, f"PyNvVideoCodec failed to import: {type(exc).__name__}: {exc}"
    version = getattr(nvc, "__version__", "unknown version")
    return True, f"PyNvVideoCodec {version} on {_torch.cuda.get_device_name()}"


@dataclass(frozen=True)
class StreamFacts:
    """What the container says about the video stream, as PyAV reads it."""

    codec: str
    pix_fmt: str
    width: int  # coded display size, before rotation
    height: int
    time_base: Fraction | None
    rotation: int
    matrix: Matrix
    full_range: bool


def stream_facts(path: Path) -> StreamFacts:
    """Header, display rotation and colour tags of the first video stream (decodes one frame on the CPU)."""
    with open_container(path) as container:
        if not container.streams.video:
            raise NotAVideo("the file has no video stream", code="no_video_stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        try:
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as exc:
            raise NotAVideo(f"no frame could be decoded: {ffmpeg_reason(exc)}", code="undecodable") from exc
        if first is None:
            raise NotAVideo("the video stream holds no decodable frame", code="undecodable")
        pix_fmt = first.format.name
        matrix, full = matrix_for_tags(getattr(first, "colorspace", None), getattr(first, "color_range", None), pix_fmt)
        return StreamFacts(
            codec=ctx.name,
            pix_fmt=pix_fmt,
            width=int(first.width),
            height=int(first.height),
            time_base=stream.time_base,
            rotation=frame_rotation(first),
            matrix=matrix,
            full_range=full,
        )


def check_supported(facts: StreamFacts) -> None:
    """Raise :class:`NvdecUnsupported` for streams this module does not send to NVDEC."""
    if facts.codec not in NVDEC_CODECS:
        supported = ", ".join(sorted(NVDEC_CODECS))
        raise NvdecUnsupported(f"codec {facts.codec} is not decoded with NVDEC here ({supported} are)")
    if facts.pix_fmt not in NVDEC_PIXEL_FORMATS:
        raise NvdecUnsupported(f"pixel format {facts.pix_fmt} is not 8-bit 4:2:0")


def frame_to_rgb(nv12: torch.Tensor, facts: StreamFacts, max_side: int | None) -> torch.Tensor:
    """One decoded NV12 surface -> upright (3, H, W) uint8 RGB, scaled to ``max_side`` (a new tensor)."""
    if nv12.ndim == 3 and nv12.shape[-1] == 1:  # some exporters add a trailing channel axis
        nv12 = nv12[..., 0]
    if nv12.dtype != torch.uint8:
        raise NvdecUnsupported(f"NVDEC returned {nv12.dtype} frames (high bit depth); only 8-bit NV12 is converted")
    rgb = nv12_to_rgb(nv12, matrix=facts.matrix, full_range=facts.full_range, height=facts.height, width=facts.width)
    rgb = resize_max_side(rgb, max_side)
    turns = (facts.rotation // 90) % 4
    if turns:  # counter-clockwise like decode.upright (np.rot90 and torch.rot90 turn the same way)
        rgb = torch.rot90(rgb, k=turns, dims=(1, 2))
    return rgb.contiguous()


def iter_frames(
    path: Path,
    *,
    max_frames: int,
    wanted: Container[int] | None = None,
    max_side: int | None = None,
    gpu_id: int | None = None,
    guard: DecodeGuard | None = None,
) -> Iterator[TensorFrame]:
    """Yield upright RGB CUDA frames ``0..max_frames-1`` in order (only ``wanted`` ones if given).

    ``guard`` checks and charges every decoded frame by its NV12 surface's size (1.5H x W), as the
    PyAV path does, and stops decoding when the request is cancelled.

    Raises :class:`NvdecUnavailable` when NVDEC cannot run at all, :class:`NvdecUnsupported`
    (before yielding anything) when this file must go through PyAV, and the PyAV path's
    :class:`~service.pipeline.failures.NotAVideo` for files that are not videos.
    """
    usable, reason = nvdec_available()
    if not usable:
        raise NvdecUnavailable(reason)
    facts = stream_facts(path)
    check_supported(facts)
    import PyNvVideoCodec as nvc  # noqa: N813

    device = torch.device("cuda", torch.cuda.current_device() if gpu_id is None else gpu_id)
    stream = torch.cuda.current_stream(device)
    try:
        demuxer = nvc.CreateDemuxer(str(path))
        decoder = nvc.CreateDecoder(
            gpuid=device.index,
            codec=demuxer.GetNvCodecId(),
            cudacontext=0,  # the device's primary context, which torch uses too
            cudastream=stream.cuda_stream,  # torch's stream: conversion is ordered before surface reuse
            usedevicememory=True,
        )
    except Exception as exc:  # noqa: BLE001 - the library raises its own exception types
        raise NvdecUnsupported(f"NVDEC decoder could not be created: {type(exc).__name__}: {exc}") from exc

    index = 0
    try:
        for packet in demuxer:  # the last packet is empty and flushes the decoder's queued frames
            for decoded in decoder.Decode(packet):
                if index >= max_frames:
                    return
                surface = torch.from_dlpack(decoded)
                if guard is not None:
                    guard.admit(index, int(surface.shape[1]), int(surface.shape[0]) * 2 // 3)
                if wanted is None or index in wanted:
                    rgb = frame_to_rgb(surface, facts, max_side)
                    pts = getattr(decoded, "timestamp", None)
                    time_s = float(pts * facts.time_base) if pts is not None and facts.time_base else 0.0
                    yield TensorFrame(index=index, time_s=time_s, rgb=rgb)
                index += 1
    except (RequestFailure, RequestCancelled):
        raise  # the guard's refusals and a cancellation end the request, not only this decoder
    except NvdecUnsupported:
        if index == 0:
            raise
        log.warning("%s: NVDEC stopped after %d frames: unsupported frame format", path, index)
    except Exception as exc:  # noqa: BLE001 - PyNvVideoCodec raises its own exception types
        if index == 0:
            raise NvdecUnsupported(f"NVDEC could not decode the first frame: {type(exc).__name__}: {exc}") from exc
        log.warning("%s: NVDEC decoding stopped after %d frames: %s", path, index, exc)
    if index == 0:
        raise NvdecUnsupported("NVDEC produced no frame")
