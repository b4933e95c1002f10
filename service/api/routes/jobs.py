"""The jobs API: ``POST /jobs`` (JSON, /predict's body) and ``POST /jobs/upload`` (multipart field
``file``) answer 202 at once; ``GET /jobs/{id}`` follows the job; ``DELETE /jobs/{id}`` cancels it;
``GET /jobs/{id}/faces/{track}.jpg``, ``/heatmaps/{track}.png`` and ``/annotated.mp4`` serve the
evidence of a finished job from its folder.

Two routers, as for /predict, so the app caps their bodies apart (JSON at ``DFS_MAX_JSON_BYTES``,
the upload streamed at ``DFS_MAX_DOWNLOAD_BYTES``). The work itself is ``service/jobs/runner.py``'s.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse

from service.api.deps import ServingDep
from service.api.limits import check_overrides
from service.api.routes.predict import _ERRORS, _UPLOAD_BODY, require_ready
from service.api.schemas import ErrorResponse, PredictRequest
from service.api.uploads import FileUpload
from service.config import REPLICA_ID
from service.errors import ServiceError
from service.jobs.runner import JobRunner, job_body
from service.jobs.schemas import JobAccepted, JobStatus
from service.jobs.store import DONE, JobRecord
from service.pipeline.fetch import refuse_early

router = APIRouter(tags=["jobs"])
upload_router = APIRouter(tags=["jobs"])

#: ``<replica>-<32 hex>`` (service.jobs.runner.JobRunner.new_job_id), or the bare 32 hex of ids
#: given before job ids named their replica (still in databases that outlived the change)
_JOB_ID = re.compile(rf"(?:(?P<replica>{REPLICA_ID})-)?[0-9a-f]{{32}}")
_JOB_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (404, 410, 421, 422, 503)}
_EVIDENCE_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (404, 409, 410, 421, 422, 503)
}


def get_jobs(request: Request) -> JobRunner:
    return request.app.state.jobs


JobsDep = Annotated[JobRunner, Depends(get_jobs)]


def _not_found(job_id: str) -> ServiceError:
    shown = job_id if len(job_id) <= 100 else job_id[:100] + "..."
    return ServiceError(f"no job {shown!r} on this server", code="job_not_found", status_code=404)


def _elsewhere(job_id: str, replica: str, here: str) -> ServiceError:
    return ServiceError(
        f"job {job_id} was taken by replica {replica!r} and lives in its database; this is replica {here!r}. "
        "Send a job's requests to the replica that took it (session affinity, or one replica for /jobs)",
        code="job_on_another_replica",
        status_code=421,
    )


async def _job(jobs: JobRunner, job_id: str) -> JobRecord:
    """The job, or 404 ``job_not_found`` / 421 ``job_on_another_replica`` / 410 ``job_expired`` with
    the service's error body."""
    shape = _JOB_ID.fullmatch(job_id)
    if not shape:
        raise _not_found(job_id)
    record = await jobs.get(job_id)
    if record is None:
        replica, here = shape.group("replica"), jobs.settings.replica_id
        if replica is not None and replica != here:
            raise _elsewhere(job_id, replica, here)
        raise _not_found(job_id)
    if record.expired(time.time()):
        raise ServiceError(
            f"job {job_id} finished more than DFS_JOB_TTL_S={jobs.settings.job_ttl_s:g} s ago; its "
            "result and files were deleted",
            code="job_expired",
            status_code=410,
        )
    return record


def _accepted(record: JobRecord, request: Request) -> JSONResponse:
    status_url = str(request.url_for("get_job", job_id=record.id))
    return JSONResponse(
        JobAccepted(job_id=record.id, status_url=status_url).model_dump(),
        status_code=202,
        headers={"Location": status_url},
    )


@router.post("/jobs", status_code=202, response_model=JobAccepted, responses=_ERRORS)
async def create_job(body: PredictRequest, request: Request, serving: ServingDep, jobs: JobsDep) -> JSONResponse:
    """Queue the analysis of the video at ``file_path`` (the body of ``POST /predict``); answers at once.

    ``max_frames`` may go up to DFS_JOB_MAX_FRAMES (default: DFS_MAX_FRAMES). A full queue
    (DFS_JOBS_MAX_QUEUED) is a 503 with Retry-After; errors of the video itself (fetch, decode) end
    the job ``failed`` with the error /predict would have answered."""
    check_overrides(body, serving.settings, job=True)
    require_ready(serving)
    refuse_early(body.file_path, serving.settings)  # a source refused without the network: no job at all
    return _accepted(await jobs.submit_url(body, request.state.request_id), request)


@upload_router.post(
    "/jobs/upload", status_code=202, response_model=JobAccepted, responses=_ERRORS, openapi_extra=_UPLOAD_BODY
)
async def create_upload_job(request: Request, serving: ServingDep, jobs: JobsDep) -> JSONResponse:
    """Queue the analysis of an uploaded video (multipart field ``file``), staged in the job's folder
    until it has been analysed (so it survives a restart)."""
    require_ready(serving)
    upload = await FileUpload(request, "file", serving.settings.max_download_bytes).open()
    record = await jobs.submit_upload(upload.chunks(), upload.filename or "upload", request.state.request_id)
    return _accepted(record, request)


@router.get("/jobs/{job_id}", response_model=JobStatus, responses=_JOB_ERRORS)
async def get_job(job_id: str, jobs: JobsDep) -> JSONResponse:
    """The job's status and progress; its result when done, its error body when failed."""
    return JSONResponse(job_body(await _job(jobs, job_id)))


@router.delete(
    "/jobs/{job_id}",
    response_model=JobStatus,
    responses={
        **_JOB_ERRORS,
        202: {"model": JobStatus, "description": "still stopping"},
        409: {"model": ErrorResponse},
    },
)
async def cancel_job(job_id: str, jobs: JobsDep) -> JSONResponse:
    """Cancel a queued or running job (a running one's work stops as for a client gone from /predict).

    200 with the job once cancelled; 202 while a job running in another worker process is still
    stopping; 409 ``job_finished`` for a job already done, failed or cancelled."""
    record = await _job(jobs, job_id)
    if record.finished_at is not None:
        raise ServiceError(f"job {job_id} is already {record.status}", code="job_finished", status_code=409)
    record = await jobs.cancel(job_id)
    if record is None:
        raise _not_found(job_id)
    return JSONResponse(job_body(record), status_code=202 if record.finished_at is None else 200)


async def _evidence(jobs: JobsDep, job_id: str, relative: str, media_type: str) -> FileResponse:
    record = await _job(jobs, job_id)
    if record.status != DONE:
        raise ServiceError(
            f"job {job_id} is {record.status}; its evidence is served once it is done",
            code="job_not_done",
            status_code=409,
        )
    path: Path = jobs.store.folder(job_id) / relative
    if not path.is_file():
        raise ServiceError(f"job {job_id} has no {relative}", code="evidence_not_found", status_code=404)
    return FileResponse(path, media_type=media_type)


@router.get("/jobs/{job_id}/faces/{track_id}.jpg", response_class=FileResponse, responses=_EVIDENCE_ERRORS)
async def job_face(job_id: str, track_id: int, jobs: JobsDep) -> FileResponse:
    """The face thumbnail (JPEG) of a track: the frame its detector was surest of."""
    return await _evidence(jobs, job_id, f"faces/{track_id}.jpg", "image/jpeg")


@router.get("/jobs/{job_id}/heatmaps/{track_id}.png", response_class=FileResponse, responses=_EVIDENCE_ERRORS)
async def job_heatmap(job_id: str, track_id: int, jobs: JobsDep) -> FileResponse:
    """A track's heat map (PNG), when a model of the job gives one."""
    return await _evidence(jobs, job_id, f"heatmaps/{track_id}.png", "image/png")


@router.get("/jobs/{job_id}/annotated.mp4", response_class=FileResponse, responses=_EVIDENCE_ERRORS)
async def job_annotated(job_id: str, jobs: JobsDep) -> FileResponse:
    """The analysed frames with each face track's box, coloured by its score (H.264 MP4)."""
    return await _evidence(jobs, job_id, "annotated.mp4", "video/mp4")
