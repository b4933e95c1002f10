"""One video through the stages: decode -> faces -> tracks -> crops -> engines -> scores.

Fetching happens before (the caller owns the file's lifetime). CPU-heavy stages run in worker
threads (PyAV, OpenCV, mediapipe and ONNX Runtime release the GIL), inference goes through the
shared per-model batchers, so many requests progress at once on one event loop.

Every request has one :class:`~service.pipeline.decode.DecodeGuard`: it bounds the pixels decoded
and the frame size over both decode passes, and carries the cancellation flag its worker threads
check at every frame, so a cancelled request (client gone, time limit) stops computing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from service import metrics
from service.config import Settings
from service.pipeline import scores
from service.pipeline.crops import CropItem, SamplingOptions, extract_crops, plan_crops
from service.pipeline.decode import DecodeGuard, VideoInfo, probe
from service.pipeline.evidence import Evidence, EvidencePlan, Progress, safe_progress
from service.pipeline.face_tracks import StageClock, find_tracks
from service.pipeline.failures import DfsFailure, NotAVideo, Unavailable
from service.pipeline.kept_faces import KeptFaces
from service.pipeline.result import FaceResult, ModelResult, TrackModelScore, VideoResult, VideoSummary
from service.pipeline.tensor_frames import tensor_frame_source
from service.pipeline.timeline import track_timeline
from service.pipeline.tracks import Track
from service.serving import Serving

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class AnalysisOptions:
    models: list[str]
    max_frames: int
    sampling: SamplingOptions

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        models: list[str],
        *,
        max_frames: int | None = None,
        clip_stride: int | None = None,
        max_clips_per_track: int | None = None,
        frames_per_track: int | None = None,
    ) -> AnalysisOptions:
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
class VideoLogits:
    """Everything up to the scores: the face tracks, the crops planned on them and each model's raw logits."""

    info: VideoInfo
    frames_read: int
    tracks: list[Track]
    items: list[CropItem]
    logits: dict[str, np.ndarray]  # per model, one raw logit per item of that model, in ``items`` order
    clock: StageClock
    warnings: list[str] = field(default_factory=list)  # what the caller should know about the decode
    evidence_items: list[CropItem] = field(default_factory=list)  # cut for :class:`EvidencePlan`, never scored
    evidence_crops: list[np.ndarray] = field(default_factory=list)


def planned_frames(info: VideoInfo, max_frames: int) -> int:
    """Frames the detection pass will decode: the container's claim up to ``max_frames`` (all of
    ``max_frames`` when the container does not say)."""
    return min(info.frames, max_frames) if info.frames > 0 else max_frames


def check_decoded_frames(info: VideoInfo, decoded: int, max_frames: int, settings: Settings) -> list[str]:
    """Refuse a video too short to score, and say when fewer frames decoded than the container claims.

    A still GIF or a file that breaks after a few frames used to be scored from the 1-25 frames that
    decoded, with no word of it. Below ``DFS_MIN_DECODED_FRAMES`` (or the request's ``max_frames``,
    if smaller) it is a 415 ``too_few_frames``; above, a shortfall beyond the tolerance (container
    counts estimated from duration x fps may be off by a frame or two) becomes a warning.
    """
    claimed = planned_frames(info, max_frames) if info.frames > 0 else 0
    needed = min(settings.min_decoded_frames, max_frames)
    if decoded < needed:
        said = f" of the {claimed} the container claims" if claimed else ""
        raise NotAVideo(
            f"only {decoded} frame(s) decoded{said}; at least {needed} are needed to score a video "
            "(DFS_MIN_DECODED_FRAMES): a still image, or a truncated or damaged file",
            code="too_few_frames",
        )
    if claimed and claimed - decoded > max(2, claimed // 20):
        said = (
            f"of the {claimed} frames the container claims"
            if claimed == info.frames
            else f"of the first {claimed} frames asked for (the container claims {info.frames})"
        )
        return [
            f"only {decoded} {said} could be decoded: the file may be truncated or damaged, and the scores "
            f"rest on those {decoded} frames"
        ]
    return []


def size_warnings(guard: DecodeGuard) -> list[str]:
    """A stream whose frame size changes mid-way is reported with its first size; say so."""
    if len(guard.sizes) < 2:
        return []
    sizes = ", then ".join(f"{w}x{h}" for w, h in guard.sizes[:4])
    return [f"the frame size changes mid-stream ({sizes}); video.width and video.height give the first"]


async def _in_thread(guard: DecodeGuard, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """:func:`asyncio.to_thread` that carries a cancellation into the thread.

    Cancelling the awaiting task does not stop a thread, and a stage left running kept both cores
    busy for minutes after its client had gone. The stages check ``guard`` at every decoded frame,
    so on cancellation we set it, wait for the thread to stop there (a frame, or one detector chunk),
    and re-raise: a cancelled request leaves no work behind, and its admission slot frees only once
    its CPU work has ended.
    """
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        guard.cancel()
        await asyncio.wait([work])
        if not work.cancelled():
            work.exception()  # RequestCancelled (or the stage's own error): moot, the request is gone
        raise


def mirrored(crops: list[np.ndarray]) -> list[np.ndarray]:
    """Each crop flipped left-right: the width axis is the second from last in (S, S, 3) and (T, S, S, 3)."""
    return [np.ascontiguousarray(crop[..., ::-1, :]) for crop in crops]


def mirrored_mean(logits: np.ndarray) -> np.ndarray:
    """The mean logit of each crop and its mirror, from one batch of the crops followed by their mirrors."""
    half = len(logits) // 2
    return (logits[:half] + logits[half:]) / 2


async def video_logits(
    path: Path,
    request_id: str,
    options: AnalysisOptions,
    serving: Serving,
    *,
    progress: Progress | None = None,
    evidence: EvidencePlan | None = None,
) -> VideoLogits:
    """Decode, find and track faces, crop and run the engines: the raw logits before calibration.

    Separate from :func:`analyse_video` so calibration (``python -m export.calibrate``) fits on
    exactly what serving computes. ``evidence`` adds its crops to the crop pass (they are returned
    apart and never scored); ``progress`` is told how the stages advance (see
    :mod:`service.pipeline.evidence`).
    """
    settings = serving.settings
    if serving.detector is None:
        raise DfsFailure("video_logits needs a loaded Serving (Serving.load() creates the face detector)")
    # Seconds of decoding and face finding are not spent on a video whose engines are known to be
    # away: Triton's readiness, as /healthcheck reports it (cached ~1 s).
    if serving.remote is not None and (reason := await serving.health_reason()):
        raise Unavailable(
            f"the inference server is unavailable, the video was not decoded: {reason}",
            code="engine_unavailable",
            retry_after_s=5,
        )
    report = safe_progress(progress)
    clock = StageClock()
    guard = DecodeGuard(max_side=settings.max_video_side, max_pixels=settings.max_decode_pixels)

    started = time.perf_counter()
    info = await _in_thread(
        guard, probe, path, max_side=settings.max_video_side, max_duration_s=settings.max_duration_s
    )
    planned = planned_frames(info, options.max_frames)
    guard.check_plan(info.width, info.height, planned)
    clock.add("decode", time.perf_counter() - started)

    frames = tensor_frame_source(serving.decoder)  # None: the PyAV numpy path
    # The faces' pixels, kept by the detection pass so the crop pass need not decode again (PyAV path).
    kept = KeptFaces(settings.keep_faces_mb * 2**20) if frames is None and settings.keep_faces_mb else None
    tracks, frames_read = await _in_thread(
        guard,
        find_tracks,
        path,
        info,
        serving.detector,
        settings,
        options.max_frames,
        clock,
        frames,
        guard,
        lambda done: report("decode", done, max(planned, done)),
        kept,
    )
    report("decode", frames_read, frames_read)  # done: the plan revised to the frames actually read
    warnings = check_decoded_frames(info, guard.frames, options.max_frames, settings) + size_warnings(guard)
    metrics.FACES_FOUND.observe(len(tracks))

    specs = {name: serving.models[name].spec for name in options.models}
    items: list[CropItem] = plan_crops(tracks, specs, options.sampling)
    extra_items, extra_specs = evidence.plan(tracks) if evidence is not None else ([], {})
    started = time.perf_counter()
    crops = await _in_thread(
        guard,
        extract_crops,
        path,
        items + extra_items,
        {**specs, **extra_specs},
        max_frames=frames_read,
        threads=settings.decode_threads,
        frames=frames,
        guard=guard,
        progress=lambda done, total: report("crops", done, total),
        kept=kept,
    )
    del kept  # the planes are crops now
    crops, extra_crops = crops[: len(items)], crops[len(items) :]
    clock.add("crops", time.perf_counter() - started)

    started = time.perf_counter()
    scored = 0

    async def infer(name: str) -> np.ndarray:
        nonlocal scored
        mine = [
            crop if specs[name].kind == "clip" else crop[0]
            for item, crop in zip(items, crops, strict=True)
            if item.model == name
        ]
        if settings.mirror_faces:
            logits = mirrored_mean(await serving.models[name].batcher.infer(request_id, mine + mirrored(mine)))
        else:
            logits = await serving.models[name].batcher.infer(request_id, mine)
        scored += len(mine)
        report("inference", scored, len(items))
        return logits

    logits_per_model = await asyncio.gather(*[infer(name) for name in options.models])
    clock.add("inference", time.perf_counter() - started)
    return VideoLogits(
        info,
        frames_read,
        tracks,
        items,
        dict(zip(options.models, logits_per_model, strict=True)),
        clock,
        warnings,
        extra_items,
        extra_crops,
    )


async def analyse_video(path: Path, request_id: str, options: AnalysisOptions, serving: Serving) -> VideoResult:
    """Score one local video file; the caller adds the fetch timing and the request id."""
    result = await video_logits(path, request_id, options, serving)
    return _video_result(result, serving, request_id)


async def analyse_video_with_evidence(
    path: Path, request_id: str, options: AnalysisOptions, serving: Serving, progress: Progress | None = None
) -> tuple[VideoResult, Evidence]:
    """:func:`analyse_video`'s result, and the :class:`~service.pipeline.evidence.Evidence` a reviewer
    looks at: per-track thumbnails and heat maps, and the annotated video on demand.

    ``progress(stage, done, total)`` follows the stages (``decode``, ``crops``, ``inference``, and
    ``render`` when the evidence renders); it may be called from worker threads and never raises
    into the pipeline.
    """
    report = safe_progress(progress)
    plan = EvidencePlan.for_models(
        {name: serving.models[name].spec for name in options.models},
        {name: serving.models[name].batcher.engine for name in options.models},
    )
    result = await video_logits(path, request_id, options, serving, progress=report, evidence=plan)
    video = _video_result(result, serving, request_id)
    guard = DecodeGuard(max_side=serving.settings.max_video_side, max_pixels=serving.settings.max_decode_pixels)
    thumbnails, heatmaps, warnings = await _in_thread(guard, plan.build, result.evidence_items, result.evidence_crops)
    video.warnings.extend(warnings)
    evidence = Evidence(
        thumbnails=thumbnails,
        heatmaps=heatmaps,
        tracks=result.tracks,
        track_scores={face.track_id: face.score for face in video.faces},
        info=result.info,
        frames_analyzed=result.frames_read,
        max_side=serving.settings.max_video_side,
        max_pixels=serving.settings.max_decode_pixels,
        decode_threads=serving.settings.decode_threads,
        progress=report,
    )
    return video, evidence


def _video_result(result: VideoLogits, serving: Serving, request_id: str) -> VideoResult:
    """One analysed video's result: scores, timelines, video summary, timings."""
    info = result.info
    summary = VideoSummary(
        width=info.width,
        height=info.height,
        fps=info.fps,
        frames=info.frames,
        duration_s=info.duration_s,
        frames_analyzed=result.frames_read,
    )
    video = build_scores(
        result.tracks, result.items, result.logits, serving, serving.settings, summary, request_id, info
    )
    video.timings_ms = result.clock.rounded()
    video.warnings = list(result.warnings)
    for stage, ms in video.timings_ms.items():
        metrics.STAGE_SECONDS.labels(stage).observe(ms / 1000.0)
    return video


def build_scores(
    tracks: list[Track],
    items: list[CropItem],
    logits: dict[str, np.ndarray],
    serving: Serving,
    settings: Settings,
    summary: VideoSummary,
    request_id: str,
    info: VideoInfo | None = None,
) -> VideoResult:
    """Apply the formula in :mod:`service.pipeline.scores` to every track and model.

    With ``info``, each face also gets its ``timeline`` (:mod:`service.pipeline.timeline`): every
    item's calibrated probability, the same ones its model's track score averages.
    """
    combination = serving.ensemble.combination  # DFS_ENSEMBLE_WEIGHTS, else the repository's ensemble.json
    per_model_items: dict[str, list[CropItem]] = {name: [i for i in items if i.model == name] for name in logits}
    faces = []
    for track in tracks:
        model_scores: dict[str, TrackModelScore] = {}
        spans: dict[str, tuple[list[np.ndarray], list[float]]] = {}
        for name, model_logits in logits.items():
            mine = [
                (item, v)
                for item, v in zip(per_model_items[name], model_logits, strict=True)
                if item.track_id == track.track_id
            ]
            if not mine:
                continue
            result = scores.track_model_score([v for _, v in mine], serving.models[name].version.manifest.calibration)
            model_scores[name] = TrackModelScore(score=round(result.score, 6), items=result.items)
            spans[name] = ([item.frame_indices for item, _ in mine], result.item_scores)
        track_score = combination.combine({n: s.score for n, s in model_scores.items()}) if model_scores else None
        faces.append(
            FaceResult(
                track_id=track.track_id,
                first_frame=track.first_frame,
                last_frame=track.last_frame,
                frames_detected=int(track.detected.sum()),
                box=[round(float(v), 1) for v in track.mean_box],
                score=None if track_score is None else round(track_score, 6),
                models=model_scores,
                timeline=track_timeline(spans, info) if info is not None else [],
            )
        )
    scored = [f for f in faces if f.score is not None]
    df_probability = max((f.score for f in scored), default=None)
    models_out: dict[str, ModelResult] = {}
    for name in logits:
        track_scores = [f.models[name].score for f in scored if name in f.models]
        models_out[name] = ModelResult(
            score=max(track_scores) if track_scores else None,
            kind=serving.models[name].spec.kind,
            items=len(per_model_items[name]),
            version=serving.models[name].version.version,
        )
    if df_probability is None:
        prediction = "NO_FACE"
    else:
        prediction = "FAKE" if df_probability >= settings.threshold else "REAL"
    return VideoResult(
        df_probability=df_probability,
        prediction=prediction,
        threshold=settings.threshold,
        models=models_out,
        faces=faces,
        video=summary,
        request_id=request_id,
    )
