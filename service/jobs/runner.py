"""Run stored jobs in the background, through the same admission slots, batchers and limits as /predict.

``DFS_JOBS_CONCURRENCY`` workers each claim the oldest queued job, wait for an admission slot (the one
/predict's requests wait for), fetch its video (a URL, or the upload staged in the job's folder),
analyse it with evidence (``analyse_video_with_evidence``), write the thumbnails, heat maps and the
annotated video to the job's folder while the input is still there, then store the result, or the
error body /predict would have answered. A flusher writes the latest progress a few times a second
(it doubles as the job's heartbeat) and watches for a cancel asked through any process.

Cancelling a running job cancels its task, which the pipeline carries into its worker threads and
batchers exactly as for a client that disconnects from /predict (the DecodeGuard's flag, dropped
batch items); the job ends ``cancelled`` once that work has stopped.

Restarts: a job left ``running`` by a process that is gone (killed, crashed) is re-queued when its
input can still be had (a URL, or its staged upload is still on disk), else failed with
``job_interrupted``; a graceful shutdown re-queues its running jobs itself. Each case is logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from service.admission import Admission
from service.api.limits import check_overrides
from service.api.routes.predict import analysis_options, score_video
from service.api.schemas import PredictRequest, PredictResponse
from service.config import Settings
from service.errors import RequestFailure, ServiceError, Unavailable, http_status
from service.jobs.progress import Progress, ProgressTracker
from service.jobs.store import CANCELLED, DONE, FAILED, QUEUED, RUNNING, JobRecord, JobStore, QueueFull
from service.pipeline.analyse import AnalysisOptions, analyse_video_with_evidence
from service.pipeline.evidence import Evidence
from service.pipeline.fetch import FetchedVideo, fetched_video, write_upload
from service.pipeline.result import VideoResult
from service.serving import Serving

log = logging.getLogger(__name__)

T = TypeVar("T")

URL, UPLOAD = "url", "upload"
INPUT_NAME = "input"  # a staged upload, in the job's folder
FLUSH_S = 0.25  # progress reaches the database at most this often ...
HEARTBEAT_S = 2.0  # ... and at least this often while the job runs
STALE_S = 30.0  # a running job without a heartbeat for this long belongs to a process that is gone
_IDLE_POLL_S = 1.0  # how often an idle worker looks for jobs queued by another process
_SLOT_RETRY_S = 1.0  # the admission line is full (of /predict requests): try again after this


def error_body(exc: BaseException, request_id: str) -> dict[str, Any]:
    """The body /predict's error handlers would have answered, and the status they would have sent."""
    if isinstance(exc, RequestFailure):
        return {"error": exc.code, "detail": exc.detail, "request_id": request_id, "status_code": http_status(exc)}
    return {
        "error": "internal",
        "detail": f"internal error ({type(exc).__name__}); see the service log",
        "request_id": request_id,
        "status_code": 500,
    }


def predict_body(result: VideoResult) -> dict[str, Any]:
    """The body exactly as /predict answers it (its response model, as JSON), to store or print."""
    return PredictResponse.from_result(result).model_dump(mode="json")


def queue_full(settings: Settings) -> Unavailable:
    return Unavailable(
        f"{settings.jobs_max_queued} jobs are already waiting (DFS_JOBS_MAX_QUEUED); retry later",
        code="queue_full",
        retry_after_s=10,
    )


async def _uncancellable(fn: Any, /, *args: Any) -> Any:
    """Run blocking ``fn`` in a thread; a cancellation waits for it to end before it propagates,
    so a cancelled job leaves no thread writing into its folder."""
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        raise


def write_evidence(folder: Path, evidence: Evidence, video: Path) -> dict[str, Any]:
    """Thumbnails, heat maps and the annotated video into ``folder``; returns what was written.
    Blocking (the render decodes and encodes the video again)."""
    written: dict[str, Any] = {"faces": [], "heatmaps": [], "annotated_frames": None}
    for kind, images, suffix in (("faces", evidence.thumbnails, "jpg"), ("heatmaps", evidence.heatmaps, "png")):
        if images:
            (folder / kind).mkdir(parents=True, exist_ok=True)
        for track_id, data in sorted(images.items()):
            (folder / kind / f"{int(track_id)}.{suffix}").write_bytes(data)
            written[kind].append(int(track_id))
    if evidence.tracks:  # nothing to draw on a video without faces
        target = folder / "annotated.mp4"
        partial = target.with_suffix(".part.mp4")
        written["annotated_frames"] = evidence.render_annotated(video, partial)
        partial.replace(target)  # whole or absent: never a half-written file served
    return written


class JobRunner:
    """Submits, runs, cancels and expires jobs; one per app process."""

    def __init__(self, settings: Settings, serving: Serving, admission: Admission) -> None:
        self.settings = settings
        self.serving = serving
        self.admission = admission
        self.store = JobStore(settings.jobs_db_path)
        self.owner = f"{os.getpid()}:{uuid.uuid4().hex[:12]}"  # unique even when a restart reuses the pid
        self.ready = False
        self.reason = "the jobs store is not open yet"
        self._wake = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}  # running jobs of this process
        self._background: list[asyncio.Task[None]] = []
        self._stopping = False

    # ---- lifetime --------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store, recover jobs left running, start the workers and the expiry sweep.
        A store that cannot open (a read-only folder) disables jobs, logged; /predict is unaffected."""
        try:
            await asyncio.to_thread(self.store.open)
        except Exception as exc:  # noqa: BLE001 - jobs are optional: the rest of the service still serves
            self.reason = f"the jobs database cannot be opened: {type(exc).__name__}: {exc}"
            log.error("jobs disabled: %s (DFS_JOBS_DB, DFS_DATA_DIR)", self.reason)
            return
        self.ready, self.reason = True, ""
        log.info("jobs: database %s, files under %s", self.store.db_path, self.store.jobs_dir)
        await self._recover(at_start=True)
        self._background = [
            asyncio.create_task(self._worker(), name=f"job-worker-{i}") for i in range(self.settings.jobs_concurrency)
        ]
        self._background.append(asyncio.create_task(self._sweep(), name="job-sweep"))

    async def stop(self) -> None:
        """Stop the workers; running jobs go back in the queue (they run again on the next start)."""
        self._stopping = True
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.ready:
            await asyncio.to_thread(self.store.close)
        self.ready = False

    # ---- requests --------------------------------------------------------------------------
    def _require(self) -> None:
        if not self.ready:
            raise Unavailable(f"jobs are unavailable: {self.reason}", code="jobs_unavailable", retry_after_s=30)

    def validate(self, body: PredictRequest) -> AnalysisOptions:
        """What /predict checks before it starts (limits with the jobs' frame cap, models)."""
        check_overrides(body, self.settings, job=True)
        cap = max(self.settings.job_max_frames, self.settings.max_frames)
        return analysis_options(body, self.serving, max_frames_cap=cap)

    def new_job_id(self) -> str:
        """``<replica>-<32 hex>``: unique, and it names the replica whose database holds the job."""
        return f"{self.settings.replica_id}-{uuid.uuid4().hex}"

    async def submit_url(self, body: PredictRequest, request_id: str) -> JobRecord:
        self._require()
        self.validate(body)
        return await self._create(self.new_job_id(), URL, body.model_dump(exclude_none=True), request_id)

    async def submit_upload(self, chunks: AsyncIterator[bytes], filename: str, request_id: str) -> JobRecord:
        """Stage the upload in a new job's folder, then queue the job (refused before reading a byte
        when the queue is already full)."""
        self._require()
        body = PredictRequest(file_path="upload")
        self.validate(body)
        if await asyncio.to_thread(self.store.queued_count) >= self.settings.jobs_max_queued:
            raise queue_full(self.settings)
        job_id = self.new_job_id()
        folder = self.store.folder(job_id)
        folder.mkdir(parents=True)
        try:
            await write_upload(chunks, folder / INPUT_NAME, self.settings, filename)
            request = {**body.model_dump(exclude_none=True), "filename": filename}
            return await self._create(job_id, UPLOAD, request, request_id)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    async def _create(self, job_id: str, kind: str, request: dict[str, Any], request_id: str) -> JobRecord:
        try:
            record = await asyncio.to_thread(
                self.store.create, job_id, kind, request, request_id, self.settings.jobs_max_queued
            )
        except QueueFull:
            raise queue_full(self.settings) from None
        log.info("job %s queued (%s, request %s)", job_id, kind, request_id)
        self._wake.set()
        return record

    async def get(self, job_id: str) -> JobRecord | None:
        self._require()
        return await asyncio.to_thread(self.store.get, job_id)

    async def cancel(self, job_id: str, wait_s: float = 30.0) -> JobRecord | None:
        """Cancel a queued job, or a running one's work (waiting up to ``wait_s`` for it to stop when
        it runs in this process). Returns the job as it then stands."""
        self._require()
        record = await asyncio.to_thread(self.store.request_cancel, job_id, self.settings.job_ttl_s)
        if record is None:
            return None
        if record.status == CANCELLED and record.kind == UPLOAD:
            await asyncio.to_thread(self._drop_input, job_id)
        task = self._tasks.get(job_id)
        if record.status == RUNNING and task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=wait_s)
            record = await asyncio.to_thread(self.store.get, job_id)
        return record

    # ---- running ---------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            job = None
            if self.serving.ready:
                job = await asyncio.to_thread(self.store.claim_next, self.owner)
            if job is None:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), _IDLE_POLL_S)
                except TimeoutError:
                    pass
                continue
            task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
            self._tasks[job.id] = task
            try:
                await asyncio.wait([task])  # a cancel of the job's task is not a cancel of the worker
            except asyncio.CancelledError:  # shutdown: take the job with it (it is re-queued)
                task.cancel()
                await asyncio.wait([task])
                raise
            finally:
                self._tasks.pop(job.id, None)

    async def _run(self, job: JobRecord) -> None:
        tracker = ProgressTracker("waiting")
        flusher = asyncio.create_task(self._flush(job.id, tracker, asyncio.current_task()))
        ttl = self.settings.job_ttl_s
        try:
            async with self._slot():
                result, evidence = await self._analyse(job, tracker)
        except asyncio.CancelledError:
            flusher.cancel()
            if self._stopping:
                await asyncio.to_thread(self.store.requeue, job.id)
                log.info("job %s: interrupted by the shutdown; re-queued", job.id)
                raise
            await asyncio.to_thread(self.store.finish, job.id, CANCELLED, ttl, progress=tracker.snapshot()[1])
            log.info("job %s: cancelled; its work was stopped", job.id)
        except Exception as exc:  # noqa: BLE001 - any failure is the job's result, never the worker's end
            flusher.cancel()
            error = error_body(exc, job.request_id)
            if isinstance(exc, RequestFailure):
                log.info("job %s failed: %s %s: %s", job.id, http_status(exc), exc.code, exc.detail)
            else:
                log.exception("job %s: unexpected error", job.id)
            await asyncio.to_thread(self.store.finish, job.id, FAILED, ttl, error=error, progress=tracker.snapshot()[1])
        else:
            flusher.cancel()
            await asyncio.to_thread(self.store.finish, job.id, DONE, ttl, result=result, evidence=evidence)
            log.info("job %s done: %s", job.id, result["prediction"])
        finally:
            await asyncio.gather(flusher, return_exceptions=True)
            if not self._stopping or job.kind != UPLOAD:
                await asyncio.to_thread(self._drop_input, job.id)

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """An admission slot, as /predict's requests get one; while their waiting line is full, a job
        waits its turn rather than failing (it has no caller to answer 503 to)."""
        while True:
            try:
                slot = self.admission.slot()
                await slot.__aenter__()
            except Unavailable:
                await asyncio.sleep(_SLOT_RETRY_S)
                continue
            break
        try:
            yield
        except BaseException as exc:
            if not await slot.__aexit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            await slot.__aexit__(None, None, None)

    def _source(self, job: JobRecord) -> AbstractAsyncContextManager[FetchedVideo]:
        if job.kind == URL:
            return fetched_video(job.request["file_path"], self.settings)
        return self._staged(job)

    @asynccontextmanager
    async def _staged(self, job: JobRecord) -> AsyncIterator[FetchedVideo]:
        path = self.store.folder(job.id) / INPUT_NAME
        if not path.is_file():
            raise ServiceError(
                "the job's uploaded video is no longer on the server; upload it again",
                code="job_input_lost",
                status_code=410,
            )
        yield FetchedVideo(path=path, size_bytes=path.stat().st_size, source=job.request.get("filename", "upload"))

    async def _analyse(self, job: JobRecord, tracker: ProgressTracker) -> tuple[dict, dict]:
        """Fetch, analyse with evidence, write the evidence while the input is still there."""
        body = PredictRequest(**{k: v for k, v in job.request.items() if k != "filename"})
        options = self.validate(body)  # models may have changed since it was queued
        found: list[Evidence] = []

        async def analyse(path: Path, request_id: str, options: AnalysisOptions, serving: Serving) -> VideoResult:
            result, evidence = await analyse_video_with_evidence(path, request_id, options, serving, progress=tracker)
            if body.thumbnails:  # as /predict inlines them when asked
                evidence.inline(result.faces)
            found.append(evidence)
            return result

        tracker("fetch", 0, 1)
        started = time.perf_counter()
        async with self._source(job) as video:
            fetch_ms = (time.perf_counter() - started) * 1000.0
            tracker("fetch", 1, 1)
            scored = await score_video(
                video,
                options,
                job.request_id,
                self.serving,
                fetch_ms,
                analyse=analyse,
                timeout_s=self.settings.job_timeout_s,
            )
            result = predict_body(scored)
            written = await _uncancellable(write_evidence, self.store.folder(job.id), found[0], video.path)
        return result, written

    async def _flush(self, job_id: str, tracker: ProgressTracker, task: asyncio.Task | None) -> None:
        """Write the latest progress when it changed (at most every FLUSH_S, at least every
        HEARTBEAT_S as a heartbeat); cancel the job's task when a cancel was asked in the database."""
        seen, last_write = -1, 0.0
        while True:
            version, progress = tracker.snapshot()
            now = time.monotonic()
            if version != seen or now - last_write >= HEARTBEAT_S:
                seen, last_write = version, now
                if await asyncio.to_thread(self.store.set_progress, job_id, progress) and task is not None:
                    log.info("job %s: cancel asked; stopping its work", job_id)
                    task.cancel()
                    return
            await asyncio.sleep(FLUSH_S)

    def _drop_input(self, job_id: str) -> None:
        (self.store.folder(job_id) / INPUT_NAME).unlink(missing_ok=True)

    # ---- restarts and expiry ---------------------------------------------------------------
    def _orphaned(self, job: JobRecord, now: float) -> bool:
        """Whether ``job`` is ``running`` for a process that no longer runs it."""
        if job.owner == self.owner:
            return False
        pid_text, _, _token = (job.owner or "").partition(":")
        if pid_text.isdigit():
            pid = int(pid_text)
            if pid == os.getpid():
                return True  # this pid is us, and we never claimed it: a restart that reused the pid
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass  # alive, another user's: judge by its heartbeat
        return now - job.updated_at > STALE_S

    async def _recover(self, *, at_start: bool) -> None:
        now = time.time()
        for job in await asyncio.to_thread(self.store.with_status, RUNNING):
            if not self._orphaned(job, now):
                continue
            when = "when the service stopped" if at_start else "by a process that is gone"
            staged = self.store.folder(job.id) / INPUT_NAME
            if job.kind == URL or staged.is_file():
                await asyncio.to_thread(self.store.requeue, job.id)
                log.warning(
                    "job %s was left running %s; re-queued (its input, %s, is still available)",
                    job.id,
                    when,
                    "a URL" if job.kind == URL else "a staged upload",
                )
                self._wake.set()
            else:
                error = error_body(
                    ServiceError(
                        "the service stopped while this job ran and its uploaded video is gone; submit it again",
                        code="job_interrupted",
                        status_code=500,
                    ),
                    job.request_id,
                )
                await asyncio.to_thread(
                    self.store.finish, job.id, FAILED, self.settings.job_ttl_s, error=error, progress=job.progress
                )
                log.warning("job %s was left running %s; marked failed: its staged upload is gone", job.id, when)

    async def _sweep(self) -> None:
        """Expire finished jobs past DFS_JOB_TTL_S (rows' results and folders), and recover jobs
        whose process died while this one runs (several workers on one database)."""
        period = min(60.0, max(0.5, self.settings.job_ttl_s / 4))
        while True:
            try:
                expired = await asyncio.to_thread(self.store.expire, time.time())
                if expired:
                    log.info("jobs expired (DFS_JOB_TTL_S=%g): %s", self.settings.job_ttl_s, ", ".join(expired))
                await self._recover(at_start=False)
            except Exception:  # noqa: BLE001 - a failed sweep is retried on the next period
                log.exception("job sweep failed")
            await asyncio.sleep(period)


def job_body(job: JobRecord, base_url: str = "") -> dict[str, Any]:
    """``GET /jobs/{id}``: status, progress, times, and the result or error when there is one."""
    from datetime import UTC, datetime

    def iso(seconds: float | None) -> str | None:
        return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")

    progress = job.progress
    if job.status == QUEUED:
        progress = Progress("queued", 0, 0)
    body: dict[str, Any] = {
        "job_id": job.id,
        "status": job.status,
        "progress": progress.body(),
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "finished_at": iso(job.finished_at),
        "expires_at": iso(job.expires_at),
    }
    if job.status == RUNNING and job.cancel_requested:
        body["cancel_requested"] = True
    if job.status == DONE and job.result is not None:
        body["result"] = job.result
        evidence = job.evidence or {}
        prefix = f"{base_url}/jobs/{job.id}"
        body["evidence"] = {
            "faces": {str(t): f"{prefix}/faces/{t}.jpg" for t in evidence.get("faces", [])},
            "heatmaps": {str(t): f"{prefix}/heatmaps/{t}.png" for t in evidence.get("heatmaps", [])},
            "annotated": f"{prefix}/annotated.mp4" if evidence.get("annotated_frames") is not None else None,
            "annotated_frames": evidence.get("annotated_frames"),
        }
    if job.status == FAILED and job.error is not None:
        body["error"] = job.error
    return body
