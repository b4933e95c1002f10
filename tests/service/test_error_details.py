"""Error details are read by strangers: they name what the caller sent, never a server-side path."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.errors import NotAVideo
from service.pipeline import decode


@pytest.mark.parametrize("content", [b"", b"\x00not a video\x00" * 300], ids=["empty", "junk"])
def test_decode_errors_do_not_name_the_file(tmp_path: Path, content: bytes) -> None:
    """PyAV appends the file name to FFmpeg's message; for a download that is the staging path."""
    staged = tmp_path / "dfs-fetch-internal" / "video"
    staged.parent.mkdir()
    staged.write_bytes(content)
    with pytest.raises(NotAVideo) as info:
        decode.probe(staged, max_side=8192, max_duration_s=3600)
    assert "dfs-fetch-internal" not in info.value.detail and str(tmp_path) not in info.value.detail
    assert info.value.detail.startswith("not a readable media file: ")


def test_unloaded_models_do_not_reveal_the_repository_path(tmp_path: Path) -> None:
    """/healthcheck's reason and /predict's 503 name the setting, not the folder; the log keeps it."""
    missing = tmp_path / "internal-models"
    app = create_app(Settings(model_repository=missing, device="cpu", face_detector="blazeface"))
    with TestClient(app) as client:
        deadline = time.monotonic() + 120
        while (health := client.get("/healthcheck").json())["reason"] == "models are loading":
            assert time.monotonic() < deadline, "model loading never finished"
            time.sleep(0.2)
        predict = client.post("/predict", json={"file_path": "http://127.0.0.1:9/x.mp4"})
    assert health["healthy"] is False and "DFS_MODEL_REPOSITORY" in health["reason"], health
    assert predict.status_code == 503 and predict.json()["error"] == "not_ready"
    for text in (health["reason"], predict.json()["detail"]):
        assert "internal-models" not in text and str(tmp_path) not in text, text
    assert str(missing) in app.state.serving.reason, "the operator's log keeps the full reason"
