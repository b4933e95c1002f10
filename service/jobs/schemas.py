"""Bodies of the jobs API, for /docs. Routes return plain JSON so ``result`` is exactly /predict's body."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class JobAccepted(BaseModel):
    job_id: str
    status: Literal["queued"] = "queued"
    status_url: str = Field(..., description="GET it for the job's status, progress and result.")


class JobProgress(BaseModel):
    stage: str = Field(
        ...,
        description="queued, waiting (for a processing slot), fetch, decode, crops, inference, "
        "render (the annotated video), then the final status.",
    )
    done: int
    total: int
    fraction: float | None = Field(..., description="Share of the current stage done (null when its total is unknown).")


class JobError(BaseModel):
    error: str = Field(..., description="The code /predict would have answered, e.g. not_a_video.")
    detail: str | list | dict
    request_id: str | None = None
    status_code: int = Field(..., description="The HTTP status /predict would have answered.")


class JobEvidence(BaseModel):
    faces: dict[str, str] = Field(..., description="Per track id, the face thumbnail's URL (JPEG).")
    heatmaps: dict[str, str] = Field(..., description="Per track id, the heat map's URL (PNG); may be empty.")
    annotated: str | None = Field(..., description="The annotated video's URL (H.264 MP4); null without faces.")
    annotated_frames: int | None


class JobStatus(BaseModel):
    job_id: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: JobProgress
    created_at: str
    updated_at: str
    finished_at: str | None = None
    expires_at: str | None = Field(
        None, description="When a finished job's result and files are deleted (DFS_JOB_TTL_S)."
    )
    cancel_requested: bool | None = None
    result: dict | None = Field(None, description="When done: the body POST /predict answers (PredictResponse).")
    evidence: JobEvidence | None = None
    error: JobError | None = Field(None, description="When failed: the error body /predict would have answered.")
