"""Frames as torch tensors: the type the GPU frame path passes around, and which decoder makes them.

The PyAV path (:mod:`service.pipeline.decode`) yields numpy frames in host memory. On a CUDA
machine NVDEC (:mod:`service.pipeline.decode_nvdec`) decodes straight into GPU memory, and the
frames should stay there through detection and cropping; this module is the seam between the two:

- :class:`TensorFrame` and :class:`TensorFrameSource`: what a tensor decoder yields and how it is
  called (the same semantics as :func:`service.pipeline.decode.iter_frames`);
- :func:`pyav_tensor_frames`: PyAV frames turned into tensors and downscaled with the same torch
  code NVDEC frames go through. On a CPU it lets the tests run the whole torch path (detection on
  tensors, warps in :mod:`service.pipeline.gpu_warp`) without a GPU;
- :func:`choose_decoder` / :func:`tensor_frame_source`: ``DFS_DECODER`` resolved once at start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from service.pipeline.decode import DecodeGuard, iter_frames
from service.pipeline.failures import DfsFailure

if TYPE_CHECKING:  # imported where used: the PyAV-only service never loads torch for this module
    import torch

log = logging.getLogger(__name__)

Decoder = Literal["pyav", "nvdec"]


@dataclass(frozen=True)
class TensorFrame:
    index: int
    time_s: float
    rgb: torch.Tensor  # (3, H, W) uint8 RGB planes, upright, on the decoder's device


class TensorFrameSource(Protocol):
    """A decoder yielding :class:`TensorFrame` with :func:`service.pipeline.decode.iter_frames` semantics:
    frames ``0..max_frames-1`` in order, only the ``wanted`` ones, the longer side at most ``max_side``,
    every decoded frame checked and charged by ``guard``."""

    def __call__(
        self,
        path: Path,
        *,
        max_frames: int,
        wanted: Container[int] | None = None,
        max_side: int | None = None,
        guard: DecodeGuard | None = None,
    ) -> Iterator[TensorFrame]: ...


class FrameSourceUnsupported(DfsFailure):
    """This source cannot decode this file (codec, pixel format, profile): decode it with PyAV instead.

    Raised only before the first frame is yielded, so a caller can fall back without undoing work.
    """


class DecoderUnavailable(DfsFailure):
    """The configured decoder cannot run on this machine (a start-up error, not a per-file one)."""


def pyav_tensor_frames(
    path: Path,
    *,
    max_frames: int,
    wanted: Container[int] | None = None,
    max_side: int | None = None,
    device: str | torch.device = "cpu",
    threads: int = 0,
    guard: DecodeGuard | None = None,
) -> Iterator[TensorFrame]:
    """PyAV frames as (3, H, W) uint8 tensors on ``device``, downscaled by torch like NVDEC frames.

    Decoding happens at full resolution and :func:`service.pipeline.gpu_warp.resize_max_side` does
    the downscale, exactly the steps the NVDEC source takes, so this is the CPU stand-in for it.
    """
    import torch

    from service.pipeline.gpu_warp import resize_max_side

    for frame in iter_frames(path, max_frames=max_frames, wanted=wanted, threads=threads, guard=guard):
        rgb = torch.from_numpy(frame.rgb).to(device).permute(2, 0, 1)
        yield TensorFrame(frame.index, frame.time_s, resize_max_side(rgb, max_side).contiguous())


class DecoderSettings(Protocol):
    """What :func:`choose_decoder` reads (``service.config.Settings`` has it): the media layer names
    the settings it needs rather than import the app's configuration."""

    @property
    def decoder(self) -> str: ...
    @property
    def device(self) -> str: ...


def choose_decoder(settings: DecoderSettings) -> Decoder:
    """Resolve ``DFS_DECODER``: ``auto`` = NVDEC when it is usable and the device is CUDA, else PyAV.

    An explicit ``nvdec`` that cannot run raises :class:`DecoderUnavailable` with the reason, so a
    misconfigured GPU pod says so at start-up instead of silently decoding on its CPUs.
    """
    if settings.decoder == "pyav":
        return "pyav"
    from service.pipeline.faces import resolve_device

    device = resolve_device(settings.device)
    if settings.decoder == "auto" and device != "cuda":
        # Not even imported: the NVDEC module imports torch (~500 MB resident) a CPU service never uses.
        log.info("frame decoder: PyAV (NVDEC not used: device is %s)", device)
        return "pyav"
    from service.pipeline.decode_nvdec import nvdec_available

    usable, reason = nvdec_available()
    if settings.decoder == "nvdec":
        if not usable:
            raise DecoderUnavailable(f"DFS_DECODER=nvdec but NVDEC cannot be used: {reason}")
        if device != "cuda":
            raise DecoderUnavailable(
                f"DFS_DECODER=nvdec needs DFS_DEVICE=cuda (or auto on a GPU), got {settings.device}"
            )
        return "nvdec"
    if usable and device == "cuda":
        return "nvdec"
    log.info("frame decoder: PyAV (NVDEC not used: %s)", reason if not usable else f"device is {device}")
    return "pyav"


def tensor_frame_source(decoder: str) -> TensorFrameSource | None:
    """The tensor source for a resolved decoder, or None for PyAV (the numpy path runs unchanged)."""
    if decoder == "nvdec":
        from service.pipeline.decode_nvdec import iter_frames as nvdec_frames

        return nvdec_frames
    return None
