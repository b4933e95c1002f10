"""The jobs table: an embedded SQLite database (stdlib ``sqlite3``, WAL mode) and a folder per job.

Why SQLite: jobs must survive a restart and be readable by every worker process of one host without
running a database server. WAL mode lets readers (``GET /jobs/{id}``) proceed while a runner writes;
every method is one short transaction on one connection guarded by a lock, meant to be called from
a worker thread (``asyncio.to_thread``) so the event loop never waits on the disk. Claims and the
queue-length check run under ``BEGIN IMMEDIATE``, so two processes cannot claim one job or overfill
the queue between them.

A job's files (a staged upload, face thumbnails, heat maps, the annotated video) live in
``<jobs folder>/<job id>/``; the store only names that folder, the runner fills it, and expiry
removes it with the row's result.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.jobs.progress import Progress
from service.pipeline.failures import DfsError, DfsFailure, DfsInputError

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
#: a finished job past its time to live: its result and files are gone, its id answers 410
EXPIRED = "expired"
FINISHED = frozenset({DONE, FAILED, CANCELLED})
#: how long an expired job's row (without result or files) is kept so its id answers 410, not 404
TOMBSTONE_S = 7 * 24 * 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    kind TEXT NOT NULL,              -- 'url' (file_path fetched when it runs) or 'upload' (staged input)
    request TEXT NOT NULL,           -- the PredictRequest body, JSON
    request_id TEXT NOT NULL,
    stage TEXT NOT NULL DEFAULT 'queued',
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    result TEXT,                     -- the /predict body, JSON, when done
    error TEXT,                      -- the error body plus its HTTP status, JSON, when failed
    evidence TEXT,                   -- what was written to the job's folder, JSON, when done
    owner TEXT,                      -- the process running it: 'pid:token'
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS jobs_expires ON jobs (expires_at);
"""


class QueueFull(DfsError):
    """``DFS_JOBS_MAX_QUEUED`` jobs are already waiting."""


@dataclass(frozen=True)
class JobRecord:
    id: str
    status: str
    kind: str
    request: dict[str, Any]
    request_id: str
    progress: Progress
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    evidence: dict[str, Any] | None
    owner: str | None
    cancel_requested: bool
    created_at: float
    updated_at: float
    finished_at: float | None
    expires_at: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        def loads(text: str | None) -> Any:
            return None if text is None else json.loads(text)

        return cls(
            id=row["id"],
            status=row["status"],
            kind=row["kind"],
            request=json.loads(row["request"]),
            request_id=row["request_id"],
            progress=Progress(row["stage"], row["done"], row["total"]),
            result=loads(row["result"]),
            error=loads(row["error"]),
            evidence=loads(row["evidence"]),
            owner=row["owner"],
            cancel_requested=bool(row["cancel_requested"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            finished_at=row["finished_at"],
            expires_at=row["expires_at"],
        )

    def expired(self, now: float) -> bool:
        return self.status == EXPIRED or (self.expires_at is not None and self.expires_at <= now)


class JobStore:
    """The ``jobs`` table and the job folders. Blocking: call from a worker thread."""

    def __init__(self, db_path: Path, jobs_dir: Path | None = None) -> None:
        self.db_path = db_path
        self.jobs_dir = jobs_dir if jobs_dir is not None else db_path.parent / "jobs"
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    # ---- lifetime --------------------------------------------------------------------------
    def open(self) -> None:
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE where a read decides a write)
        db = sqlite3.connect(self.db_path, timeout=10.0, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash
        db.executescript(_SCHEMA)
        self._db = db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def folder(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise DfsFailure("the jobs store is not open")
        return self._db

    def _one(self, job_id: str) -> JobRecord | None:
        row = self._conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else JobRecord.from_row(row)

    # ---- reads -----------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            return self._one(job_id)

    def queued_count(self) -> int:
        with self._lock:
            return int(self._conn().execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (QUEUED,)).fetchone()[0])

    def with_status(self, status: str) -> list[JobRecord]:
        with self._lock:
            rows = self._conn().execute("SELECT * FROM jobs WHERE status = ? ORDER BY created_at", (status,))
            return [JobRecord.from_row(row) for row in rows]

    # ---- writes ----------------------------------------------------------------------------
    def create(self, job_id: str, kind: str, request: dict[str, Any], request_id: str, max_queued: int) -> JobRecord:
        """Insert a queued job, unless ``max_queued`` jobs already wait (:class:`QueueFull`)."""
        now = time.time()
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                waiting = db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (QUEUED,)).fetchone()[0]
                if waiting >= max_queued:
                    raise QueueFull(waiting)
                db.execute(
                    "INSERT INTO jobs (id, status, kind, request, request_id, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (job_id, QUEUED, kind, json.dumps(request), request_id, now, now),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            record = self._one(job_id)
        if record is None:  # inserted in the same transaction: another writer deleted it
            raise DfsFailure(f"job {job_id} vanished from {self.db_path} right after it was written")
        return record

    def claim_next(self, owner: str) -> JobRecord | None:
        """Mark the oldest queued job running for ``owner`` and return it (None: nothing queued)."""
        now = time.time()
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT id FROM jobs WHERE status = ? ORDER BY created_at LIMIT 1", (QUEUED,)
                ).fetchone()
                if row is not None:
                    db.execute(
                        "UPDATE jobs SET status = ?, owner = ?, stage = 'waiting', done = 0, total = 0, "
                        "updated_at = ? WHERE id = ?",
                        (RUNNING, owner, now, row["id"]),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return None if row is None else self._one(row["id"])

    def set_progress(self, job_id: str, progress: Progress) -> bool:
        """Record a running job's progress (also its heartbeat); returns whether a cancel was asked."""
        with self._lock:
            db = self._conn()
            db.execute(
                "UPDATE jobs SET stage = ?, done = ?, total = ?, updated_at = ? WHERE id = ? AND status = ?",
                (progress.stage, progress.done, progress.total, time.time(), job_id, RUNNING),
            )
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return bool(row and row[0])

    def finish(
        self,
        job_id: str,
        status: str,
        ttl_s: float,
        *,
        result: dict | None = None,
        error: dict | None = None,
        evidence: dict | None = None,
        progress: Progress | None = None,
    ) -> None:
        """End a job (done, failed or cancelled); it expires ``ttl_s`` from now."""
        if status not in FINISHED:
            raise DfsInputError(f"a job ends as one of {sorted(FINISHED)}, not {status!r}")
        now = time.time()
        stage = progress or Progress(status, 1 if status == DONE else 0, 1 if status == DONE else 0)
        with self._lock:
            self._conn().execute(
                "UPDATE jobs SET status = ?, result = ?, error = ?, evidence = ?, stage = ?, done = ?, total = ?, "
                "owner = NULL, updated_at = ?, finished_at = ?, expires_at = ? WHERE id = ?",
                (
                    status,
                    None if result is None else json.dumps(result),
                    None if error is None else json.dumps(error),
                    None if evidence is None else json.dumps(evidence),
                    stage.stage,
                    stage.done,
                    stage.total,
                    now,
                    now,
                    now + ttl_s,
                    job_id,
                ),
            )

    def requeue(self, job_id: str) -> None:
        """Put a running job back in the line (its runner stopped), keeping its place by creation time."""
        with self._lock:
            self._conn().execute(
                "UPDATE jobs SET status = ?, owner = NULL, stage = 'queued', done = 0, total = 0, updated_at = ? "
                "WHERE id = ? AND status = ?",
                (QUEUED, time.time(), job_id, RUNNING),
            )

    def request_cancel(self, job_id: str, ttl_s: float) -> JobRecord | None:
        """Cancel a queued job at once; flag a running one (its runner cancels its work). Returns the
        job as it then stands (None: no such job); a finished job is left as it is."""
        now = time.time()
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "UPDATE jobs SET status = ?, stage = ?, done = 0, total = 0, updated_at = ?, finished_at = ?, "
                    "expires_at = ? WHERE id = ? AND status = ?",
                    (CANCELLED, CANCELLED, now, now, now + ttl_s, job_id, QUEUED),
                )
                db.execute(
                    "UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ? AND status = ?",
                    (now, job_id, RUNNING),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return self._one(job_id)

    def expire(self, now: float) -> list[str]:
        """Drop the results and files of finished jobs past their time to live (their rows stay,
        as ``expired``, for :data:`TOMBSTONE_S`, then go); returns the ids expired now."""
        with self._lock:
            db = self._conn()
            ids = [
                row[0]
                for row in db.execute(
                    "SELECT id FROM jobs WHERE status IN (?, ?, ?) AND expires_at <= ?", (*sorted(FINISHED), now)
                )
            ]
            for job_id in ids:
                db.execute(
                    "UPDATE jobs SET status = ?, result = NULL, error = NULL, evidence = NULL, updated_at = ? "
                    "WHERE id = ?",
                    (EXPIRED, now, job_id),
                )
            db.execute("DELETE FROM jobs WHERE status = ? AND expires_at <= ?", (EXPIRED, now - TOMBSTONE_S))
        for job_id in ids:
            shutil.rmtree(self.folder(job_id), ignore_errors=True)
        return ids
