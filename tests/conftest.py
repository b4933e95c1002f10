"""Shared fixtures: test media, a loopback file server, exported engines, a live service process."""

from __future__ import annotations

import http.server
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.launcher import LiveService, free_port, start_service, stop_service
from tests import media

__all__ = ["LiveService", "free_port", "start_service", "stop_service"]  # re-exported for the e2e tests

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (test media and RetinaFace weights)."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"shared test media not found at {path}")
    return path


@pytest.fixture(scope="session")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real H.264 MP4s and broken files, written once per test session."""
    folder = tmp_path_factory.mktemp("videos")
    files = {
        "one_face": media.face_video(folder / "one_face.mp4", faces=1),
        "two_faces": media.face_video(folder / "two_faces.mp4", faces=2),
        "no_face": media.no_face_video(folder / "no_face.mp4"),
        "audio_only": media.audio_only_file(folder / "audio_only.mp4"),
    }
    (folder / "empty.mp4").write_bytes(b"")
    files["empty"] = folder / "empty.mp4"
    whole = files["one_face"].read_bytes()
    (folder / "truncated.mp4").write_bytes(whole[: len(whole) // 3])
    files["truncated"] = folder / "truncated.mp4"
    png = media.astronaut_face(64)
    import cv2

    ok, encoded = cv2.imencode(".png", png)
    assert ok
    (folder / "image.mp4").write_bytes(encoded.tobytes())
    files["png_named_mp4"] = folder / "image.mp4"
    (folder / "large.mp4").write_bytes(os.urandom(3 * 1024 * 1024))
    files["large"] = folder / "large.mp4"
    return files


class _MediaHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the media folder, plus /stall (never sends a body) and /redirect?to=URL."""

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        if self.path.startswith("/stall"):
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"\x00" * 10)
            self.wfile.flush()
            time.sleep(30)
            return
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.end_headers()
            return
        super().do_GET()


@dataclass
class FileServer:
    base_url: str
    folder: Path

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"


@pytest.fixture(scope="session")
def file_server(videos: dict[str, Path]) -> Iterator[FileServer]:
    """A real HTTP server on 127.0.0.1 serving the test videos."""
    folder = videos["one_face"].parent

    def handler(*args: object, **kwargs: object) -> _MediaHandler:
        return _MediaHandler(*args, directory=str(folder), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield FileServer(f"http://127.0.0.1:{server.server_address[1]}", folder)
    server.shutdown()


@pytest.fixture(scope="session")
def ftcn_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding FTCN exported from a random-init checkpoint in the official layout."""
    import torch

    from export.__main__ import export_model
    from models import create_model

    folder = tmp_path_factory.mktemp("repo")
    torch.manual_seed(0)
    model = create_model("ftcn")
    checkpoint = folder / "ftcn_tt.pth"
    # the official release is a bare state_dict saved from DataParallel
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, checkpoint)
    export_model("ftcn", folder / "model_repository", checkpoint=checkpoint)
    return folder / "model_repository"


@pytest.fixture(scope="session")
def full_repository(ftcn_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All five detectors: FTCN from the fixture above plus the four frame models, random init."""
    import shutil

    from export.__main__ import export_model

    folder = tmp_path_factory.mktemp("full") / "model_repository"
    shutil.copytree(ftcn_repository, folder)
    for name in ("pcl_i2g", "dcl", "lib", "advgame"):
        export_model(name, folder, random_init=True, seed=3)
    return folder


@pytest.fixture(scope="session")
def live_service(
    ftcn_repository: Path, videos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveService]:
    """The service with FTCN, loopback fetches allowed (the default refuses them), small limits."""
    logs = tmp_path_factory.mktemp("logs")
    roots = [str(videos["one_face"].parent)] + ([str(SHARED / "data")] if (SHARED / "data").is_dir() else [])
    service = start_service(
        {
            "DFS_MODEL_REPOSITORY": str(ftcn_repository),
            "DFS_ALLOW_PRIVATE_URLS": "true",
            "DFS_LOCAL_ROOTS": ",".join(roots),
            "DFS_MAX_DOWNLOAD_BYTES": str(2 * 1024 * 1024),
            "DFS_FETCH_TIMEOUT_S": "3",
            "DFS_MAX_CLIPS_PER_TRACK": "1",
            "DFS_BATCH_MAX_WAIT_MS": "200",
            "DFS_MAX_CONCURRENT_REQUESTS": "8",
        },
        logs / "service.log",
    )
    yield service
    stop_service(service)
