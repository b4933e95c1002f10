"""Fixtures for the fuzzers: a folder of real and broken media, and a live service reading it.

The service runs a copy of the shipped default bundle (``model_repository/``, already exported; its
DCL and FTCN: a frame and a clip model), not ``tests/conftest.py``'s ``ftcn_repository``: exporting
that one costs about a CPU minute (six on a busy 2-core machine), more than the fuzzers are allowed.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.launcher import LiveService, start_service, stop_service
from tests import media
from tests.conftest import REPO_ROOT

BUNDLE = REPO_ROOT / "model_repository"

#: Small limits: each fuzz case that reaches the models stays well under a second on CPU.
FUZZ_ENV = {
    "DFS_MAX_FRAMES": "16",
    "DFS_MAX_CLIPS_PER_TRACK": "1",
    "DFS_FRAMES_PER_TRACK": "2",
    "DFS_MAX_DOWNLOAD_BYTES": str(1024 * 1024),
    "DFS_FETCH_TIMEOUT_S": "2",
    "DFS_BATCH_MAX_WAIT_MS": "5",
    "DFS_ALLOW_PRIVATE_URLS": "false",  # every URL that parses is refused before a connection (loopback only)
    # one frame model and the clip model: the paths of all five, at two models' cost per scored case
    # (the bundle's ensemble.json names all five: applied as far as it holds, which is fuzzed too)
    "DFS_MODELS": "dcl,ftcn",
}


def write_fuzz_media(folder: Path) -> dict[str, Path]:
    """Good and bad inputs the fuzzed requests may name: a short face video and the usual suspects."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "face": media.face_video(folder / "face.mp4", faces=1, frames=16, face_size=96),
        "no_face": media.no_face_video(folder / "no_face.mp4", frames=12),
        "audio_only": media.audio_only_file(folder / "audio_only.mp4", seconds=0.3),
        "still_gif": media.still_gif(folder / "still.gif", size=32),
    }
    (folder / "empty.mp4").write_bytes(b"")
    files["empty"] = folder / "empty.mp4"
    whole = files["face"].read_bytes()
    (folder / "truncated.mp4").write_bytes(whole[: len(whole) // 3])
    files["truncated"] = folder / "truncated.mp4"
    ok, png = cv2.imencode(".png", media.astronaut_face(32))
    assert ok
    (folder / "image.mp4").write_bytes(png.tobytes())
    files["png_named_mp4"] = folder / "image.mp4"
    return files


@pytest.fixture(scope="session")
def fuzz_media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_fuzz_media(tmp_path_factory.mktemp("fuzz-media"))


@pytest.fixture(scope="session")
def fuzz_service(fuzz_media: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """The real server (uvicorn, HTTP, batchers) on loopback, reading ``fuzz_media``'s folder."""
    if not any(BUNDLE.glob("*/*/manifest.json")):
        pytest.skip(f"no default bundle in {BUNDLE}")
    root = fuzz_media["face"].parent
    bundle = tmp_path_factory.mktemp("fuzz-bundle") / "model_repository"
    shutil.copytree(BUNDLE, bundle)  # a snapshot: a training run may be rewriting the bundle meanwhile
    env = {
        **FUZZ_ENV,
        "DFS_MODEL_REPOSITORY": str(bundle),
        "DFS_LOCAL_ROOTS": str(root),
        "DFS_TEMP_DIR": str(tmp_path_factory.mktemp("fuzz-staging")),
        "DFS_DATA_DIR": str(tmp_path_factory.mktemp("fuzz-jobs")),
    }  # POST /jobs's database, not ./data
    service = start_service(env, tmp_path_factory.mktemp("fuzz-logs") / "service.log")
    yield service
    stop_service(service)
