"""Request limits, over a real `python -m service` on 127.0.0.1: frame-size bombs, decode cost, body
caps, chunked uploads, abandoned requests, slow-header connections and honest frame counts.

One service with small limits serves every test here (each test takes seconds); the limits are set in
its environment exactly as an operator would set them.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import media
from tests.conftest import LiveService, start_service, stop_service

pytestmark = pytest.mark.slow

MAX_UPLOAD = 1 << 20  # DFS_MAX_DOWNLOAD_BYTES
MAX_JSON = 16 * 1024  # DFS_MAX_JSON_BYTES
HEADER_TIMEOUT_S = 1.0  # DFS_HEADER_TIMEOUT_S
BODY_TIMEOUT_S = 1.0  # DFS_BODY_TIMEOUT_S
MAX_CONNECTIONS = 32  # DFS_MAX_CONNECTIONS
PIXEL_BUDGET = 50_000_000  # DFS_MAX_DECODE_PIXELS: the test videos fit (the long one: 272x240 x 256 x 2 = 33 M)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("limits-media")
    media.resolution_switch(folder / "switch.ts", (64, 64, 30), (4000, 4000, 1))
    media.blank_video(folder / "blank_1000.mp4", 1000, 1000, 30)
    media.face_video(folder / "long.mp4", frames=256)
    whole = media.face_video(folder / "faststart.mp4", faststart=True)  # 40 frames, index first
    media.cut_after_packets(whole, folder / "cut_20.mp4", 20)
    media.cut_after_packets(whole, folder / "cut_4.mp4", 4)
    media.still_gif(folder / "still.gif")
    return folder


@pytest.fixture(scope="module")
def staging(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service's DFS_TEMP_DIR and TMPDIR: whatever it spools or stages lands here."""
    return tmp_path_factory.mktemp("limits-staging")


@pytest.fixture(scope="module")
def limited(
    ftcn_repository: Path,
    media_dir: Path,
    staging: Path,
    videos: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveService]:
    service = start_service(
        {
            "DFS_MODEL_REPOSITORY": str(ftcn_repository),
            "DFS_ALLOW_PRIVATE_URLS": "true",
            "DFS_LOCAL_ROOTS": f"{media_dir},{videos['one_face'].parent}",
            "DFS_MAX_DOWNLOAD_BYTES": str(MAX_UPLOAD),
            "DFS_TEMP_DIR": str(staging),
            "TMPDIR": str(staging),
            "DFS_MAX_JSON_BYTES": str(MAX_JSON),
            "DFS_MAX_VIDEO_SIDE": "1024",
            "DFS_MAX_DECODE_PIXELS": str(PIXEL_BUDGET),
            "DFS_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
            "DFS_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
            "DFS_KEEPALIVE_TIMEOUT_S": "1",
            "DFS_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
            "DFS_MAX_CONCURRENT_REQUESTS": "1",
            "DFS_BATCH_MAX_CLIPS": "1",  # the long video's 8 clips run as 8 batches: a cancel can drop some
        },
        tmp_path_factory.mktemp("limits-log") / "service.log",
    )
    yield service
    stop_service(service)


def predict(service: LiveService, file_path: str | Path, **extra: object) -> httpx.Response:
    with service.client(timeout=120) as client:
        return client.post("/predict", json={"file_path": str(file_path), **extra})


def address(service: LiveService) -> tuple[str, int]:
    host, port = service.base_url.removeprefix("http://").split(":")
    return host, int(port)


def metric(service: LiveService, name: str, **labels: str) -> float:
    """One sample of /metrics (0 when the series does not exist yet)."""
    text = httpx.get(f"{service.base_url}/metrics", timeout=10).text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{{{re.escape(wanted)}}} (\S+)$" if labels else rf"^{re.escape(name)} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def read_response(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (or ``timeout`` passes)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    return data


def json_body(response: bytes) -> dict:
    return json.loads(response.partition(b"\r\n\r\n")[2])


# ---- 1, 2: frame-size bombs and decode cost ------------------------------------------------------


def test_a_frame_size_switch_mid_stream_is_refused(limited: LiveService, media_dir: Path) -> None:
    """64x64 for 30 frames, then 4000x4000: the header check passed it and the response said 64x64."""
    response = predict(limited, media_dir / "switch.ts")
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["error"] == "video_too_large" and "4000x4000" in body["detail"], body
    assert "DFS_MAX_VIDEO_SIDE" in body["detail"]


def test_decode_cost_is_bounded_by_the_pixel_budget(limited: LiveService, media_dir: Path) -> None:
    """30 frames of 1000x1000 (a 136 KB file) in two passes are 60 Mpx, above the budget of 50: refused
    before decoding, with the max_frames that would fit, which is then served."""
    started = time.monotonic()
    response = predict(limited, media_dir / "blank_1000.mp4")
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["error"] == "decode_budget_exceeded" and "DFS_MAX_DECODE_PIXELS" in body["detail"], body
    assert "max_frames=25 or fewer" in body["detail"]
    assert time.monotonic() - started < 10
    response = predict(limited, media_dir / "blank_1000.mp4", max_frames=25)
    assert response.status_code == 200, response.text
    assert response.json()["video"]["frames_analyzed"] == 25


# ---- 3: JSON body cap -----------------------------------------------------------------------------


def test_a_huge_declared_json_body_is_refused_before_it_is_read(limited: LiveService) -> None:
    with socket.create_connection(address(limited), timeout=10) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 600000000\r\n\r\n" + b'{"file_path": "' + b"a" * 1000
        )
        started = time.monotonic()
        response = read_response(sock, timeout=10)
    assert time.monotonic() - started < 5, "the server waited for the body"
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    body = json_body(response)
    assert body["error"] == "too_large" and "DFS_MAX_JSON_BYTES" in body["detail"] and body["request_id"]


def test_a_chunked_json_body_is_counted_and_refused_at_the_cap(limited: LiveService) -> None:
    """No Content-Length: the server counts while receiving and answers 413 without waiting for the end."""
    with socket.create_connection(address(limited), timeout=10) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        piece = b'{"file_path": "' + b"a" * 4096
        for _ in range(MAX_JSON // len(piece) + 2):  # past the cap; the body is never finished
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        response = read_response(sock, timeout=10)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert json_body(response)["error"] == "too_large"
    with limited.client() as client:
        assert client.post("/predict", json={"file_path": "ftp://x/y.mp4"}).status_code == 400  # small bodies pass


# ---- 4: chunked uploads -----------------------------------------------------------------------------


def _staged_bytes(pid: int, folder: Path) -> int:
    """Bytes in the files the server holds open under ``folder``. Read through /proc because a spooled
    upload is an unnamed file (``tempfile.TemporaryFile`` uses O_TMPFILE): no folder listing shows it."""
    total = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith(str(folder)):
                total += os.stat(fd).st_size
        except OSError:  # closed meanwhile
            pass
    return total


def test_a_chunked_upload_stops_at_the_byte_cap(limited: LiveService, staging: Path) -> None:
    """8 MiB sent chunked (no Content-Length) to a 1 MiB cap: a 413, and the staging folder never held
    much more than the cap (the whole body used to be spooled to the temp folder first: TMPDIR is set
    to that folder too)."""
    peak, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _staged_bytes(limited.pid, staging))
            time.sleep(0.01)

    def body() -> Iterator[bytes]:
        yield (
            b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n'
            b"Content-Type: video/mp4\r\n\r\n"
        )
        for _ in range(128):
            yield b"\x00" * 65536
        yield b"\r\n--XyZ--\r\n"

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with limited.client(timeout=60) as client:
            response = client.post(
                "/predict/upload", content=body(), headers={"Content-Type": "multipart/form-data; boundary=XyZ"}
            )
    finally:
        stop.set()
        watcher.join()
    assert response.status_code == 413, response.text
    assert peak[0] <= MAX_UPLOAD + 256 * 1024, f"{peak[0]} bytes were staged for a {MAX_UPLOAD}-byte cap"
    assert response.json()["error"] == "too_large" and "DFS_MAX_DOWNLOAD_BYTES" in response.json()["detail"]
    with limited.client() as client:
        assert client.get("/healthcheck").status_code == 200


# ---- 5: abandoned requests ----------------------------------------------------------------------------


def test_a_client_that_disconnects_has_its_work_cancelled(
    limited: LiveService, media_dir: Path, videos: dict[str, Path]
) -> None:
    """256 frames and 8 clip batches take the one processing slot for many seconds; the client leaves
    after 1 s. The work stops (the slot frees within seconds, fewer than the 8 batches ran), the
    cancellation is counted, and the next request is served."""
    cancelled = metric(limited, "dfs_requests_cancelled_total", endpoint="/predict")
    batches = metric(limited, "dfs_batch_size_count", model="ftcn")
    payload = json.dumps({"file_path": str(media_dir / "long.mp4")}).encode()
    with socket.create_connection(address(limited), timeout=10) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
        )
        time.sleep(1.0)
        assert metric(limited, "dfs_requests_in_flight") == 1, "the long request should be running"
    left = time.monotonic()
    deadline = left + 15
    while metric(limited, "dfs_requests_cancelled_total", endpoint="/predict") < cancelled + 1:
        assert time.monotonic() < deadline, "the abandoned request was not cancelled:\n" + limited.log_text()[-3000:]
        time.sleep(0.2)
    assert metric(limited, "dfs_requests_in_flight") == 0
    assert time.monotonic() - left < 10, "the slot freed only when the work would have ended anyway"
    time.sleep(1.0)  # a batch already running when the cancel came may still finish
    assert metric(limited, "dfs_batch_size_count", model="ftcn") - batches < 8, "the abandoned clips all ran"
    assert "disconnected; its work was cancelled" in limited.log_text()
    response = predict(limited, videos["one_face"], max_clips_per_track=1)
    assert response.status_code == 200, response.text


# ---- 6: slow-header connections ------------------------------------------------------------------------


def _closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1024) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_connections_trickling_headers_are_closed_while_the_service_answers(limited: LiveService) -> None:
    """20 clients send a request line and headers a byte at a time: each is closed after
    DFS_HEADER_TIMEOUT_S (they used to stay open for good), and /healthcheck answers meanwhile."""
    header = b"GET /healthcheck HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 200
    socks = [socket.create_connection(address(limited), timeout=5) for _ in range(20)]
    opened = time.monotonic()
    closed_after: dict[int, float] = {}
    healthy = []
    try:
        for position in range(len(header)):
            for number, sock in enumerate(socks):
                if number in closed_after:
                    continue
                if _closed_by_server(sock):
                    closed_after[number] = time.monotonic() - opened
                    continue
                try:
                    sock.setblocking(True)
                    sock.sendall(header[position : position + 1])
                except OSError:
                    closed_after[number] = time.monotonic() - opened
            if position == 2:
                healthy.append(httpx.get(f"{limited.base_url}/healthcheck", timeout=5).status_code)
            if len(closed_after) == len(socks) or time.monotonic() - opened > HEADER_TIMEOUT_S + 5:
                break
            time.sleep(0.1)
    finally:
        for sock in socks:
            sock.close()
    assert healthy == [200]
    assert len(closed_after) == len(socks), f"{len(socks) - len(closed_after)} slow connections stayed open"
    assert max(closed_after.values()) < HEADER_TIMEOUT_S + 3, closed_after


@pytest.mark.parametrize("path", ["/predict", "/predict/upload"])
def test_a_body_that_stops_arriving_gets_a_408_and_the_connection_closes(limited: LiveService, path: str) -> None:
    """Headers complete, then the start of a 1,000-byte body and silence: after DFS_BODY_TIMEOUT_S the
    server answers JSON 408 body_timeout and closes, for the JSON and the upload route alike."""
    if path == "/predict":
        kind, start = "application/json", b'{"file_pa'
    else:  # a well-formed multipart start, so the upload parser waits for the file's bytes
        kind = "multipart/form-data; boundary=b"
        start = b'--b\r\nContent-Disposition: form-data; name="file"; filename="v.mp4"\r\n\r\n\x00\x00\x00'
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {kind}\r\nContent-Length: 1000\r\n\r\n"
    with socket.create_connection(address(limited), timeout=5) as sock:
        sock.sendall(head.encode() + start)
        sent = time.monotonic()
        response = read_response(sock, timeout=BODY_TIMEOUT_S + 5)
        waited = time.monotonic() - sent
    assert response.startswith(b"HTTP/1.1 408"), response[:200]
    assert json_body(response)["error"] == "body_timeout" and b"connection: close" in response.lower()
    assert BODY_TIMEOUT_S - 0.2 < waited < BODY_TIMEOUT_S + 3, waited
    assert httpx.get(f"{limited.base_url}/healthcheck", timeout=5).status_code == 200


def test_after_100_continue_a_silent_upload_gets_the_408(limited: LiveService) -> None:
    """curl's large uploads send ``Expect: 100-continue`` and wait: the route asks for the body at
    once (100 Continue), and from then on the client's silence counts."""
    head = (
        "POST /predict/upload HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        "Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n"
    )
    with socket.create_connection(address(limited), timeout=5) as sock:
        sock.sendall(head.encode())
        response = read_response(sock, timeout=BODY_TIMEOUT_S + 5)
    assert response.startswith(b"HTTP/1.1 100 "), response[:200]
    final = response[response.index(b"\r\n\r\n") + 4 :]
    assert final.startswith(b"HTTP/1.1 408"), response[:300]
    assert json_body(final)["error"] == "body_timeout"


def test_a_slow_body_that_keeps_arriving_is_read_to_the_end(limited: LiveService) -> None:
    """The deadline is on silence, not on the whole body: bytes every 0.4 s for ~3 x DFS_BODY_TIMEOUT_S
    reach the route, which answers the (invalid) request as it would a fast one."""
    body = b'{"file_path": "", "models": ["ftcn"]}'
    head = (
        f"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    pieces = [body[i : i + 5] for i in range(0, len(body), 5)]
    with socket.create_connection(address(limited), timeout=5) as sock:
        sock.sendall(head.encode())
        for piece in pieces:
            time.sleep(0.4)
            sock.sendall(piece)
        assert len(pieces) * 0.4 > 2 * BODY_TIMEOUT_S
        response = read_response(sock, timeout=5)
    assert response.startswith(b"HTTP/1.1 422"), response[:300]
    assert json_body(response)["error"] == "invalid_request"  # the empty file_path, as a fast client is told


def test_idle_keepalive_connections_close_and_connections_are_capped(limited: LiveService) -> None:
    """DFS_KEEPALIVE_TIMEOUT_S closes an idle keep-alive connection; beyond DFS_MAX_CONNECTIONS new
    requests get a 503 until the header deadline has closed the idle connections."""
    with socket.create_connection(address(limited), timeout=5) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n")
        sent = time.monotonic()
        response = read_response(sock, timeout=6)  # the answer, then the server's close
        assert response.startswith(b"HTTP/1.1 200")
        assert time.monotonic() - sent < 4, "the idle keep-alive connection stayed open (uvicorn's default: 5 s)"
    idle = [socket.create_connection(address(limited), timeout=5) for _ in range(MAX_CONNECTIONS)]
    try:
        refused = httpx.get(f"{limited.base_url}/livez", timeout=5)
        assert refused.status_code == 503
        assert refused.json()["error"] == "too_many_connections", refused.text  # JSON, as every error
        assert refused.headers["retry-after"] == "1"
        time.sleep(HEADER_TIMEOUT_S + 1)
        assert httpx.get(f"{limited.base_url}/livez", timeout=5).status_code == 200
    finally:
        for sock in idle:
            sock.close()


# ---- 7: honest results --------------------------------------------------------------------------------


def test_a_truncated_video_is_scored_with_a_warning(limited: LiveService, media_dir: Path) -> None:
    response = predict(limited, media_dir / "cut_20.mp4")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["video"]["frames"] == 40 and body["video"]["frames_analyzed"] == 20
    assert any("only 20 of the 40 frames" in w and "truncated" in w for w in body["warnings"]), body["warnings"]


@pytest.mark.parametrize("name", ["cut_4.mp4", "still.gif"])
def test_too_few_frames_is_a_415(limited: LiveService, media_dir: Path, name: str) -> None:
    response = predict(limited, media_dir / name)
    assert response.status_code == 415, response.text
    body = response.json()
    assert body["error"] == "too_few_frames" and "DFS_MIN_DECODED_FRAMES" in body["detail"], body
