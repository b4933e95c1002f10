"""The jobs table on a real SQLite file: queue bound, claims, cancel, expiry, two connections at once."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.jobs.progress import Progress, ProgressTracker
from service.jobs.store import CANCELLED, DONE, EXPIRED, QUEUED, RUNNING, JobStore, QueueFull


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    store = JobStore(tmp_path / "db" / "jobs.sqlite3")
    store.open()
    yield store
    store.close()


def test_wal_mode_and_folders(store: JobStore) -> None:
    with sqlite3.connect(store.db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.jobs_dir == store.db_path.parent / "jobs" and store.jobs_dir.is_dir()


def test_queue_bound_and_claim_order(store: JobStore) -> None:
    store.create("a" * 32, "url", {"file_path": "http://x/1"}, "r1", max_queued=2)
    time.sleep(0.01)
    store.create("b" * 32, "url", {"file_path": "http://x/2"}, "r2", max_queued=2)
    with pytest.raises(QueueFull):
        store.create("c" * 32, "url", {"file_path": "http://x/3"}, "r3", max_queued=2)
    assert store.get("c" * 32) is None
    first = store.claim_next("1:owner")
    assert first is not None and first.id == "a" * 32 and first.status == RUNNING and first.owner == "1:owner"
    store.create("c" * 32, "url", {"file_path": "http://x/3"}, "r3", max_queued=2)  # room again
    assert [j.id for j in store.with_status(QUEUED)] == ["b" * 32, "c" * 32]


def test_a_second_connection_cannot_claim_the_same_job(store: JobStore) -> None:
    other = JobStore(store.db_path)
    other.open()
    try:
        store.create("a" * 32, "url", {"file_path": "u"}, "r", max_queued=5)
        claims = [store.claim_next("1:x"), other.claim_next("2:y")]
        assert sum(c is not None for c in claims) == 1
    finally:
        other.close()


def test_progress_cancel_and_finish(store: JobStore) -> None:
    store.create("a" * 32, "url", {"file_path": "u"}, "r", max_queued=5)
    store.create("b" * 32, "upload", {"file_path": "upload"}, "r", max_queued=5)
    running = store.claim_next("1:x")
    assert running is not None
    assert store.set_progress(running.id, Progress("decode", 8, 64)) is False
    assert store.get(running.id).progress == Progress("decode", 8, 64)
    queued = store.request_cancel("b" * 32, ttl_s=60)
    assert queued.status == CANCELLED and queued.expires_at is not None
    flagged = store.request_cancel(running.id, ttl_s=60)
    assert flagged.status == RUNNING and flagged.cancel_requested
    assert store.set_progress(running.id, Progress("decode", 16, 64)) is True  # the runner sees the request
    store.finish(running.id, CANCELLED, 60, progress=Progress("decode", 16, 64))
    done = store.get(running.id)
    assert done.status == CANCELLED and done.owner is None and done.finished_at is not None
    assert store.request_cancel("f" * 32, ttl_s=60) is None


def test_expiry_drops_results_and_files(store: JobStore) -> None:
    store.create("a" * 32, "url", {"file_path": "u"}, "r", max_queued=5)
    store.claim_next("1:x")
    folder = store.folder("a" * 32)
    (folder / "faces").mkdir(parents=True)
    (folder / "faces" / "0.jpg").write_bytes(b"\xff\xd8")
    store.finish("a" * 32, DONE, ttl_s=0.05, result={"prediction": "REAL"}, evidence={"faces": [0]})
    assert store.get("a" * 32).result == {"prediction": "REAL"}
    assert store.expire(time.time() - 10) == []  # not yet
    time.sleep(0.1)
    assert store.expire(time.time()) == ["a" * 32]
    expired = store.get("a" * 32)
    assert expired.status == EXPIRED and expired.result is None and expired.expired(time.time())
    assert not folder.exists()
    store.expire(time.time() + 30 * 24 * 3600)  # tombstones go after a week
    assert store.get("a" * 32) is None


def test_requeue_keeps_the_input_order(store: JobStore) -> None:
    store.create("a" * 32, "url", {"file_path": "u"}, "r", max_queued=5)
    time.sleep(0.01)
    store.create("b" * 32, "url", {"file_path": "u"}, "r", max_queued=5)
    assert store.claim_next("1:x").id == "a" * 32
    store.requeue("a" * 32)
    assert store.claim_next("2:y").id == "a" * 32


def test_progress_tracker_keeps_the_latest() -> None:
    tracker = ProgressTracker()
    version, latest = tracker.snapshot()
    tracker("decode", 3, 10)
    tracker("decode", 5, 10)
    newer, now = tracker.snapshot()
    assert newer == version + 2 and now == Progress("decode", 5, 10)
    assert now.body() == {"stage": "decode", "done": 5, "total": 10, "fraction": 0.5}
    assert Progress("fetch", 0, 0).body()["fraction"] is None
