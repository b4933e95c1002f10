"""Request and response bodies of the HTTP API (pydantic, so /docs documents them)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.pipeline.result import ModelResult, VideoResult, VideoSummary  # the summary is served as it is


class PredictRequest(BaseModel):
    """Body of ``POST /predict``. Only ``file_path`` is required (the FTCN deploy's contract)."""

    model_config = ConfigDict(extra="forbid")

    file_path: str = Field(
        ...,
        min_length=1,
        max_length=4096,
        description="http(s) URL of the video, or a local path under DFS_LOCAL_ROOTS.",
    )
    models: list[str] | None = Field(None, description="Subset of loaded models to run (default: all).")
    # Overrides may lower the work freely; raising it past the server's limits is a 422 limit_exceeded
    # (service/api/limits.py).
    max_frames: int | None = Field(None, ge=1, description="Frames decoded from the start (at most DFS_MAX_FRAMES).")
    clip_stride: int | None = Field(
        None, ge=1, le=1024, description="Frames between clip starts for clip models (at least DFS_MIN_CLIP_STRIDE)."
    )
    max_clips_per_track: int | None = Field(None, ge=1, le=256, description="At most DFS_MAX_CLIPS_PER_TRACK_LIMIT.")
    frames_per_track: int | None = Field(None, ge=1, le=256, description="At most DFS_FRAMES_PER_TRACK_LIMIT.")
    thumbnails: bool = Field(
        False,
        description="Inline each face's thumbnail (thumbnail_jpeg) and, where a model gives one, its heat "
        "map (heatmap_png), base64; off by default to keep the body small.",
    )


def _absent(value: object) -> bool:
    return value is None


class ModelScore(BaseModel):
    """One model over the video. A clip model counts ``clips``, a frame model ``frames``; the body
    holds the one that applies (the field the other kind would have is left out, not null)."""

    score: float | None
    clips: int | None = Field(None, exclude_if=_absent, description="Clips scored (clip models such as FTCN).")
    frames: int | None = Field(None, exclude_if=_absent, description="Frames scored (frame models).")
    version: int

    @classmethod
    def from_result(cls, result: ModelResult) -> ModelScore:
        count = "clips" if result.kind == "clip" else "frames"
        return cls(score=result.score, version=result.version, **{count: result.items})


class TrackModelScore(BaseModel):
    score: float
    items: int


class TimelineEntry(BaseModel):
    """One scored clip or frame of a face track (service/pipeline/timeline.py)."""

    model: str
    start_s: float = Field(..., description="Start of the clip, or of the frame, in seconds from the first frame.")
    end_s: float = Field(..., description="Its end (a frame model's entry spans one frame), at most duration_s.")
    score: float = Field(..., description="Its calibrated P(fake): the values the model's track score averages.")


class FaceTrack(BaseModel):
    track_id: int
    first_frame: int
    last_frame: int
    frames_detected: int
    box: list[float] = Field(..., description="Mean box x1, y1, x2, y2 in frame pixels.")
    score: float | None
    models: dict[str, TrackModelScore]
    timeline: list[TimelineEntry] = Field(
        default_factory=list, description="Every scored clip/frame, sorted by start (at most 32 per model)."
    )
    thumbnail_jpeg: str | None = Field(
        None,
        description="Base64 JPEG of the face (112 px, the frame the detector was surest of); only with thumbnails.",
    )
    heatmap_png: str | None = Field(
        None,
        description="Base64 PNG: the face with a patch model's P(fake) map over it (PCL-I2G, when its engine "
        "was exported with --heatmap); only with thumbnails.",
    )


class PredictResponse(BaseModel):
    df_probability: float | None = Field(
        ..., description="P(fake) of the video (its most suspicious face), null when no face."
    )
    prediction: Literal["REAL", "FAKE", "NO_FACE"]
    threshold: float
    request_id: str
    models: dict[str, ModelScore]
    faces: list[FaceTrack]
    video: VideoSummary
    timings_ms: dict[str, float]
    warnings: list[str] = Field(default_factory=list)

    @classmethod
    def from_result(cls, result: VideoResult) -> PredictResponse:
        """The body for one analysed video (what /predict, the jobs and the CLI answer)."""
        return cls(
            df_probability=result.df_probability,
            prediction=result.prediction,
            threshold=result.threshold,
            request_id=result.request_id,
            models={name: ModelScore.from_result(model) for name, model in result.models.items()},
            faces=[FaceTrack.model_validate(asdict(face)) for face in result.faces],
            video=result.video,
            timings_ms=result.timings_ms,
            warnings=result.warnings,
        )


class ErrorResponse(BaseModel):
    error: str = Field(..., description="Machine-readable code, e.g. address_not_allowed, not_a_video.")
    detail: str | list | dict
    request_id: str | None = None


class HealthResponse(BaseModel):
    healthy: bool
    reason: str | None = None


class VariantInfo(BaseModel):
    """One INT8 or bf16 variant of a model as measured: why ``auto`` does or does not serve it."""

    precision: str
    file: str
    runtime: str | None = Field(None, description="The only runtime that serves it (bf16: openvino).")
    auc_fp32: float | None = None
    auc: float | None = Field(None, description="This model's val video AUC in this precision.")
    ensemble_auc_fp32: float | None = None
    ensemble_auc: float | None = Field(
        None,
        description="The ensemble's, with the models of ensemble_with in this precision (null there: every model).",
    )
    ensemble_with: list[str] | None = None
    competes_under_auto: bool = Field(
        ..., description="Both AUCs within 0.01 of fp32: DFS_PRECISION=auto may time and serve it."
    )


class ModelInfo(BaseModel):
    name: str
    version: int
    runtime: str
    untrained: bool
    spec: dict
    parity: dict | None
    calibration: dict
    metrics: dict
    ensemble_weight: float | None = Field(None, description="This model's weight in the ensemble (see GET /ensemble).")
    file: str = Field(
        "",
        description="The file served: the engine (model.onnx / model.plan), or the source "
        "checkpoint with DFS_RUNTIME=torch.",
    )
    sha256: str = Field("", description="SHA-256 of that file, taken when it was loaded: which bytes answer.")
    variants: list[VariantInfo] = Field(
        default_factory=list,
        description="Other precisions of this model the manifest records (python -m export.quantize) and "
        "whether DFS_PRECISION=auto may serve them.",
    )
    service_version: str = Field(
        "", description="Version of the service serving it (also the X-Service-Version header)."
    )


class EnsembleInfo(BaseModel):
    """The ensemble the service applies: ``sigmoid(sum_m w_m * logit(p_m) / sum_m w_m + bias)`` per track."""

    source: Literal["DFS_ENSEMBLE_WEIGHTS", "ensemble.json", "equal"] = Field(
        ..., description="Where the weights come from: the setting, the repository's ensemble.json, or neither."
    )
    path: str | None = Field(None, description="The file read, if any, relative to DFS_MODEL_REPOSITORY.")
    weights: dict[str, float] = Field(..., description="Weight of every loaded model.")
    bias: float = Field(..., description="Added to the weighted mean logit when a track is scored by bias_applies_to.")
    bias_applies_to: list[str] = Field(..., description="The models the bias was fitted for (empty: no bias).")
    warnings: list[str] = Field(default_factory=list, description="How the file differs from what is loaded.")
    fitted: dict | None = Field(None, description="The file's model versions, fit, provenance and metrics.")
