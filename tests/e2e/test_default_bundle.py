"""The committed default model bundle (model_repository/) loads and serves a shared video.

This is what `python -m service` runs on a fresh machine; see training/RECIPES.md for how the
models were trained and what their manifests measured.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from export.manifest import Manifest
from tests.conftest import REPO_ROOT, start_service, stop_service

pytestmark = pytest.mark.slow

BUNDLE = REPO_ROOT / "model_repository"
EXPECTED = ["dcl", "ftcn"]


def _manifests() -> dict[str, Manifest]:
    """The highest version of each model, as the service picks it."""
    latest: dict[str, Path] = {}
    for manifest in BUNDLE.glob("*/*/manifest.json"):
        model, version = manifest.parent.parent.name, manifest.parent
        if model not in latest or int(version.name) > int(latest[model].name):
            latest[model] = version
    return {model: Manifest.read(folder) for model, folder in latest.items()}


def test_manifests_record_how_each_model_was_made_and_measured() -> None:
    manifests = _manifests()
    assert sorted(manifests) == EXPECTED
    for name, manifest in manifests.items():
        assert not manifest.untrained and manifest.source.layout == "ours", name
        assert manifest.weights_dtype == "float16", name
        assert manifest.parity.max_abs_diff_prob <= manifest.parity.tolerance_prob, name
        assert manifest.command and manifest.command.startswith("python -m export"), name
        training = manifest.metrics["training"]
        assert training["command"].startswith("python -m training.train") and "--fakes blended" in training["command"]
        held_out = manifest.metrics["evaluate_test"]
        assert held_out["videos"]["n"] == 12 and 0 <= held_out["videos"]["auc"] <= 1
        assert 0 < manifest.calibration.threshold < 1 and manifest.calibration.temperature > 0
        # the recorded constructor options rebuild the exported architecture (torch runtime, benchmarks)
        from models import create_model, get_spec

        rebuilt = create_model(name, **manifest.source.model_kwargs)
        assert (getattr(rebuilt, "spec", None) or get_spec(name)) == manifest.model_spec(), name
    total = sum(p.stat().st_size for p in BUNDLE.rglob("*") if p.is_file())
    assert total < 50e6, f"the bundle should stay light, it is {total / 1e6:.1f} MB"


def test_default_bundle_serves_a_shared_video(shared_data: Path, tmp_path: Path) -> None:
    service = start_service(
        {
            "DFS_MODEL_REPOSITORY": str(BUNDLE),
            "DFS_LOCAL_ROOTS": str(shared_data),
            "DFS_MAX_CLIPS_PER_TRACK": "1",
            "DFS_FRAMES_PER_TRACK": "4",
        },
        tmp_path / "service.log",
    )
    try:
        with service.client() as client:
            models = client.get("/models").json()
            assert sorted(m["name"] for m in models) == EXPECTED
            assert not any(m["untrained"] for m in models)
            response = client.post("/predict", json={"file_path": str(shared_data / "videos" / "wild_fake_Putin.mp4")})
    finally:
        stop_service(service)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["faces"], body
    assert sorted(body["models"]) == EXPECTED
    assert all(0 <= m["score"] <= 1 for m in body["models"].values())
    assert 0 <= body["df_probability"] <= 1 and body["prediction"] in ("REAL", "FAKE")
    assert not any("untrained" in w.lower() for w in body["warnings"]), body["warnings"]
