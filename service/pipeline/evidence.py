"""What a reviewer looks at before trusting a score: per-track thumbnails, heat maps, an annotated video.

:func:`service.pipeline.analyse.analyse_video_with_evidence` returns the usual video result and
an :class:`Evidence`. The evidence crops are cut in the analysis's own crop pass (no extra decode):
per track, a :data:`THUMBNAIL_SIZE` px face from the frame the detector was surest of, and, for
every model whose engine gives a patch map (:mod:`service.pipeline.heatmaps`), that model's own
crop of the same frame. The annotated video is rendered on demand, since it costs a third decode
(:meth:`Evidence.render_annotated`).

``progress(stage, done, total)`` is how a caller (the jobs API) follows a long analysis: stages
``decode`` (frames decoded and searched for faces, of those planned; its last call gives the frames
actually read as both, as a short file or ``detect_every`` may end below the plan), ``crops``
(frames of the crop pass), ``inference`` (items scored, of all items), ``render`` (frames written).
Within a stage ``done`` only grows, and its last call has ``done == total``. It is called from
worker threads and the event loop, must be cheap, and can never break the pipeline: see
:func:`safe_progress`.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from models.spec import IMAGENET_MEAN, IMAGENET_STD, CropRule, ModelSpec
from service.pipeline.crops import CropItem, SamplingOptions, plan_crops
from service.pipeline.decode import DecodeGuard, VideoInfo
from service.pipeline.engines import normalize
from service.pipeline.failures import DfsFailure
from service.pipeline.heatmap_runner import HeatmapRunner, heatmap_runner
from service.pipeline.heatmaps import heatmap_png
from service.pipeline.render import render_annotated
from service.pipeline.result import FaceResult
from service.pipeline.tracks import Track

log = logging.getLogger(__name__)

#: progress(stage, done, total)
Progress = Callable[[str, int, int], None]

THUMBNAIL_SIZE = 112
_JPEG_QUALITY = 85
_THUMBNAIL = "evidence/thumbnail"  # crop-item names of the evidence crops: never scored
_HEATMAP = "evidence/heatmap/"
#: a face with some margin, as a reviewer would frame it (the crop pass only reads size and rule)
THUMBNAIL_SPEC = ModelSpec(
    name=_THUMBNAIL,
    kind="frame",
    input_size=THUMBNAIL_SIZE,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    crop=CropRule(method="box", scale=1.3),
)


def safe_progress(progress: Progress | None) -> Progress:
    """``progress`` made harmless: a callback that raises is logged once and then ignored, so a
    caller's bookkeeping bug never fails or stalls an analysis."""
    if progress is None:
        return lambda stage, done, total: None
    failed = False

    def report(stage: str, done: int, total: int) -> None:
        nonlocal failed
        if failed:
            return
        try:
            progress(stage, done, total)
        except Exception:  # noqa: BLE001 - the caller's callback must never break the pipeline
            failed = True
            log.exception("progress callback failed at %s %d/%d; no further progress is reported", stage, done, total)

    return report


def surest_position(track: Track) -> int:
    """Position in the track of the frame the detector was most confident of (detected frames only)."""
    detected = np.flatnonzero(track.detected)
    if not len(detected):
        return 0
    return int(detected[np.argmax(track.scores[detected])])


def _at(track: Track, position: int) -> Track:
    """The one-frame track at ``position``: planning on it cuts exactly that frame's crop."""
    keep = slice(position, position + 1)
    return replace(
        track,
        frame_indices=track.frame_indices[keep],
        boxes=track.boxes[keep],
        landmarks=track.landmarks[keep],
        scores=track.scores[keep],
        detected=track.detected[keep],
    )


@dataclass
class EvidencePlan:
    """The evidence crops to cut beside the models' own, and which engines give heat maps."""

    runners: dict[str, HeatmapRunner]  # per model with a patch map, in the request's model order
    specs: dict[str, ModelSpec]  # the request's model specs

    @classmethod
    def for_models(cls, specs: dict[str, ModelSpec], engines: dict[str, object]) -> EvidencePlan:
        runners = {
            name: runner
            for name, spec in specs.items()
            if spec.kind == "frame" and (runner := heatmap_runner(engines[name])) is not None
        }  # type: ignore[arg-type]
        return cls(runners, specs)

    def plan(self, tracks: list[Track]) -> tuple[list[CropItem], dict[str, ModelSpec]]:
        """Per track: the thumbnail crop and each heat-map model's crop, at the surest frame."""
        crop_specs = {_THUMBNAIL: THUMBNAIL_SPEC, **{_HEATMAP + n: self.specs[n] for n in self.runners}}
        single = [_at(track, surest_position(track)) for track in tracks]
        return plan_crops(single, crop_specs, SamplingOptions(frames_per_track=1)), crop_specs

    def build(
        self, items: list[CropItem], crops: list[np.ndarray]
    ) -> tuple[dict[int, bytes], dict[int, bytes], list[str]]:
        """Thumbnails (JPEG) and heat maps (PNG, the first model's that has one) per track id, and
        warnings for heat maps that failed (evidence is auxiliary: a failure costs only the map)."""
        thumbnails = {
            item.track_id: jpeg(crop[0]) for item, crop in zip(items, crops, strict=True) if item.model == _THUMBNAIL
        }
        heatmaps: dict[int, bytes] = {}
        warnings: list[str] = []
        for name, runner in self.runners.items():
            mine = [
                (item.track_id, crop[0])
                for item, crop in zip(items, crops, strict=True)
                if item.model == _HEATMAP + name and item.track_id not in heatmaps
            ]
            if not mine:
                continue
            try:
                maps = runner(normalize(self.specs[name], np.stack([crop for _, crop in mine])))
                for (track_id, crop), patch_map in zip(mine, maps, strict=True):
                    heatmaps[track_id] = heatmap_png(crop, patch_map)
            except Exception as exc:  # noqa: BLE001 - see docstring
                log.exception("heat map of model %s failed", name)
                warnings.append(f"no heat map from model {name}: {type(exc).__name__}")
        return thumbnails, heatmaps, warnings


def jpeg(rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise DfsFailure("OpenCV could not encode the thumbnail as JPEG")
    return encoded.tobytes()


@dataclass
class Evidence:
    """One analysis's evidence: ``thumbnails`` (JPEG) and ``heatmaps`` (PNG, may be empty) per
    track id, and what :meth:`render_annotated` needs to draw the tracks again."""

    thumbnails: dict[int, bytes]
    heatmaps: dict[int, bytes]
    tracks: list[Track]
    track_scores: dict[int, float | None]  # the response's face scores
    info: VideoInfo
    frames_analyzed: int
    max_side: int  # the decode bounds of the analysis (DFS_MAX_VIDEO_SIDE, DFS_MAX_DECODE_PIXELS)
    max_pixels: int
    decode_threads: int = 0
    progress: Progress = field(default_factory=lambda: safe_progress(None))

    def inline(self, faces: list[FaceResult]) -> None:
        """Put each face's thumbnail (``thumbnail_jpeg``) and heat map (``heatmap_png``), base64, into
        the result's ``faces`` (in place; a face without one keeps none)."""
        for face in faces:
            if (thumbnail := self.thumbnails.get(face.track_id)) is not None:
                face.thumbnail_jpeg = base64.b64encode(thumbnail).decode("ascii")
            if (heatmap := self.heatmaps.get(face.track_id)) is not None:
                face.heatmap_png = base64.b64encode(heatmap).decode("ascii")

    def render_annotated(self, video_path: Path, out_path: Path) -> int:
        """Write the analysed frames of ``video_path`` with each track's box and score to ``out_path``
        (H.264 MP4); returns the frames written, ``frames_analyzed`` unless the file changed since.
        Blocking (decode + encode): call it in a worker thread."""
        return render_annotated(
            video_path,
            out_path,
            tracks=self.tracks,
            scores=self.track_scores,
            frames=self.frames_analyzed,
            source_width=self.info.width,
            fps=self.info.fps,
            guard=DecodeGuard(max_side=self.max_side, max_pixels=self.max_pixels),
            threads=self.decode_threads,
            progress=lambda done, total: self.progress("render", done, total),
        )
