"""End to end: a real `python -m service` process, a real file server, real MP4s, FTCN in ONNX."""

from __future__ import annotations

import concurrent.futures
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import FileServer, LiveService, start_service, stop_service

pytestmark = pytest.mark.slow

TRUEMEDIA_KEYS = {"df_probability", "prediction"}


def predict(client: httpx.Client, url: str, **extra: object) -> httpx.Response:
    return client.post("/predict", json={"file_path": url, **extra})


def test_healthcheck_and_models(live_service: LiveService) -> None:
    with live_service.client() as client:
        assert client.get("/healthcheck").json() == {"healthy": True}
        assert client.get("/livez").status_code == 200
        models = client.get("/models").json()
    assert [m["name"] for m in models] == ["ftcn"]
    ftcn = models[0]
    assert ftcn["runtime"].split(":")[0] in ("onnxruntime", "openvino")  # DFS_RUNTIME=auto: the faster here
    assert ftcn["spec"]["kind"] == "clip" and ftcn["spec"]["num_frames"] == 32
    assert ftcn["parity"]["max_abs_diff_prob"] <= ftcn["parity"]["tolerance_prob"]


def test_one_face_video(live_service: LiveService, file_server: FileServer) -> None:
    with live_service.client() as client:
        response = predict(client, file_server.url("one_face.mp4"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert TRUEMEDIA_KEYS <= body.keys()
    assert body["prediction"] in ("REAL", "FAKE")
    assert 0.0 <= body["df_probability"] <= 1.0
    assert len(body["faces"]) == 1
    face = body["faces"][0]
    # the astronaut is pasted at x 24..184+20, y 24..184+10 (see tests/media.py)
    x1, y1, x2, y2 = face["box"]
    assert 20 <= x1 < x2 <= 210 and 20 <= y1 < y2 <= 200
    assert face["first_frame"] == 0 and face["last_frame"] == 39
    assert face["models"]["ftcn"]["items"] == 1
    assert body["models"]["ftcn"]["score"] == pytest.approx(face["score"], abs=1e-6)
    assert body["models"]["ftcn"]["clips"] == 1
    assert body["video"]["frames_analyzed"] == 40 and body["video"]["width"] == 272
    assert set(body["timings_ms"]) >= {"fetch", "decode", "faces", "inference", "total"}
    assert body["warnings"] == []  # exported from a checkpoint, not --random-init


def test_a_cpu_service_scores_without_loading_torch(live_service: LiveService, file_server: FileServer) -> None:
    """On a machine without a GPU nothing the service runs needs torch, whose import alone holds ~500 MB
    resident (its CUDA libraries mapped): the models package, the device check and the decoder choice
    leave it unloaded, and a scored request does not load it either."""
    if Path("/proc/driver/nvidia/version").exists():
        pytest.skip("a GPU machine: DFS_DEVICE=auto asks torch about it")
    with live_service.client() as client:
        assert predict(client, file_server.url("one_face.mp4")).status_code == 200
    mapped = Path(f"/proc/{live_service.pid}/maps").read_text()
    assert "libtorch" not in mapped and "libcudart" not in mapped


def test_same_video_same_score(live_service: LiveService, file_server: FileServer) -> None:
    with live_service.client() as client:
        first = predict(client, file_server.url("one_face.mp4")).json()
        second = predict(client, file_server.url("one_face.mp4")).json()
    assert first["df_probability"] == second["df_probability"]
    assert first["request_id"] != second["request_id"]


def test_two_faces_give_two_tracks_and_max_rule(live_service: LiveService, file_server: FileServer) -> None:
    with live_service.client() as client:
        body = predict(client, file_server.url("two_faces.mp4")).json()
    assert len(body["faces"]) == 2
    left, right = sorted(body["faces"], key=lambda f: f["box"][0])
    assert left["box"][2] < right["box"][0], "the two tracks must be the two separate heads"
    assert body["df_probability"] == max(f["score"] for f in body["faces"])


def test_no_face_video(live_service: LiveService, file_server: FileServer) -> None:
    with live_service.client() as client:
        response = predict(client, file_server.url("no_face.mp4"))
    assert response.status_code == 200
    body = response.json()
    assert body["prediction"] == "NO_FACE" and body["df_probability"] is None and body["faces"] == []


def test_upload(live_service: LiveService, videos: dict[str, Path]) -> None:
    with live_service.client() as client:
        with videos["one_face"].open("rb") as handle:
            response = client.post("/predict/upload", files={"file": ("clip.mp4", handle, "video/mp4")})
    assert response.status_code == 200, response.text
    assert len(response.json()["faces"]) == 1


def test_upload_over_the_cap_is_refused(live_service: LiveService, videos: dict[str, Path]) -> None:
    with live_service.client() as client:
        with videos["large"].open("rb") as handle:
            response = client.post("/predict/upload", files={"file": ("big.mp4", handle, "video/mp4")})
        assert response.status_code == 413 and response.json()["error"] == "too_large"
        with videos["png_named_mp4"].open("rb") as handle:
            response = client.post("/predict/upload", files={"file": ("x.mp4", handle, "video/mp4")})
        assert response.status_code == 415 and response.json()["error"] == "not_a_video"
        assert client.get("/healthcheck").status_code == 200


def test_local_path_under_root(live_service: LiveService, videos: dict[str, Path]) -> None:
    with live_service.client() as client:
        response = predict(client, str(videos["one_face"]))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("name", ["wild_real_Obama.mp4", "facerec_real_short_hamilton_clip.mp4"])
def test_shared_real_videos(live_service: LiveService, shared_data: Path, name: str) -> None:
    """Real footage: faces are found and tracked; every track's frames lie inside the video."""
    with live_service.client() as client:
        response = predict(client, str(shared_data / "videos" / name), max_frames=64)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["faces"], "a face must be found in real footage of people"
    for face in body["faces"]:
        assert 0 <= face["first_frame"] <= face["last_frame"] < body["video"]["frames_analyzed"] <= 64
        assert 0 <= face["score"] <= 1
        x1, y1, x2, y2 = face["box"]
        assert 0 <= x1 < x2 <= body["video"]["width"] and 0 <= y1 < y2 <= body["video"]["height"]
    assert body["df_probability"] == max(f["score"] for f in body["faces"])


def _histogram_total(metrics_text: str, name: str, model: str) -> tuple[float, float]:
    """(count, count in the le=1 bucket) of a labelled histogram."""
    count = re.search(rf'^{name}_count{{model="{model}"}} (\S+)$', metrics_text, re.M)
    le1 = re.search(rf'^{name}_bucket{{le="1.0",model="{model}"}} (\S+)$', metrics_text, re.M)
    assert count and le1, metrics_text[:2000]
    return float(count.group(1)), float(le1.group(1))


def test_concurrent_requests_share_batches(live_service: LiveService, file_server: FileServer) -> None:
    with live_service.client() as client:
        before_count, before_single = _histogram_total(client.get("/metrics").text, "dfs_batch_requests", "ftcn")
        names = ["one_face.mp4", "two_faces.mp4"] * 4
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda n: predict(client, file_server.url(n)), names))
        after_count, after_single = _histogram_total(client.get("/metrics").text, "dfs_batch_requests", "ftcn")
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses if r.status_code != 200]
    assert all(0 <= r.json()["df_probability"] <= 1 for r in responses)
    multi_request_batches = (after_count - before_count) - (after_single - before_single)
    assert multi_request_batches >= 1, "no batch held clips of more than one request"


# ---- bad input: each gets its JSON error, and the server stays healthy -----------------------


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 422, "invalid_request"),
        ({"file_path": ""}, 422, "invalid_request"),
        ({"file_path": "ftp://example.com/a.mp4"}, 400, "unsupported_scheme"),
        ({"file_path": "file:///etc/passwd"}, 403, "path_not_allowed"),
        ({"file_path": "/etc/passwd"}, 403, "path_not_allowed"),
        ({"file_path": "http://example.com/a.mp4", "models": ["nope"]}, 400, "unknown_model"),
    ],
)
def test_bad_bodies(live_service: LiveService, body: dict, status: int, code: str) -> None:
    with live_service.client() as client:
        response = client.post("/predict", json=body)
        assert response.status_code == status, response.text
        assert response.json()["error"] == code
        assert response.json()["detail"]
        assert client.get("/healthcheck").status_code == 200


def test_malformed_json(live_service: LiveService) -> None:
    with live_service.client() as client:
        response = client.post("/predict", content=b"{not json", headers={"Content-Type": "application/json"})
        assert response.status_code == 400
        assert response.json()["error"] == "malformed_json"


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("missing.mp4", 502, "upstream_status"),
        ("stall", 504, "fetch_timeout"),
        ("large.mp4", 413, "too_large"),
        ("empty.mp4", 415, "empty_file"),
        ("truncated.mp4", 415, None),
        ("image.mp4", 415, "not_a_video"),
        ("audio_only.mp4", 415, "no_video_stream"),
    ],
)
def test_bad_media(
    live_service: LiveService, file_server: FileServer, name: str, status: int, code: str | None
) -> None:
    with live_service.client() as client:
        response = predict(client, file_server.url(name))
        assert response.status_code == status, response.text
        body = response.json()
        assert set(body) == {"error", "detail", "request_id"}
        if code:
            assert body["error"] == code
        assert "dfs-fetch-" not in body["detail"] and tempfile.gettempdir() not in body["detail"], "temp path leaked"
        assert client.get("/healthcheck").status_code == 200
        assert predict(client, file_server.url("no_face.mp4")).status_code == 200


@pytest.fixture(scope="module")
def strict_service(ftcn_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """The service with its default fetch policy: no private addresses, no local paths."""
    log = tmp_path_factory.mktemp("strict") / "service.log"
    service = start_service({"DFS_MODEL_REPOSITORY": str(ftcn_repository)}, log)
    yield service
    stop_service(service)


def test_default_settings_refuse_private_addresses(strict_service: LiveService, file_server: FileServer) -> None:
    """Without DFS_ALLOW_PRIVATE_URLS, loopback/private/link-local targets are refused (no SSRF)."""
    with strict_service.client() as client:
        for url in (
            file_server.url("one_face.mp4"),
            "http://localhost:9/x.mp4",
            "http://10.1.2.3/x.mp4",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/x.mp4",
            "http://[::ffff:127.0.0.1]/x.mp4",
            "http://[64:ff9b::a9fe:a9fe]/latest/meta-data",
            "file:///etc/passwd",
        ):
            response = predict(client, url)
            assert response.status_code in (400, 403), (url, response.text)
            assert response.json()["error"] in ("address_not_allowed", "unsupported_scheme"), url
        assert client.get("/healthcheck").status_code == 200


def test_local_path_without_roots_names_the_setting(strict_service: LiveService, videos: dict[str, Path]) -> None:
    with strict_service.client() as client:
        response = predict(client, str(videos["one_face"]))
    assert response.status_code == 400 and response.json()["error"] == "unsupported_scheme"
    assert "DFS_LOCAL_ROOTS" in response.json()["detail"] and "/predict/upload" in response.json()["detail"]


def _local_addresses() -> tuple[dict[str, object], list[object]]:
    """An event hook recording the client-side address of each response's connection."""
    seen: list[object] = []

    def record(response: httpx.Response) -> None:
        seen.append(response.extensions["network_stream"].get_extra_info("client_addr"))

    return {"response": [record]}, seen


@pytest.mark.parametrize(
    ("service", "file_path", "code"),
    [
        ("live_service", "{root}/a\x00b.mp4", "invalid_path"),
        ("strict_service", "http://" + "a" * 64 + ".test/x.mp4", "invalid_url"),
        ("strict_service", "http://a..b/x.mp4", "invalid_url"),
        ("strict_service", "http://[::1/x.mp4", "invalid_url"),
    ],
)
def test_malformed_input_is_a_400_on_a_connection_that_stays_open(
    request: pytest.FixtureRequest, videos: dict[str, Path], service: str, file_path: str, code: str
) -> None:
    """NUL bytes, over-long or empty host labels and broken IPv6 literals were 500s that also closed the
    keep-alive connection; now each is a 400 JSON error and the next request rides the same connection."""
    live: LiveService = request.getfixturevalue(service)
    hooks, addresses = _local_addresses()
    with httpx.Client(base_url=live.base_url, timeout=60, event_hooks=hooks) as client:
        response = predict(client, file_path.format(root=videos["one_face"].parent))
        assert response.status_code == 400, response.text
        body = response.json()
        assert set(body) == {"error", "detail", "request_id"} and body["error"] == code and body["detail"]
        assert client.get("/healthcheck").status_code == 200
    assert addresses[0] == addresses[1], "the server dropped the keep-alive connection after the error"


@pytest.mark.parametrize(
    ("override", "setting"),
    [
        ({"clip_stride": 1}, "DFS_MIN_CLIP_STRIDE"),
        ({"max_clips_per_track": 256}, "DFS_MAX_CLIPS_PER_TRACK_LIMIT"),
        ({"frames_per_track": 256}, "DFS_FRAMES_PER_TRACK_LIMIT"),
        ({"max_frames": 257}, "DFS_MAX_FRAMES"),
    ],
)
def test_overrides_may_not_raise_the_work_above_the_server_limits(
    live_service: LiveService, override: dict[str, int], setting: str
) -> None:
    """Cost amplification: a request may lower the sampling freely, raise it only up to the limits.
    The URL is a closed loopback port, so a request that got past the check fails with a 502."""
    with live_service.client() as client:
        response = predict(client, "http://127.0.0.1:9/x.mp4", **override)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "limit_exceeded" and setting in body["detail"], body


def test_overrides_within_the_limits_are_served(live_service: LiveService, file_server: FileServer) -> None:
    with live_service.client() as client:
        response = predict(
            client,
            file_server.url("one_face.mp4"),
            clip_stride=16,
            max_clips_per_track=16,
            frames_per_track=2,
            max_frames=256,
        )
    assert response.status_code == 200, response.text
    assert response.json()["models"]["ftcn"]["clips"] >= 1


def test_thumbnails_only_on_request_and_a_timeline_always(live_service: LiveService, file_server: FileServer) -> None:
    """``"thumbnails": true`` inlines a decodable JPEG per face; without it there is none. Every face
    has its timeline: one entry per scored clip, inside the video."""
    import base64

    import cv2
    import numpy as np

    with live_service.client() as client:
        plain = predict(client, file_server.url("two_faces.mp4"))
        with_thumbnails = predict(client, file_server.url("two_faces.mp4"), thumbnails=True)
    assert plain.status_code == 200 and with_thumbnails.status_code == 200, (plain.text, with_thumbnails.text)
    for face in plain.json()["faces"]:
        assert face["thumbnail_jpeg"] is None and face["heatmap_png"] is None
    body = with_thumbnails.json()
    assert len(body["faces"]) == 2
    for face in body["faces"]:
        image = cv2.imdecode(np.frombuffer(base64.b64decode(face["thumbnail_jpeg"]), np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (112, 112, 3)
        assert face["heatmap_png"] is None  # FTCN has no patch map
        assert len(face["timeline"]) == face["models"]["ftcn"]["items"] == 1
        entry = face["timeline"][0]
        assert entry["model"] == "ftcn" and 0 <= entry["start_s"] < entry["end_s"] <= body["video"]["duration_s"]
        assert entry["score"] == pytest.approx(face["models"]["ftcn"]["score"], abs=1e-6)
    assert [f["score"] for f in body["faces"]] == [f["score"] for f in plain.json()["faces"]]
