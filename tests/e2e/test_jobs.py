"""End to end: the jobs API on a real `python -m service` process with its own SQLite database, real
MP4s from the loopback file server, FTCN in ONNX. Life cycle with progress, evidence, cancel, a full
queue, bad input, a restart with jobs in the database, expiry."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import pytest

from tests import media
from tests.conftest import FileServer, LiveService, start_service, stop_service

pytestmark = pytest.mark.slow

LONG_FRAMES = 64  # above the fixture's DFS_MAX_FRAMES (32), within its DFS_JOB_MAX_FRAMES (64)
FINISHED = {"done", "failed", "cancelled"}


def jobs_env(ftcn_repository: Path, videos: dict[str, Path], data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "DFS_MODEL_REPOSITORY": str(ftcn_repository),
        "DFS_ALLOW_PRIVATE_URLS": "true",
        "DFS_LOCAL_ROOTS": str(videos["one_face"].parent),
        "DFS_MAX_DOWNLOAD_BYTES": str(2 * 1024 * 1024),
        "DFS_FETCH_TIMEOUT_S": "25",  # /stall holds a fetch (a running job) for that long
        "DFS_MAX_CLIPS_PER_TRACK": "1",
        "DFS_BATCH_MAX_WAIT_MS": "50",
        "DFS_MAX_FRAMES": "32",
        "DFS_JOB_MAX_FRAMES": str(LONG_FRAMES),
        "DFS_DATA_DIR": str(data_dir),
        "DFS_JOBS_DB": str(data_dir / "db" / "jobs.sqlite3"),
        "DFS_REPLICA_ID": "replica-a",
        **extra,
    }


@pytest.fixture(scope="module")
def long_video(videos: dict[str, Path]) -> Path:
    """A one-face video long enough to watch a job's progress grow (served by the file server too)."""
    return media.face_video(videos["one_face"].parent / "long_face.mp4", faces=1, frames=LONG_FRAMES)


@pytest.fixture(scope="module")
def jobs_service(
    ftcn_repository: Path, videos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, long_video: Path
) -> Iterator[LiveService]:
    data = tmp_path_factory.mktemp("jobs-data")
    service = start_service(jobs_env(ftcn_repository, videos, data, DFS_JOBS_MAX_QUEUED="2"), data / "service.log")
    service.data_dir = data  # type: ignore[attr-defined]
    yield service
    stop_service(service)


def submit(client: httpx.Client, file_path: str, **extra: object) -> str:
    response = client.post("/jobs", json={"file_path": file_path, **extra})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status_url"].endswith(f"/jobs/{body['job_id']}") and response.headers["location"] == body["status_url"]
    return body["job_id"]


def wait_for(
    client: httpx.Client,
    job_id: str,
    until: set[str],
    timeout: float = 240.0,
    seen: list[dict] | None = None,
    poll: float = 0.1,
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        if seen is not None:
            seen.append(body)
        if body["status"] in until:
            return body
        time.sleep(poll)
    raise AssertionError(f"job {job_id} still {body['status']} after {timeout} s: {body}")


def wait_running_in(client: httpx.Client, job_id: str, stage: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/jobs/{job_id}").json()
        if body["status"] == "running" and body["progress"]["stage"] == stage and body["progress"]["done"] > 0:
            return body
        assert body["status"] not in FINISHED, body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {stage}: {body}")


def decoded_frames(data: bytes, folder: Path) -> int:
    path = folder / "annotated.mp4"
    path.write_bytes(data)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        return sum(1 for _ in container.decode(stream))


def test_job_life_cycle_progress_result_and_evidence(
    jobs_service: LiveService, file_server: FileServer, tmp_path: Path
) -> None:
    with jobs_service.client() as client:
        job_id = submit(client, file_server.url("long_face.mp4"), max_frames=LONG_FRAMES)
        assert job_id.startswith("replica-a-"), job_id  # the replica that holds it
        seen: list[dict] = []
        final = wait_for(client, job_id, FINISHED, seen=seen, poll=0.05)
        assert final["status"] == "done", final
        sync = client.post("/predict", json={"file_path": file_server.url("long_face.mp4")})
        assert sync.status_code == 200, sync.text
        over = client.post("/predict", json={"file_path": file_server.url("long_face.mp4"), "max_frames": LONG_FRAMES})
        files = {
            name: client.get(f"/jobs/{job_id}/{name}")
            for name in ("faces/0.jpg", "faces/7.jpg", "heatmaps/0.png", "annotated.mp4")
        }

    statuses = [body["status"] for body in seen]
    assert set(statuses) <= {"queued", "running", "done"} and statuses[-1] == "done"
    assert statuses == sorted(statuses, key=["queued", "running", "done"].index), "statuses must only move forward"
    # progress is written a few times a second: on a fast CPU a stage (decode of 64 frames: ~0.14 s) may
    # be seen once, so growth is asserted over the whole job, in the documented order of the stages
    order = ["queued", "waiting", "fetch", "decode", "crops", "inference", "render"]
    running = [body["progress"] for body in seen if body["status"] == "running"]
    snapshots = list(dict.fromkeys((p["stage"], p["done"]) for p in running))
    assert len(snapshots) >= 3, f"progress must be seen growing: {seen}"
    assert snapshots == sorted(snapshots, key=lambda s: (order.index(s[0]), s[1])), snapshots
    for p in running:  # a stage whose total is not known yet has a null fraction (the API's documented form)
        if p["total"] == 0:
            assert p["fraction"] is None and p["done"] == 0, p
        else:
            assert 0 <= p["fraction"] <= 1 and p["done"] <= p["total"], p
    decode = [p for p in running if p["stage"] == "decode"]
    assert all(p["total"] == LONG_FRAMES for p in decode)
    stages = {stage for stage, _ in snapshots}
    assert stages & {"render", "inference", "crops"} and stages & {"fetch", "decode"}, stages

    # the result is /predict's body, over more frames than /predict may decode
    result, expected = final["result"], sync.json()
    assert result.keys() == expected.keys()
    assert [f.keys() for f in result["faces"]] == [f.keys() for f in expected["faces"]]
    assert result["video"]["frames_analyzed"] == LONG_FRAMES and expected["video"]["frames_analyzed"] == 32
    assert result["prediction"] in ("REAL", "FAKE") and len(result["faces"]) == 1
    assert over.status_code == 422 and "DFS_MAX_FRAMES" in over.json()["detail"]
    assert final["progress"]["fraction"] == 1.0 and final["created_at"] <= final["updated_at"]

    # evidence
    assert final["evidence"]["faces"] == {"0": f"/jobs/{job_id}/faces/0.jpg"}
    assert final["evidence"]["annotated_frames"] == LONG_FRAMES
    face = files["faces/0.jpg"]
    assert face.status_code == 200 and face.headers["content-type"] == "image/jpeg"
    assert face.content[:3] == b"\xff\xd8\xff"
    for name in ("faces/7.jpg", "heatmaps/0.png"):  # no track 7; FTCN (a clip model) gives no heat map
        assert files[name].status_code == 404 and files[name].json()["error"] == "evidence_not_found"
    video = files["annotated.mp4"]
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert decoded_frames(video.content, tmp_path) == result["video"]["frames_analyzed"]
    job_folder = jobs_service.data_dir / "db" / "jobs" / job_id  # type: ignore[attr-defined]
    assert not (job_folder / "input").exists()


def test_over_the_job_frame_cap_and_unknown_ids(jobs_service: LiveService, file_server: FileServer) -> None:
    with jobs_service.client() as client:
        over = client.post("/jobs", json={"file_path": file_server.url("long_face.mp4"), "max_frames": LONG_FRAMES + 1})
        unknown_model = client.post("/jobs", json={"file_path": file_server.url("long_face.mp4"), "models": ["nope"]})
        extra = client.post("/jobs", json={"file_path": file_server.url("long_face.mp4"), "callback": "x"})
        missing = client.get("/jobs/" + "0" * 32)
        malformed = client.get("/jobs/..%2f..%2fetc")
        deleted = client.delete("/jobs/" + "f" * 32)
        evidence = client.get("/jobs/" + "0" * 32 + "/annotated.mp4")
        mine = client.get("/jobs/replica-a-" + "0" * 32)
        elsewhere = [
            client.get("/jobs/replica-b-" + "0" * 32),
            client.delete("/jobs/replica-b-" + "0" * 32),
            client.get("/jobs/replica-b-" + "0" * 32 + "/faces/0.jpg"),
        ]
    assert over.status_code == 422 and over.json()["error"] == "limit_exceeded"
    assert "DFS_JOB_MAX_FRAMES" in over.json()["detail"]
    assert unknown_model.status_code == 400 and unknown_model.json()["error"] == "unknown_model"
    assert extra.status_code == 422 and extra.json()["error"] == "invalid_request"
    for response in (missing, deleted, evidence):
        assert response.status_code == 404 and response.json()["error"] == "job_not_found", response.text
        assert response.json()["request_id"] == response.headers["x-request-id"]
    assert malformed.status_code == 404
    assert mine.status_code == 404 and mine.json()["error"] == "job_not_found"
    for response in elsewhere:  # another replica's job: say where it is instead of "no such job"
        assert response.status_code == 421 and response.json()["error"] == "job_on_another_replica", response.text
        assert "'replica-b'" in response.json()["detail"] and "'replica-a'" in response.json()["detail"]


def test_bad_input_fails_the_job_with_predicts_error(
    jobs_service: LiveService, file_server: FileServer, videos: dict[str, Path]
) -> None:
    with jobs_service.client() as client:
        url = file_server.url("image.mp4")  # a PNG named .mp4
        job_id = submit(client, url)
        predict = client.post("/predict", json={"file_path": url})
        failed = wait_for(client, job_id, FINISHED)
        with videos["audio_only"].open("rb") as handle:
            upload = client.post("/jobs/upload", files={"file": ("sound.mp4", handle, "video/mp4")})
        assert upload.status_code == 202, upload.text
        upload_failed = wait_for(client, upload.json()["job_id"], FINISHED)
        sync_upload = client.post("/predict/upload", files={"file": ("sound.mp4", videos["audio_only"].read_bytes())})
        gone = wait_for(client, submit(client, file_server.url("no_such_file.mp4")), FINISHED)
        not_done = client.get(f"/jobs/{job_id}/faces/0.jpg")
        assert client.get("/healthcheck").status_code == 200
    assert failed["status"] == "failed" and "result" not in failed
    assert failed["error"]["error"] == predict.json()["error"] == "not_a_video"
    assert failed["error"]["status_code"] == predict.status_code == 415
    assert set(failed["error"]) == {"error", "detail", "request_id", "status_code"}
    assert upload_failed["status"] == "failed"
    assert upload_failed["error"]["error"] == sync_upload.json()["error"]
    assert upload_failed["error"]["status_code"] == sync_upload.status_code == 415
    assert gone["error"]["error"] == "upstream_status" and gone["error"]["status_code"] == 502
    assert not_done.status_code == 409 and not_done.json()["error"] == "job_not_done"


def test_upload_job(jobs_service: LiveService, videos: dict[str, Path]) -> None:
    with jobs_service.client() as client:
        with videos["one_face"].open("rb") as handle:
            response = client.post("/jobs/upload", files={"file": ("clip.mp4", handle, "video/mp4")})
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        final = wait_for(client, job_id, FINISHED)
        with videos["large"].open("rb") as handle:
            too_large = client.post("/jobs/upload", files={"file": ("big.mp4", handle, "video/mp4")})
    assert final["status"] == "done", final
    assert len(final["result"]["faces"]) == 1
    assert final["result"]["video"]["frames_analyzed"] == 32  # DFS_MAX_FRAMES: a job's default
    assert not (jobs_service.data_dir / "db" / "jobs" / job_id / "input").exists()  # type: ignore[attr-defined]
    assert too_large.status_code == 413 and too_large.json()["error"] == "too_large"


def test_cancel_a_running_job_stops_its_work(jobs_service: LiveService, file_server: FileServer) -> None:
    with jobs_service.client() as client:
        job_id = submit(client, file_server.url("long_face.mp4"), max_frames=LONG_FRAMES)
        running = wait_running_in(client, job_id, "decode")
        started = time.monotonic()
        cancelled = client.delete(f"/jobs/{job_id}")
        took = time.monotonic() - started
        again = client.delete(f"/jobs/{job_id}")
        later = client.get(f"/jobs/{job_id}").json()
        evidence = client.get(f"/jobs/{job_id}/annotated.mp4")
        # JobStore.finish() overwrites whatever the row holds, so a late write by the runner (a progress
        # flush or a second finish) would replace the cancelled record: none may come after the DELETE.
        time.sleep(1.0)  # four progress flushes (FLUSH_S)
        settled = client.get(f"/jobs/{job_id}").json()
    assert running["progress"]["done"] < LONG_FRAMES
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled" and later["status"] == "cancelled"
    # The work stops where it was: on a fast CPU decoding 64 frames can end before the DELETE
    # lands, so the stage it stopped in may be any but the finished render.
    stopped = later["progress"]
    assert not (stopped["stage"] == "render" and stopped["fraction"] == 1.0), stopped
    assert settled["progress"] == stopped and settled["status"] == "cancelled", settled
    assert settled.get("result") is None, settled
    assert took < 20, f"cancelling took {took:.1f} s"
    assert again.status_code == 409 and again.json()["error"] == "job_finished"
    assert evidence.status_code == 409 and evidence.json()["error"] == "job_not_done"
    assert f"job {job_id}: cancelled; its work was stopped" in jobs_service.log_text()
    assert f"job {job_id} done" not in jobs_service.log_text()


def test_full_queue_is_a_503_with_retry_after(jobs_service: LiveService, file_server: FileServer) -> None:
    """DFS_JOBS_MAX_QUEUED=2 with one job running: two more wait, the next is refused."""
    with jobs_service.client() as client:
        running = submit(client, file_server.url("stall"))  # its fetch stalls: it stays running
        wait_for(client, running, {"running"} | FINISHED, poll=0.05)
        queued = [submit(client, file_server.url("one_face.mp4")) for _ in range(2)]
        refused = client.post("/jobs", json={"file_path": file_server.url("one_face.mp4")})
        waiting = [client.get(f"/jobs/{job_id}").json() for job_id in queued]
        cancels = [client.delete(f"/jobs/{job_id}") for job_id in [*queued, running]]
        after = client.post("/jobs", json={"file_path": file_server.url("no_face.mp4")})
        assert after.status_code == 202, after.text
        wait_for(client, after.json()["job_id"], FINISHED)
    assert refused.status_code == 503 and refused.json()["error"] == "queue_full"
    assert "DFS_JOBS_MAX_QUEUED" in refused.json()["detail"] and int(refused.headers["retry-after"]) > 0
    assert [body["status"] for body in waiting] == ["queued", "queued"]
    assert all(body["progress"]["stage"] == "queued" for body in waiting)
    assert [c.status_code for c in cancels] == [200, 200, 200], [c.text for c in cancels]
    assert [c.json()["status"] for c in cancels] == ["cancelled"] * 3


def test_restart_requeues_or_fails_running_jobs(
    ftcn_repository: Path, videos: dict[str, Path], file_server: FileServer, long_video: Path, tmp_path: Path
) -> None:
    """Killed mid-job: on the next start the URL job runs again to the end; the upload job whose
    staged video is gone is failed with job_interrupted; the log says which."""
    env = jobs_env(ftcn_repository, videos, tmp_path, DFS_JOBS_CONCURRENCY="2", DFS_MAX_CONCURRENT_REQUESTS="4")
    first = start_service(env, tmp_path / "first.log")
    try:
        with first.client() as client:
            url_job = submit(client, file_server.url("long_face.mp4"), max_frames=LONG_FRAMES)
            upload = client.post("/jobs/upload", files={"file": ("long.mp4", long_video.read_bytes(), "video/mp4")})
            assert upload.status_code == 202, upload.text
            upload_job = upload.json()["job_id"]
            wait_running_in(client, url_job, "decode")
            wait_for(client, upload_job, {"running"} | FINISHED, poll=0.05)
        os.kill(first.pid, signal.SIGKILL)
        first.process.wait(timeout=30)
    finally:
        if first.process.poll() is None:
            stop_service(first)
    staged = tmp_path / "db" / "jobs" / upload_job / "input"
    assert staged.is_file(), "an upload job's video is staged in its folder until it has run"
    staged.unlink()

    second = start_service(env, tmp_path / "second.log")
    try:
        with second.client() as client:
            failed = client.get(f"/jobs/{upload_job}").json()
            done = wait_for(client, url_job, FINISHED)
    finally:
        stop_service(second)
    assert failed["status"] == "failed" and failed["error"]["error"] == "job_interrupted", failed
    assert done["status"] == "done", done
    assert done["result"]["video"]["frames_analyzed"] == LONG_FRAMES
    log = second.log_text()
    assert f"job {url_job} was left running when the service stopped; re-queued" in log
    assert f"job {upload_job} was left running when the service stopped; marked failed" in log


def test_finished_jobs_expire(
    ftcn_repository: Path, videos: dict[str, Path], file_server: FileServer, tmp_path: Path
) -> None:
    ttl = 6.0
    service = start_service(jobs_env(ftcn_repository, videos, tmp_path, DFS_JOB_TTL_S=str(ttl)), tmp_path / "log")
    try:
        with service.client() as client:
            job_id = submit(client, file_server.url("one_face.mp4"))
            done = wait_for(client, job_id, FINISHED)
            face_before = client.get(f"/jobs/{job_id}/faces/0.jpg").status_code
            folder = tmp_path / "db" / "jobs" / job_id
            had_files = (folder / "faces" / "0.jpg").is_file()
            time.sleep(ttl + 3)  # past the TTL and at least one sweep (every TTL / 4)
            expired = client.get(f"/jobs/{job_id}")
            face_after = client.get(f"/jobs/{job_id}/faces/0.jpg")
    finally:
        stop_service(service)
    assert done["status"] == "done" and face_before == 200 and had_files
    assert expired.status_code == 410 and expired.json()["error"] == "job_expired", expired.text
    assert "DFS_JOB_TTL_S" in expired.json()["detail"]
    assert face_after.status_code == 410
    assert not folder.exists(), "the sweep deletes an expired job's files"
