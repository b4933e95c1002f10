"""How far a request's sampling overrides may raise the work: lowering it is free, raising it is
bounded by server-side limits.

``POST /predict`` lets a caller choose ``max_frames``, ``clip_stride``, ``max_clips_per_track`` and
``frames_per_track`` (``bench/sampling.py`` measures settings that way). Unbounded, that is a cost
amplifier: stride 1 with 256 clips and 256 frames per track made one request 5-12x slower than the
default, on a server whose admission control counts requests, not their cost. Each override that
asks for more work than a limit gets a 422 naming the limit and the setting that sets it.

The server's own default is always allowed: an operator who sets a costlier default (the baseline
profile of ``bench/e2e.py`` does) has chosen that cost and need not raise the limit as well.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.api.schemas import PredictRequest
from service.config import Settings
from service.errors import LimitExceeded


@dataclass(frozen=True)
class OverrideLimit:
    """``field`` of the request may not go past ``bound`` (above it, or below it for a stride)."""

    field: str
    bound: int
    setting: str  # the DFS_ variable that sets ``bound``
    minimum: bool = False  # True: a lower bound (smaller strides mean more work)

    def refuses(self, value: int) -> bool:
        return value < self.bound if self.minimum else value > self.bound

    def message(self, value: int) -> str:
        side = "below this server's minimum" if self.minimum else "above this server's limit"
        return (
            f"{self.field}={value} is {side} of {self.bound} ({self.setting}); "
            f"ask for {'at least' if self.minimum else 'at most'} {self.bound} or leave it out"
        )


def _upper(field: str, limit: int, limit_name: str, default: int, default_name: str) -> OverrideLimit:
    return OverrideLimit(field, limit, limit_name) if limit >= default else OverrideLimit(field, default, default_name)


def override_limits(settings: Settings, *, job: bool = False) -> list[OverrideLimit]:
    """The limits in force, each named after the setting that binds (the limit, or the default above it).

    ``job``: the request is a job (``POST /jobs``), whose ``max_frames`` may go up to DFS_JOB_MAX_FRAMES
    (or DFS_MAX_FRAMES, if that is higher): a job holds no connection open while it runs."""
    stride = (
        OverrideLimit("clip_stride", settings.min_clip_stride, "DFS_MIN_CLIP_STRIDE", minimum=True)
        if settings.min_clip_stride <= settings.clip_stride
        else OverrideLimit("clip_stride", settings.clip_stride, "DFS_CLIP_STRIDE", minimum=True)
    )
    return [
        _upper("max_frames", settings.job_max_frames, "DFS_JOB_MAX_FRAMES", settings.max_frames, "DFS_MAX_FRAMES")
        if job
        else OverrideLimit("max_frames", settings.max_frames, "DFS_MAX_FRAMES"),
        stride,
        _upper(
            "max_clips_per_track",
            settings.max_clips_per_track_limit,
            "DFS_MAX_CLIPS_PER_TRACK_LIMIT",
            settings.max_clips_per_track,
            "DFS_MAX_CLIPS_PER_TRACK",
        ),
        _upper(
            "frames_per_track",
            settings.frames_per_track_limit,
            "DFS_FRAMES_PER_TRACK_LIMIT",
            settings.frames_per_track,
            "DFS_FRAMES_PER_TRACK",
        ),
    ]


def check_overrides(body: PredictRequest, settings: Settings, *, job: bool = False) -> None:
    """Raise a 422 ``limit_exceeded`` for the first override past its limit."""
    for limit in override_limits(settings, job=job):
        value = getattr(body, limit.field)
        if value is not None and limit.refuses(value):
            raise LimitExceeded(limit.message(value))
