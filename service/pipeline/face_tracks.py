"""Faces through a video: decode at detection size, detect, link detections into tracks.

The first half of the analysis, shared by the service (``service.pipeline.analyse``) and by
training's crop cache (``training.preprocess``), so both find the same faces in the same frames.
It reads its options through :class:`TrackingSettings`, which the app's ``Settings`` satisfies, so
this media module never imports the web app.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from service.pipeline.decode import DecodedFrame, DecodeGuard, VideoInfo, iter_frames, same_shape_chunks
from service.pipeline.faces import Face, FaceDetector
from service.pipeline.gpu_streams import thread_stream
from service.pipeline.kept_faces import KeptFaces
from service.pipeline.read_ahead import read_ahead
from service.pipeline.tensor_frames import FrameSourceUnsupported, TensorFrame, TensorFrameSource
from service.pipeline.tracks import IouTracker, Track

log = logging.getLogger(__name__)

_DETECT_CHUNK = 8  # frames per detector call: RetinaFace batches them in one forward


class TrackingSettings(Protocol):
    """The options face finding reads (``DFS_DETECT_EVERY``, ``DFS_MIN_FACE_SIZE``, ...)."""

    detect_every: int
    detection_max_side: int
    decode_threads: int
    min_face_score: float
    min_face_size: int
    track_iou: float
    track_max_gap: int
    min_track_frames: int
    max_tracks: int


@dataclass
class StageClock:
    """Milliseconds spent per stage, accumulated."""

    ms: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.ms[stage] = self.ms.get(stage, 0.0) + seconds * 1000.0

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 1) for k, v in self.ms.items()}


def keep_face(face: Face, settings: TrackingSettings) -> bool:
    """The one face filter: confident enough and big enough (serving's tracks and training's photos)."""
    side = min(face.box[2] - face.box[0], face.box[3] - face.box[1])
    return face.score >= settings.min_face_score and side >= settings.min_face_size


def _track_faces(
    tracker: IouTracker, index: int, faces: list[Face], frame_width: int, info: VideoInfo, settings: TrackingSettings
) -> list[Face]:
    """Map one frame's detections to original pixels, clip, filter and feed them to the tracker; returns those fed."""
    limits = np.array([info.width, info.height, info.width, info.height], np.float32)
    originals = [face.scaled(info.width / frame_width) for face in faces]
    # boxes may overhang the frame edge; clip them (landmarks stay as found)
    clipped = [Face(np.clip(f.box, 0, limits), f.score, f.landmarks) for f in originals]
    fed = [f for f in clipped if keep_face(f, settings)]
    tracker.update(index, fed)
    return fed


def find_tracks(
    path: Path,
    info: VideoInfo,
    detector: FaceDetector,
    settings: TrackingSettings,
    max_frames: int,
    clock: StageClock,
    frames: TensorFrameSource | None = None,
    guard: DecodeGuard | None = None,
    progress: Callable[[int], None] | None = None,
    kept: KeptFaces | None = None,
) -> tuple[list[Track], int]:
    """Decode at detection size, detect every ``detect_every`` frames, link detections into tracks.

    ``frames`` is a tensor decoder (NVDEC when ``DFS_DECODER`` chose it): frames then stay tensors
    on their device through detection. None, or a file that source cannot decode, runs the PyAV
    numpy path. ``guard`` checks every decoded frame (see :class:`DecodeGuard`). ``progress`` is
    told the frames read so far after every detector chunk. ``kept`` (PyAV path) is given the
    full-size planes around every face found, for the crop pass (:mod:`service.pipeline.kept_faces`).
    """
    wanted = range(0, max_frames, settings.detect_every)
    if frames is not None:
        import torch

        from service.pipeline.faces import detect_tensor

        try:
            with thread_stream():  # this request's decode and detection overlap other requests' GPU work
                return _link_tracks(
                    frames(
                        path, max_frames=max_frames, wanted=wanted, max_side=settings.detection_max_side, guard=guard
                    ),
                    lambda images: detect_tensor(detector, torch.stack(images)),
                    lambda rgb: rgb.shape[-1],  # (3, H, W)
                    info,
                    settings,
                    clock,
                    progress,
                )
        except FrameSourceUnsupported as exc:
            log.info("%s: tensor decoder cannot decode it (%s); using PyAV", path.name, exc)
    decoded = iter_frames(
        path,
        max_frames=max_frames,
        wanted=wanted,
        max_side=settings.detection_max_side,
        threads=settings.decode_threads,
        guard=guard,
        planes=kept is not None,
    )
    # The next chunk decodes while this one is detected; closed at once when detection fails.
    with closing(read_ahead(decoded, _DETECT_CHUNK, guard.check_cancelled if guard else None)) as ahead:
        return _link_tracks(ahead, detector.detect, lambda rgb: rgb.shape[1], info, settings, clock, progress, kept)


def _link_tracks(
    frames: Iterable[DecodedFrame | TensorFrame],
    detect: Callable[[list[Any]], list[list[Face]]],
    width_of: Callable[[Any], int],
    info: VideoInfo,
    settings: TrackingSettings,
    clock: StageClock,
    progress: Callable[[int], None] | None = None,
    kept: KeptFaces | None = None,
) -> tuple[list[Track], int]:
    """Detect on chunks of decoded frames (numpy or tensor, whichever ``detect`` takes) and track them
    (and hand ``kept`` the planes around each face tracked)."""
    tracker = IouTracker(iou_threshold=settings.track_iou, max_gap=settings.track_max_gap)
    frames_read = 0
    faces_before = clock.ms.get("faces", 0.0)
    started = time.perf_counter()
    for chunk in same_shape_chunks(frames, _DETECT_CHUNK):
        frames_read = chunk[-1].index + 1
        detect_started = time.perf_counter()
        found = detect([frame.rgb for frame in chunk])
        clock.add("faces", time.perf_counter() - detect_started)
        for frame, faces in zip(chunk, found, strict=True):
            tracked = _track_faces(tracker, frame.index, faces, width_of(frame.rgb), info, settings)
            if kept is not None and isinstance(frame, DecodedFrame):
                kept.keep(frame, [face.box for face in tracked])
        if progress is not None:
            progress(frames_read)
    faces_ms = clock.ms.get("faces", 0.0) - faces_before
    clock.add("decode", time.perf_counter() - started - faces_ms / 1000.0)
    min_detections = max(1, min(settings.min_track_frames, -(-frames_read // settings.detect_every)))
    return tracker.finish(min_detections=min_detections, max_tracks=settings.max_tracks), frames_read


__all__ = ["StageClock", "TrackingSettings", "find_tracks"]
