"""Labelled videos through the serving pipeline in this process, and their scores as the service makes them.

``export.calibrate`` (fits calibrations and the ensemble) and ``bench/quality.py`` (reports them)
both need, per video and per model, exactly what ``POST /predict`` computes. Rather than a
second pipeline, both run :func:`collect`: a :class:`~service.serving.Serving` with the ``DFS_*``
settings, then :func:`~service.pipeline.analyse.video_logits` (decode, faces, tracks, sampling,
crops, the exported engines) per video. :func:`served_scores` then applies step 1-2 of the score
formula (``service/pipeline/scores.py``) per track, and :class:`VideoScores` steps 3-4, so a
fitted or reported number is the number a client would be served.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from export.errors import ExportError
from export.manifest import Calibration
from service.config import Settings
from service.ensemble import ServedEnsemble
from service.errors import RequestFailure
from service.model_repository import ModelVersion
from service.pipeline.analyse import AnalysisOptions, video_logits
from service.pipeline.scores import EnsembleWeights, track_model_score
from service.serving import Serving
from training.evaluate import Predictions
from training.sources import Source, from_label_list

log = logging.getLogger("export.served")


class ServedRunError(ExportError):
    """The labelled videos or the models cannot be used; the tools' ``main`` prints it and exits 2."""


def exits_on_served_error(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a tool's ``main``: a :class:`ServedRunError` becomes its message on stderr and status 2
    (argparse's for bad arguments), without a traceback; the library functions only raise."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> int:
        try:
            return main(*args, **kwargs)
        except ServedRunError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    return wrapped


def labelled(labels: Path, split: str | None) -> list[Source]:
    """The rows of a label-list CSV (of one split); a missing or malformed file is a ServedRunError saying why."""
    try:
        listed = from_label_list(labels)
    except (OSError, ValueError) as exc:  # missing file, bad row: say which, without a traceback
        raise ServedRunError(f"--labels {labels}: {exc}") from exc
    sources = [s for s in listed if split is None or s.split == split]
    if not sources:
        raise ServedRunError(f"no videos{f' in split {split!r}' if split else ''} in {labels}")
    return sources


async def served_logits(
    serving: Serving, sources: list[Source], left_out: dict[str, str] | None = None
) -> dict[str, Predictions]:
    """Raw logits per model of every face-track item of every video, as the service computes them.

    Videos the service refuses or finds no face in are logged and, when ``left_out`` is given,
    recorded there with the reason (a report must say what it could not score).
    """
    options = AnalysisOptions.from_settings(serving.settings, sorted(serving.models))
    out = {name: Predictions([], [], [], []) for name in options.models}
    left_out = {} if left_out is None else left_out
    for source in tqdm(sources, desc="videos", unit="video"):
        try:
            result = await video_logits(source.path, "calibrate", options, serving)
        except RequestFailure as exc:  # a file the service refuses is reported and left out, as it would be served
            log.warning("%s: %s (%s); left out", source.path, exc.code, exc)
            left_out[str(source.path)] = f"{exc.code}: {exc}"
            continue
        if not result.tracks:
            log.warning("%s: no face found; left out", source.path)
            left_out[str(source.path)] = "no face found"
        for name, logits in result.logits.items():
            mine = [item for item in result.items if item.model == name]
            pred = out[name]
            for item, value in zip(mine, logits, strict=True):
                pred.logits.append(float(value))
                pred.labels.append(source.label)
                pred.videos.append(str(source.path))
                pred.tracks.append(str(item.track_id))
    return out


@dataclass
class ServedRun:
    """What one pass of the serving pipeline over labelled videos produced."""

    predictions: dict[str, Predictions]  # per model: raw item logits with video, track and label
    versions: dict[str, ModelVersion]  # the loaded version of each model
    ensemble: ServedEnsemble  # the combination the service applies with these settings
    left_out: dict[str, str] = field(default_factory=dict)  # video -> why it was not scored
    runtimes: dict[str, str] = field(default_factory=dict)  # model -> the engine that served it (e.g. ...:int8)


def analysis_settings(settings: Settings) -> dict[str, Any]:
    """The settings that decide which faces, frames and clips a served run scored: what a calibration
    or a quality report records beside its numbers, so a reader can rerun it the same way."""
    return {
        "max_frames": settings.max_frames,
        "clip_stride": settings.clip_stride,
        "max_clips_per_track": settings.max_clips_per_track,
        "frames_per_track": settings.frames_per_track,
        "face_detector": settings.face_detector,
        "blazeface_runtime": settings.blazeface_runtime,
        "detect_every": settings.detect_every,
        "mirror_faces": settings.mirror_faces,
    }


def collect(settings: Settings, sources: list[Source]) -> ServedRun:
    """Load the repository as the service does and run every video through the pipeline."""

    async def run() -> ServedRun:
        serving = Serving(settings)
        await serving.load()
        if not serving.ready:
            raise ServedRunError(f"the models could not be loaded: {serving.reason}")
        try:
            left_out: dict[str, str] = {}
            predictions = await served_logits(serving, sources, left_out)
            versions = {name: model.version for name, model in serving.models.items()}
            runtimes = {name: model.runtime for name, model in serving.models.items()}
            return ServedRun(predictions, versions, serving.ensemble, left_out, runtimes)
        finally:
            await serving.close()

    return asyncio.run(run())


@dataclass
class VideoScores:
    """Per video: its label and, per face track, each model's calibrated track score (steps 1-2)."""

    labels: dict[str, int]
    tracks: dict[str, dict[str, dict[str, float]]]  # video -> track -> model -> P(fake)

    def model(self, name: str) -> dict[str, float]:
        """Step 4 for one model: its maximum over the video's tracks (videos it scored, sorted)."""
        out = {}
        for video in sorted(self.tracks):
            scored = [models[name] for models in self.tracks[video].values() if name in models]
            if scored:
                out[video] = max(scored)
        return out

    def ensemble(self, combination: EnsembleWeights) -> dict[str, float]:
        """Steps 3-4: each track's ensemble score, the maximum over the video's tracks (sorted)."""
        return {
            video: max(combination.combine(models) for models in tracks.values())
            for video, tracks in sorted(self.tracks.items())
            if tracks
        }

    @property
    def models(self) -> list[str]:
        return sorted({name for tracks in self.tracks.values() for models in tracks.values() for name in models})


def served_scores(predictions: Mapping[str, Predictions], calibrations: Mapping[str, Calibration]) -> VideoScores:
    """Each model's calibrated score per face track (``scores.track_model_score``, as ``build_scores``)."""
    items: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    labels: dict[str, int] = {}
    for name, pred in predictions.items():
        if name not in calibrations:
            continue
        for video, track, label, value in zip(pred.videos, pred.tracks, pred.labels, pred.logits, strict=True):
            items[(video, track, name)].append(value)
            labels[video] = label
    tracks: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for (video, track, name), logits in items.items():
        tracks[video].setdefault(track, {})[name] = track_model_score(logits, calibrations[name]).score
    return VideoScores(dict(sorted(labels.items())), dict(tracks))
