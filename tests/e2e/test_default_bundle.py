"""The committed default model bundle (model_repository/) loads and serves a shared video.

This is what `python -m service` runs on a fresh machine; see training/RECIPES.md for how the
models were trained on the corpus and what their manifests measured. The checks here are on
what was recorded and served, never on the scores' values: CI does not retrain.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from export.manifest import Manifest
from tests.conftest import REPO_ROOT, start_service, stop_service

pytestmark = pytest.mark.slow

BUNDLE = REPO_ROOT / "model_repository"


def _manifests() -> dict[str, Manifest]:
    """The highest version of each model, as the service picks it."""
    latest: dict[str, Path] = {}
    for manifest in BUNDLE.glob("*/*/manifest.json"):
        model, version = manifest.parent.parent.name, manifest.parent
        if model not in latest or int(version.name) > int(latest[model].name):
            latest[model] = version
    return {model: Manifest.read(folder) for model, folder in latest.items()}


def _ensemble_file() -> dict:
    return json.loads((BUNDLE / "ensemble.json").read_text())


def test_manifests_record_how_each_model_was_made_and_measured() -> None:
    manifests = _manifests()
    from models import create_model, get_spec, list_models

    assert set(manifests) <= set(list_models()) and len(manifests) >= 4, sorted(manifests)
    for name, manifest in manifests.items():
        assert not manifest.untrained and manifest.source.layout == "ours", name
        assert manifest.weights_dtype == "float16", name
        assert manifest.parity.max_abs_diff_prob <= manifest.parity.tolerance_prob, name
        assert manifest.command and manifest.command.startswith("python -m export"), name
        training = manifest.metrics["training"]["command"]
        # trained on the corpus's labelled fakes and on blends of its reals
        assert training.startswith("python -m training.train") and "--fakes both" in training, name
        # calibrated through the serving pipeline on the val split (identities never trained on)
        served = manifest.metrics["calibration_served"]
        assert "--split val" in served["command"] and served["videos"] >= 10, name
        assert 0 < manifest.calibration.threshold < 1 and manifest.calibration.temperature > 0
        # the recorded constructor options rebuild the exported architecture (torch runtime, benchmarks)
        rebuilt = create_model(name, **manifest.source.model_kwargs)
        assert (getattr(rebuilt, "spec", None) or get_spec(name)) == manifest.model_spec(), name
    total = sum(p.stat().st_size for p in BUNDLE.rglob("*") if p.is_file())
    assert total < 100e6, f"the bundle should stay light, it is {total / 1e6:.1f} MB"


def test_recorded_variants_say_what_they_change_and_none_that_moves_an_auc_competes() -> None:
    """The bf16 entries (python -m export.quantize --precision bf16): own and ensemble AUC both ways."""
    from export.manifest import MAX_AUC_DELTA

    for name, manifest in _manifests().items():
        for variant in manifest.variants:
            assert variant.auc is not None and variant.auc_fp32 is not None, name
            assert variant.ensemble_auc is not None and variant.ensemble_auc_fp32 is not None, name
            moved = max(abs(variant.auc - variant.auc_fp32), abs(variant.ensemble_auc - variant.ensemble_auc_fp32))
            assert variant.quality_kept() == (moved <= MAX_AUC_DELTA + 1e-9), (name, variant)
            if variant.precision == "bf16":
                assert (variant.file, variant.runtime) == (manifest.file, "openvino"), name
    # The models that compete in a precision were measured together: each names the same set, itself in it
    for precision in ("int8", "bf16"):
        competing = {
            name: variant
            for name, manifest in _manifests().items()
            for variant in manifest.variants
            if variant.precision == precision and variant.quality_kept()
        }
        for name, variant in competing.items():
            assert variant.ensemble_with is not None and set(variant.ensemble_with) == set(competing), (name, variant)


def test_repository_carries_an_ensemble_fitted_on_its_models() -> None:
    ensemble = _ensemble_file()
    manifests = _manifests()
    assert set(ensemble["weights"]) == set(manifests)
    assert all(w >= 0 for w in ensemble["weights"].values()) and sum(ensemble["weights"].values()) > 0
    assert ensemble["model_versions"] == {name: m.version for name, m in manifests.items()}
    assert ensemble["fitted_on"]["split"] == "val"


def test_default_bundle_serves_a_shared_video_with_its_ensemble(shared_data: Path, tmp_path: Path) -> None:
    service = start_service(
        {
            "DFS_MODEL_REPOSITORY": str(BUNDLE),
            "DFS_LOCAL_ROOTS": str(shared_data),
            "DFS_MAX_CLIPS_PER_TRACK": "1",
            "DFS_FRAMES_PER_TRACK": "4",
        },
        tmp_path / "service.log",
    )
    expected = sorted(_manifests())
    try:
        with service.client() as client:
            models = client.get("/models").json()
            assert sorted(m["name"] for m in models) == expected
            assert not any(m["untrained"] for m in models)
            # each model's measured variants are listed with whether auto may serve them, and auto honours it
            for model in models:
                for variant in model["variants"]:
                    if not variant["competes_under_auto"]:
                        assert not model["runtime"].endswith(f":{variant['precision']}"), model
            served_ensemble = client.get("/ensemble").json()
            response = client.post("/predict", json={"file_path": str(shared_data / "videos" / "wild_fake_Putin.mp4")})
    finally:
        stop_service(service)
    assert served_ensemble["source"] == "ensemble.json" and not served_ensemble["warnings"], served_ensemble
    assert served_ensemble["weights"] == pytest.approx(_ensemble_file()["weights"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["faces"], body
    assert sorted(body["models"]) == expected
    assert all(0 <= m["score"] <= 1 for m in body["models"].values())
    assert 0 <= body["df_probability"] <= 1 and body["prediction"] in ("REAL", "FAKE")
    assert not any("untrained" in w.lower() for w in body["warnings"]), body["warnings"]
    # the recorded weights are what combined each face's per-model scores
    weights, bias = served_ensemble["weights"], served_ensemble["bias"]
    for face in body["faces"]:
        scores = {name: m["score"] for name, m in face["models"].items()}
        total = sum(weights[n] for n in scores)
        mean = sum(weights[n] * math.log(p / (1 - p)) for n, p in scores.items()) / total
        applies = set(served_ensemble["bias_applies_to"]) == {n for n in scores if weights[n] > 0}
        expected_score = 1 / (1 + math.exp(-(mean + (bias if applies else 0.0))))
        assert face["score"] == pytest.approx(expected_score, abs=1e-6)
