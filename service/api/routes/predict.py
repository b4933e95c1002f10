"""``POST /predict`` (a URL or allowed local path) and ``POST /predict/upload`` (multipart)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import APIRouter, File, Request, UploadFile

from service import metrics
from service.api.deps import AdmissionDep, RuntimeDep
from service.api.schemas import ErrorResponse, PredictRequest, PredictResponse
from service.errors import BadRequest, ServiceError, Unavailable
from service.pipeline.analyse import AnalysisOptions, analyse_video
from service.pipeline.fetch import FetchedVideo, fetched_video, staged_upload
from service.runtime import Runtime

router = APIRouter(tags=["predict"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse}
    for code in (400, 403, 413, 415, 422, 500, 502, 503, 504)
}


def _options(body: PredictRequest, runtime: Runtime) -> AnalysisOptions:
    names = body.models or sorted(runtime.models)
    unknown = sorted(set(names) - set(runtime.models))
    if unknown:
        raise BadRequest(
            f"unknown model(s) {', '.join(unknown)}; loaded: {', '.join(sorted(runtime.models))}", code="unknown_model"
        )
    return AnalysisOptions.from_settings(
        runtime.settings, names, max_frames=body.max_frames, clip_stride=body.clip_stride,
        max_clips_per_track=body.max_clips_per_track, frames_per_track=body.frames_per_track,
    )


async def _fetch_and_score(
    source: AbstractAsyncContextManager[FetchedVideo], options: AnalysisOptions, request: Request, runtime: Runtime
) -> dict:
    """Bring the video in (download or upload, timed as "fetch"), score it, always clean up."""
    started = time.perf_counter()
    async with source as video:
        fetch_ms = (time.perf_counter() - started) * 1000.0
        return await _score(video, options, request, runtime, fetch_ms)


async def _score(video: FetchedVideo, options: AnalysisOptions, request: Request, runtime: Runtime, fetch_ms: float) -> dict:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(runtime.settings.request_timeout_s):
            body = await analyse_video(video.path, request.state.request_id, options, runtime)
    except TimeoutError as exc:
        raise ServiceError(
            f"analysis did not finish within {runtime.settings.request_timeout_s:g} s",
            code="analysis_timeout",
            status_code=504,
        ) from exc
    body["timings_ms"] = {"fetch": round(fetch_ms, 1), **body["timings_ms"]}
    body["timings_ms"]["total"] = round(fetch_ms + (time.perf_counter() - started) * 1000.0, 1)
    metrics.STAGE_SECONDS.labels("fetch").observe(fetch_ms / 1000.0)
    metrics.STAGE_SECONDS.labels("total").observe(body["timings_ms"]["total"] / 1000.0)
    body["request_id"] = request.state.request_id
    body["warnings"] = [
        f"model {name} is untrained (random init): its score carries no information"
        for name in options.models
        if runtime.models[name].version.manifest.untrained
    ]
    return body


def _require_ready(runtime: Runtime) -> None:
    if not runtime.ready:
        raise Unavailable(f"models are not loaded: {runtime.reason}", code="not_ready", headers={"Retry-After": "10"})


@router.post("/predict", response_model=PredictResponse, responses=_ERRORS)
async def predict(body: PredictRequest, request: Request, runtime: RuntimeDep, admission: AdmissionDep) -> dict:
    """Fetch the video at ``file_path`` and score every face in it."""
    _require_ready(runtime)
    options = _options(body, runtime)
    async with admission.slot():
        return await _fetch_and_score(fetched_video(body.file_path, runtime.settings), options, request, runtime)


@router.post("/predict/upload", response_model=PredictResponse, responses=_ERRORS)
async def predict_upload(
    request: Request, runtime: RuntimeDep, admission: AdmissionDep, file: UploadFile = File(...)
) -> dict:
    """Score an uploaded video (multipart field ``file``) for callers who hold the bytes."""
    _require_ready(runtime)
    options = _options(PredictRequest(file_path="upload"), runtime)

    async def chunks() -> AsyncIterator[bytes]:
        while chunk := await file.read(1 << 20):
            yield chunk

    async with admission.slot():
        source = staged_upload(chunks(), runtime.settings, file.filename or "upload")
        return await _fetch_and_score(source, options, request, runtime)


def new_request_id(header: str | None) -> str:
    """Honour a caller's X-Request-ID when it is sane, else make one."""
    if header and len(header) <= 64 and header.replace("-", "").replace("_", "").isalnum():
        return header
    return uuid.uuid4().hex
