"""Request and response bodies of the HTTP API (pydantic, so /docs documents them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PredictRequest(BaseModel):
    """Body of ``POST /predict``. Only ``file_path`` is required (the FTCN deploy's contract)."""

    model_config = ConfigDict(extra="forbid")

    file_path: str = Field(..., min_length=1, max_length=4096, description="http(s) URL of the video, or a local path under DFS_LOCAL_ROOTS.")
    models: list[str] | None = Field(None, description="Subset of loaded models to run (default: all).")
    max_frames: int | None = Field(None, ge=1, description="Frames decoded from the start (capped by DFS_MAX_FRAMES).")
    clip_stride: int | None = Field(None, ge=1, le=1024, description="Frames between clip starts for clip models.")
    max_clips_per_track: int | None = Field(None, ge=1, le=256)
    frames_per_track: int | None = Field(None, ge=1, le=256)


class ModelScore(BaseModel):
    model_config = ConfigDict(extra="allow")

    score: float | None
    version: int


class TrackModelScore(BaseModel):
    score: float
    items: int


class FaceTrack(BaseModel):
    track_id: int
    first_frame: int
    last_frame: int
    frames_detected: int
    box: list[float] = Field(..., description="Mean box x1, y1, x2, y2 in frame pixels.")
    score: float | None
    models: dict[str, TrackModelScore]


class VideoSummary(BaseModel):
    width: int
    height: int
    fps: float
    frames: int
    duration_s: float
    frames_analyzed: int


class PredictResponse(BaseModel):
    df_probability: float | None = Field(..., description="P(fake) of the video (its most suspicious face), null when no face.")
    prediction: Literal["REAL", "FAKE", "NO_FACE"]
    threshold: float
    request_id: str
    models: dict[str, ModelScore]
    faces: list[FaceTrack]
    video: VideoSummary
    timings_ms: dict[str, float]
    warnings: list[str] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    error: str = Field(..., description="Machine-readable code, e.g. address_not_allowed, not_a_video.")
    detail: str | list | dict
    request_id: str | None = None


class HealthResponse(BaseModel):
    healthy: bool
    reason: str | None = None


class ModelInfo(BaseModel):
    name: str
    version: int
    runtime: str
    untrained: bool
    spec: dict
    parity: dict | None
    calibration: dict
    metrics: dict
