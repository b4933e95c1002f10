"""What the analysis of one video returns: typed results, not a response body.

The pipeline fills these; the HTTP layer turns them into its response model
(``service.api.schemas.PredictResponse.from_result``), and so do the jobs and the CLI, so the
wire format is decided in one place and the pipeline never builds JSON by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Prediction = Literal["REAL", "FAKE", "NO_FACE"]


@dataclass(frozen=True)
class TrackModelScore:
    """One model's calibrated score of one face track, and how many clips or frames it averages."""

    score: float
    items: int


@dataclass(frozen=True)
class TimelineEntry:
    """One scored clip or frame of a track, placed in time (:mod:`service.pipeline.timeline`)."""

    model: str
    start_s: float
    end_s: float
    score: float  # its calibrated P(fake)


@dataclass
class FaceResult:
    """One face track: where it is, its scores, and (when asked) its evidence images, base64."""

    track_id: int
    first_frame: int
    last_frame: int
    frames_detected: int
    box: list[float]  # mean x1, y1, x2, y2 in frame pixels
    score: float | None  # the ensemble of its model scores
    models: dict[str, TrackModelScore]
    timeline: list[TimelineEntry] = field(default_factory=list)
    thumbnail_jpeg: str | None = None
    heatmap_png: str | None = None


@dataclass(frozen=True)
class ModelResult:
    """One model over the whole video: its most suspicious track's score and the items it scored."""

    score: float | None
    kind: Literal["clip", "frame"]
    items: int  # clips for a clip model, frames for a frame model
    version: int


@dataclass(frozen=True)
class VideoSummary:
    width: int
    height: int
    fps: float
    frames: int
    duration_s: float
    frames_analyzed: int


@dataclass
class VideoResult:
    """The analysis of one video. ``timings_ms`` and ``warnings`` are completed by the caller that
    fetched it (fetch and total time, untrained-model warnings)."""

    df_probability: float | None  # the most suspicious face's score; None without a face
    prediction: Prediction
    threshold: float
    models: dict[str, ModelResult]
    faces: list[FaceResult]
    video: VideoSummary
    request_id: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
