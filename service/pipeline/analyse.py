"""One video through the stages: decode -> faces -> tracks -> crops -> engines -> scores.

Fetching happens before (the caller owns the file's lifetime). CPU-heavy stages run in worker
threads (PyAV, OpenCV, mediapipe and ONNX Runtime release the GIL), inference goes through the
shared per-model batchers, so many requests progress at once on one event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service import metrics
from service.config import Settings
from service.pipeline import scores
from service.pipeline.crops import CropItem, SamplingOptions, extract_crops, plan_crops
from service.pipeline.decode import DecodedFrame, VideoInfo, iter_frames, probe, same_shape_chunks
from service.pipeline.faces import Face, FaceDetector
from service.pipeline.gpu_streams import thread_stream
from service.pipeline.tensor_frames import FrameSourceUnsupported, TensorFrame, TensorFrameSource, tensor_frame_source
from service.pipeline.tracks import IouTracker, Track
from service.runtime import Runtime

log = logging.getLogger(__name__)

_DETECT_CHUNK = 8  # frames per detector call: RetinaFace batches them in one forward


@dataclass
class AnalysisOptions:
    models: list[str]
    max_frames: int
    sampling: SamplingOptions

    @classmethod
    def from_settings(cls, settings: Settings, models: list[str], *, max_frames: int | None = None,
                      clip_stride: int | None = None, max_clips_per_track: int | None = None,
                      frames_per_track: int | None = None) -> AnalysisOptions:
        """The service's settings, with a request's overrides where given (frames capped by the settings)."""
        return cls(
            models=list(dict.fromkeys(models)),
            max_frames=min(max_frames or settings.max_frames, settings.max_frames),
            sampling=SamplingOptions(
                clip_stride=clip_stride or settings.clip_stride,
                max_clips_per_track=max_clips_per_track or settings.max_clips_per_track,
                frames_per_track=frames_per_track or settings.frames_per_track,
            ),
        )


@dataclass
class StageClock:
    """Milliseconds spent per stage, accumulated."""

    ms: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.ms[stage] = self.ms.get(stage, 0.0) + seconds * 1000.0

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 1) for k, v in self.ms.items()}


def _keep(face: Face, settings: Settings) -> bool:
    side = min(face.box[2] - face.box[0], face.box[3] - face.box[1])
    return face.score >= settings.min_face_score and side >= settings.min_face_size


def _track_faces(
    tracker: IouTracker, index: int, faces: list[Face], frame_width: int, info: VideoInfo, settings: Settings
) -> None:
    """Map one frame's detections to original pixels, clip, filter and feed them to the tracker."""
    limits = np.array([info.width, info.height, info.width, info.height], np.float32)
    originals = [face.scaled(info.width / frame_width) for face in faces]
    # boxes may overhang the frame edge; clip them (landmarks stay as found)
    clipped = [Face(np.clip(f.box, 0, limits), f.score, f.landmarks) for f in originals]
    tracker.update(index, [f for f in clipped if _keep(f, settings)])


def find_tracks(
    path: Path,
    info: VideoInfo,
    detector: FaceDetector,
    settings: Settings,
    max_frames: int,
    clock: StageClock,
    frames: TensorFrameSource | None = None,
) -> tuple[list[Track], int]:
    """Decode at detection size, detect every ``detect_every`` frames, link detections into tracks.

    ``frames`` is a tensor decoder (NVDEC when ``DFS_DECODER`` chose it): frames then stay tensors
    on their device through detection. None, or a file that source cannot decode, runs the PyAV
    numpy path.
    """
    wanted = range(0, max_frames, settings.detect_every)
    if frames is not None:
        import torch

        from service.pipeline.faces import detect_tensor

        try:
            with thread_stream():  # this request's decode and detection overlap other requests' GPU work
                return _link_tracks(
                    frames(path, max_frames=max_frames, wanted=wanted, max_side=settings.detection_max_side),
                    lambda images: detect_tensor(detector, torch.stack(images)),
                    lambda rgb: rgb.shape[-1],  # (3, H, W)
                    info, settings, clock,
                )
        except FrameSourceUnsupported as exc:
            log.info("%s: tensor decoder cannot decode it (%s); using PyAV", path.name, exc)
    return _link_tracks(
        iter_frames(path, max_frames=max_frames, wanted=wanted, max_side=settings.detection_max_side,
                    threads=settings.decode_threads),
        detector.detect,
        lambda rgb: rgb.shape[1],  # (H, W, 3)
        info, settings, clock,
    )


def _link_tracks(
    frames: Iterable[DecodedFrame | TensorFrame],
    detect: Callable[[list[Any]], list[list[Face]]],
    width_of: Callable[[Any], int],
    info: VideoInfo,
    settings: Settings,
    clock: StageClock,
) -> tuple[list[Track], int]:
    """Detect on chunks of decoded frames (numpy or tensor, whichever ``detect`` takes) and track them."""
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
            _track_faces(tracker, frame.index, faces, width_of(frame.rgb), info, settings)
    faces_ms = clock.ms.get("faces", 0.0) - faces_before
    clock.add("decode", time.perf_counter() - started - faces_ms / 1000.0)
    min_detections = max(1, min(settings.min_track_frames, -(-frames_read // settings.detect_every)))
    return tracker.finish(min_detections=min_detections, max_tracks=settings.max_tracks), frames_read


@dataclass
class VideoLogits:
    """Everything up to the scores: the face tracks, the crops planned on them and each model's raw logits."""

    info: VideoInfo
    frames_read: int
    tracks: list[Track]
    items: list[CropItem]
    logits: dict[str, np.ndarray]  # per model, one raw logit per item of that model, in ``items`` order
    clock: StageClock


async def video_logits(path: Path, request_id: str, options: AnalysisOptions, runtime: Runtime) -> VideoLogits:
    """Decode, find and track faces, crop and run the engines: the raw logits before calibration.

    Separate from :func:`analyse_video` so calibration (``python -m export.calibrate``) fits on
    exactly what serving computes.
    """
    settings = runtime.settings
    assert runtime.detector is not None
    clock = StageClock()

    started = time.perf_counter()
    info = await asyncio.to_thread(
        probe, path, max_side=settings.max_video_side, max_duration_s=settings.max_duration_s
    )
    clock.add("decode", time.perf_counter() - started)

    frames = tensor_frame_source(runtime.decoder)  # None: the PyAV numpy path
    tracks, frames_read = await asyncio.to_thread(
        find_tracks, path, info, runtime.detector, settings, options.max_frames, clock, frames
    )
    metrics.FACES_FOUND.observe(len(tracks))

    specs = {name: runtime.models[name].spec for name in options.models}
    items: list[CropItem] = plan_crops(tracks, specs, options.sampling)
    started = time.perf_counter()
    crops = await asyncio.to_thread(
        extract_crops, path, items, specs, max_frames=frames_read, threads=settings.decode_threads, frames=frames
    )
    clock.add("crops", time.perf_counter() - started)

    started = time.perf_counter()
    logits_per_model = await asyncio.gather(
        *[
            runtime.models[name].batcher.infer(
                request_id,
                [crop if specs[name].kind == "clip" else crop[0] for item, crop in zip(items, crops) if item.model == name],
            )
            for name in options.models
        ]
    )
    clock.add("inference", time.perf_counter() - started)
    return VideoLogits(info, frames_read, tracks, items, dict(zip(options.models, logits_per_model)), clock)


async def analyse_video(path: Path, request_id: str, options: AnalysisOptions, runtime: Runtime) -> dict[str, Any]:
    """Score one local video file; returns the response body without fetch timing and request id."""
    result = await video_logits(path, request_id, options, runtime)
    info = result.info
    body = build_scores(result.tracks, result.items, result.logits, runtime, runtime.settings)
    body["video"] = {
        "width": info.width,
        "height": info.height,
        "fps": info.fps,
        "frames": info.frames,
        "duration_s": info.duration_s,
        "frames_analyzed": result.frames_read,
    }
    body["timings_ms"] = result.clock.rounded()
    for stage, ms in body["timings_ms"].items():
        metrics.STAGE_SECONDS.labels(stage).observe(ms / 1000.0)
    return body


def build_scores(
    tracks: list[Track],
    items: list[CropItem],
    logits: dict[str, np.ndarray],
    runtime: Runtime,
    settings: Settings,
) -> dict[str, Any]:
    """Apply the formula in :mod:`service.pipeline.scores` and shape the response fields."""
    weights = settings.ensemble_weight_map
    per_model_items: dict[str, list[CropItem]] = {name: [i for i in items if i.model == name] for name in logits}
    faces = []
    for track in tracks:
        model_scores: dict[str, dict[str, Any]] = {}
        for name, model_logits in logits.items():
            mine = [v for item, v in zip(per_model_items[name], model_logits) if item.track_id == track.track_id]
            if not mine:
                continue
            result = scores.track_model_score(mine, runtime.models[name].version.manifest.calibration)
            model_scores[name] = {"score": round(result.score, 6), "items": result.items}
        track_score = scores.ensemble({n: s["score"] for n, s in model_scores.items()}, weights) if model_scores else None
        faces.append(
            {
                "track_id": track.track_id,
                "first_frame": track.first_frame,
                "last_frame": track.last_frame,
                "frames_detected": int(track.detected.sum()),
                "box": [round(float(v), 1) for v in track.mean_box],
                "score": None if track_score is None else round(track_score, 6),
                "models": model_scores,
            }
        )
    scored = [f for f in faces if f["score"] is not None]
    df_probability = max((f["score"] for f in scored), default=None)
    models_out: dict[str, Any] = {}
    for name in logits:
        kind = runtime.models[name].spec.kind
        track_scores = [f["models"][name]["score"] for f in scored if name in f["models"]]
        models_out[name] = {
            "score": max(track_scores) if track_scores else None,
            "clips" if kind == "clip" else "frames": len(per_model_items[name]),
            "version": runtime.models[name].version.version,
        }
    if df_probability is None:
        prediction = "NO_FACE"
    else:
        prediction = "FAKE" if df_probability >= settings.threshold else "REAL"
    return {
        "df_probability": df_probability,
        "prediction": prediction,
        "threshold": settings.threshold,
        "models": models_out,
        "faces": faces,
    }
