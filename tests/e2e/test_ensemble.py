"""All five detectors served together: per-model scores and the documented ensemble formula."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.conftest import FileServer, start_service, stop_service

pytestmark = pytest.mark.slow

ALL = ["advgame", "dcl", "ftcn", "lib", "pcl_i2g"]


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_five_models_and_the_ensemble_formula(full_repository: Path, file_server: FileServer, tmp_path: Path) -> None:
    weights = {"ftcn": 2.0, "dcl": 0.5}
    service = start_service(
        {
            "DFS_MODEL_REPOSITORY": str(full_repository),
            "DFS_ALLOW_PRIVATE_URLS": "true",
            "DFS_MAX_CLIPS_PER_TRACK": "1",
            "DFS_FRAMES_PER_TRACK": "3",
            "DFS_ENSEMBLE_WEIGHTS": ",".join(f"{k}={v}" for k, v in weights.items()),
        },
        tmp_path / "service.log",
    )
    try:
        with service.client() as client:
            models = client.get("/models").json()
            assert sorted(m["name"] for m in models) == ALL
            assert all(m["untrained"] == (m["name"] != "ftcn") for m in models)
            body = client.post("/predict", json={"file_path": file_server.url("two_faces.mp4")}).json()
            subset = client.post("/predict", json={"file_path": file_server.url("one_face.mp4"), "models": ["dcl", "lib"]}).json()
    finally:
        stop_service(service)

    assert sorted(body["models"]) == ALL
    assert body["models"]["ftcn"]["clips"] == 2 and body["models"]["dcl"]["frames"] == 6  # 2 tracks
    assert len(body["faces"]) == 2
    for face in body["faces"]:
        per_model = {name: s["score"] for name, s in face["models"].items()}
        assert sorted(per_model) == ALL
        assert face["models"]["pcl_i2g"]["items"] == 3
        total = sum(weights.get(n, 1.0) for n in per_model)
        expected = 1 / (1 + math.exp(-sum(weights.get(n, 1.0) * logit(p) for n, p in per_model.items()) / total))
        assert face["score"] == pytest.approx(expected, abs=1e-5)
    assert body["df_probability"] == max(f["score"] for f in body["faces"])
    for name in ALL:
        assert body["models"][name]["score"] == max(f["models"][name]["score"] for f in body["faces"])
    assert len(body["warnings"]) == 4  # the random-init frame models are flagged
    assert sorted(subset["models"]) == ["dcl", "lib"]
    assert all(sorted(f["models"]) == ["dcl", "lib"] for f in subset["faces"])
