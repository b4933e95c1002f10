"""``POST /predict`` (a URL or allowed local path) and ``POST /predict/upload`` (multipart).

Two routers, so the app can cap their bodies apart: ``router``'s JSON at ``DFS_MAX_JSON_BYTES``,
``upload_router``'s stream at ``DFS_MAX_DOWNLOAD_BYTES`` (service/api/uploads.py). A client that
disconnects has its work cancelled (service/api/disconnect.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from service import metrics
from service.admission import Admission
from service.api.deps import AdmissionDep, ServingDep
from service.api.disconnect import cancel_on_disconnect
from service.api.errors import public_reason
from service.api.limits import check_overrides
from service.api.schemas import ErrorResponse, PredictRequest, PredictResponse
from service.api.uploads import FileUpload
from service.errors import BadRequest, ServiceError, Unavailable
from service.pipeline.analyse import AnalysisOptions, analyse_video, analyse_video_with_evidence
from service.pipeline.fetch import FetchedVideo, fetched_video, refuse_early, staged_upload
from service.pipeline.result import VideoResult
from service.serving import Serving

router = APIRouter(tags=["predict"])
upload_router = APIRouter(tags=["predict"])

# The upload route reads its body itself (streamed, not a FastAPI File parameter), so its form is
# described here for /docs.
_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary", "description": "the video file"}},
                }
            }
        },
    }
}

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 403, 413, 415, 422, 500, 502, 503, 504)
}


_ECHOED_UNKNOWN = 3  # unknown names quoted back in the error, at most
_ECHOED_NAME_CHARS = 40  # and at most this much of each


def unknown_models_detail(unknown: list[str], loaded: list[str]) -> str:
    """The unknown_model error: the loaded models in full, and only a few of the caller's names,
    cut short. A request may name thousands of models (or very long names), and echoing them all
    made the error as large as the request."""
    shown = [
        name if len(name) <= _ECHOED_NAME_CHARS else name[:_ECHOED_NAME_CHARS] + "..."
        for name in unknown[:_ECHOED_UNKNOWN]
    ]
    more = f" and {len(unknown) - len(shown)} more" if len(unknown) > len(shown) else ""
    return f"unknown model(s) {', '.join(repr(name) for name in shown)}{more}; loaded: {', '.join(loaded)}"


#: ``analyse(path, request_id, options, serving) -> VideoResult``: the analysis :func:`score_video` times and completes.
Analyse = Callable[[Path, str, AnalysisOptions, Serving], Awaitable[VideoResult]]


def analysis_options(body: PredictRequest, serving: Serving, max_frames_cap: int | None = None) -> AnalysisOptions:
    """The request's models (unknown names are a 400) and overrides as analysis options.

    ``max_frames_cap`` replaces DFS_MAX_FRAMES as the bound on ``max_frames`` (jobs allow up to
    DFS_JOB_MAX_FRAMES; the default stays DFS_MAX_FRAMES); the caller has checked the override."""
    names = body.models or sorted(serving.models)
    unknown = [name for name in dict.fromkeys(names) if name not in serving.models]  # in the order sent
    if unknown:
        raise BadRequest(unknown_models_detail(unknown, sorted(serving.models)), code="unknown_model")
    options = AnalysisOptions.from_settings(
        serving.settings,
        names,
        max_frames=body.max_frames,
        clip_stride=body.clip_stride,
        max_clips_per_track=body.max_clips_per_track,
        frames_per_track=body.frames_per_track,
    )
    if max_frames_cap is not None and body.max_frames is not None:
        options.max_frames = min(body.max_frames, max_frames_cap)
    return options


async def analyse_with_thumbnails(
    path: Path, request_id: str, options: AnalysisOptions, serving: Serving
) -> VideoResult:
    """:func:`analyse_video` with each face's thumbnail and heat map inlined (``"thumbnails": true``)."""
    result, evidence = await analyse_video_with_evidence(path, request_id, options, serving)
    evidence.inline(result.faces)
    return result


async def _fetch_and_score(
    source: AbstractAsyncContextManager[FetchedVideo],
    options: AnalysisOptions,
    request: Request,
    serving: Serving,
    analyse: Analyse = analyse_video,
) -> VideoResult:
    """Bring the video in (download or upload, timed as "fetch"), score it, always clean up."""
    started = time.perf_counter()
    async with source as video:
        fetch_ms = (time.perf_counter() - started) * 1000.0
        return await score_video(video, options, request.state.request_id, serving, fetch_ms, analyse=analyse)


async def score_video(
    video: FetchedVideo,
    options: AnalysisOptions,
    request_id: str,
    serving: Serving,
    fetch_ms: float,
    *,
    analyse: Analyse = analyse_video,
    timeout_s: float | None = None,
) -> VideoResult:
    """Analyse a fetched video under a time limit and complete what /predict answers (timings,
    untrained-model warnings, verdict metrics). Jobs and the CLI call it too, with their
    own ``analyse`` (progress, evidence) and limit (default DFS_REQUEST_TIMEOUT_S)."""
    limit = timeout_s if timeout_s is not None else serving.settings.request_timeout_s
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit):
            result = await analyse(video.path, request_id, options, serving)
    except TimeoutError as exc:
        raise ServiceError(
            f"analysis did not finish within {limit:g} s",
            code="analysis_timeout",
            status_code=504,
        ) from exc
    result.timings_ms = {"fetch": round(fetch_ms, 1), **result.timings_ms}
    result.timings_ms["total"] = round(fetch_ms + (time.perf_counter() - started) * 1000.0, 1)
    metrics.STAGE_SECONDS.labels("fetch").observe(fetch_ms / 1000.0)
    metrics.STAGE_SECONDS.labels("total").observe(result.timings_ms["total"] / 1000.0)
    result.warnings = [
        *result.warnings,
        *(
            f"model {name} is untrained (random init): its score carries no information"
            for name in options.models
            if serving.models[name].version.manifest.untrained
        ),
    ]
    _count_verdict(result)
    return result


def _count_verdict(result: VideoResult) -> None:
    """dfs_predictions_total by verdict, and the score histogram for videos that have a score."""
    metrics.PREDICTIONS.labels(result.prediction).inc()
    if result.df_probability is not None:
        metrics.VIDEO_SCORE.observe(result.df_probability)


async def _admitted(
    admission: Admission,
    source: AbstractAsyncContextManager[FetchedVideo],
    options: AnalysisOptions,
    request: Request,
    serving: Serving,
    analyse: Analyse = analyse_video,
) -> VideoResult:
    """Wait for a processing slot, then fetch and score."""
    async with admission.slot():
        return await _fetch_and_score(source, options, request, serving, analyse)


async def _admitted_score(
    admission: Admission,
    video: FetchedVideo,
    options: AnalysisOptions,
    request: Request,
    serving: Serving,
    fetch_ms: float,
) -> VideoResult:
    """Wait for a processing slot, then score a video already staged."""
    async with admission.slot():
        return await score_video(video, options, request.state.request_id, serving, fetch_ms)


def require_ready(serving: Serving) -> None:
    """503 not_ready (with Retry-After) until the models are loaded."""
    if not serving.ready:
        raise Unavailable(f"models are not loaded: {public_reason(serving)}", code="not_ready", retry_after_s=10)


@router.post("/predict", response_model=PredictResponse, responses=_ERRORS)
async def predict(
    body: PredictRequest, request: Request, serving: ServingDep, admission: AdmissionDep
) -> PredictResponse:
    """Fetch the video at ``file_path`` and score every face in it."""
    check_overrides(body, serving.settings)  # part of validating the body: answered even before models load
    require_ready(serving)
    options = analysis_options(body, serving)
    refuse_early(body.file_path, serving.settings)  # 403/400 at once, not after waiting for a slot
    source = fetched_video(body.file_path, serving.settings)
    analyse = analyse_with_thumbnails if body.thumbnails else analyse_video
    result = await cancel_on_disconnect(request, _admitted(admission, source, options, request, serving, analyse))
    return PredictResponse.from_result(result)


@upload_router.post("/predict/upload", response_model=PredictResponse, responses=_ERRORS, openapi_extra=_UPLOAD_BODY)
async def predict_upload(request: Request, serving: ServingDep, admission: AdmissionDep) -> PredictResponse:
    """Score an uploaded video (multipart field ``file``) for callers who hold the bytes.

    The file is streamed to its staging file as it arrives and refused at the byte cap; it is staged
    before waiting for a processing slot, so a slow upload does not hold one.
    """
    require_ready(serving)
    options = analysis_options(PredictRequest(file_path="upload"), serving)
    started = time.perf_counter()
    upload = await FileUpload(request, "file", serving.settings.max_download_bytes).open()
    async with staged_upload(upload.chunks(), serving.settings, upload.filename or "upload") as video:
        fetch_ms = (time.perf_counter() - started) * 1000.0
        work = _admitted_score(admission, video, options, request, serving, fetch_ms)
        result = await cancel_on_disconnect(request, work)  # the body is read: now a disconnect can be seen
    return PredictResponse.from_result(result)


def new_request_id(header: str | None) -> str:
    """Honour a caller's X-Request-ID when it is sane, else make one."""
    if header and len(header) <= 64 and header.replace("-", "").replace("_", "").isalnum():
        return header
    return uuid.uuid4().hex
