"""The repository's ensemble.json: the formula with a bias, which ensemble the service picks, the fit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from export.ensemble import ENSEMBLE_NAME, EnsembleFile
from export.fit_ensemble import fit, fit_weights
from export.manifest import Manifest
from export.served import VideoScores
from service.config import Settings
from service.ensemble import resolve
from service.model_repository import ModelVersion, RepositoryError
from service.pipeline import scores
from service.pipeline.scores import EnsembleWeights
from tests.conftest import REPO_ROOT

BUNDLE = REPO_ROOT / "model_repository"


def loaded_bundle() -> dict[str, ModelVersion]:
    out = {}
    for name in ("dcl", "ftcn"):
        folder = sorted(p for p in (BUNDLE / name).iterdir() if p.is_dir())[-1]
        out[name] = ModelVersion(name, int(folder.name), folder, Manifest.read(folder))
    return out


def ensemble_file(loaded: dict[str, ModelVersion], **changes: object) -> EnsembleFile:
    fields = {
        "weights": {"dcl": 0.8, "ftcn": 0.2},
        "bias": 0.7,
        "model_versions": {n: v.version for n, v in loaded.items()},
        "model_calibrations": {n: v.manifest.calibration.model_dump() for n, v in loaded.items()},
    }
    return EnsembleFile(**{**fields, **changes})


def test_bias_applies_only_to_the_combination_it_was_fitted_on() -> None:
    combination = EnsembleWeights({"a": 3.0, "b": 1.0, "c": 0.0}, bias=0.5, bias_models=frozenset({"a", "b"}))
    mean = (3 * scores.logit(0.9) + scores.logit(0.2)) / 4
    assert combination.combine({"a": 0.9, "b": 0.2}) == pytest.approx(scores.sigmoid(mean + 0.5))
    assert combination.combine({"a": 0.9, "b": 0.2, "c": 0.99}) == pytest.approx(scores.sigmoid(mean + 0.5))
    assert combination.combine({"a": 0.9}) == pytest.approx(0.9)  # another combination: no bias
    assert combination.combine({"c": 0.7}) == pytest.approx(0.7)  # only zero weights: their plain mean
    assert scores.ensemble({"a": 0.9, "b": 0.2}, {"a": 3.0}) == pytest.approx(scores.sigmoid(mean))


def test_the_file_is_applied_the_env_overrides_it_and_a_bad_file_fails_loading(tmp_path: Path) -> None:
    loaded = loaded_bundle()
    ensemble_file(loaded).write(tmp_path)
    served = resolve(Settings(model_repository=tmp_path), loaded)
    assert served.source == "ensemble.json" and not served.warnings
    assert dict(served.combination.weights) == {"dcl": 0.8, "ftcn": 0.2} and served.combination.bias == 0.7
    assert served.describe(list(loaded))["bias_applies_to"] == ["dcl", "ftcn"]

    explicit = resolve(Settings(model_repository=tmp_path, ensemble_weights="ftcn=2"), loaded)
    assert explicit.source == "DFS_ENSEMBLE_WEIGHTS" and explicit.combination.bias == 0
    assert explicit.combination.weight("ftcn") == 2 and explicit.combination.weight("dcl") == 1

    assert resolve(Settings(model_repository=tmp_path / "none"), loaded).source == "equal"
    (tmp_path / ENSEMBLE_NAME).write_text('{"weights": {"dcl": -1}, "model_versions": {"dcl": 1}}')
    with pytest.raises(RepositoryError, match="not a valid ensemble file"):
        resolve(Settings(model_repository=tmp_path), loaded)


def test_a_stale_or_partial_file_keeps_what_holds_warns_and_drops_the_bias(tmp_path: Path) -> None:
    loaded = loaded_bundle()
    versions = {n: v.version for n, v in loaded.items()}
    ensemble_file(loaded, model_versions={**versions, "ftcn": versions["ftcn"] + 1}).write(tmp_path)
    served = resolve(Settings(model_repository=tmp_path), loaded)
    assert served.combination.bias_for(["dcl", "ftcn"]) == 0
    assert dict(served.combination.weights) == {"dcl": 0.8, "ftcn": 0.8}  # the mean of those that hold
    assert any("ftcn" in w and "is loaded" in w for w in served.warnings)

    recalibrated = {n: dict(v.manifest.calibration.model_dump()) for n, v in loaded.items()}
    recalibrated["dcl"]["temperature"] *= 2
    ensemble_file(loaded, model_calibrations=recalibrated).write(tmp_path)
    served = resolve(Settings(model_repository=tmp_path), loaded)
    assert dict(served.combination.weights) == {"dcl": 0.2, "ftcn": 0.2} and served.combination.bias == 0
    assert any("calibration" in w for w in served.warnings)

    only_dcl = {"dcl": loaded["dcl"]}  # DFS_MODELS=dcl: the file names a model that is not loaded
    ensemble_file(loaded).write(tmp_path)
    served = resolve(Settings(model_repository=tmp_path), only_dcl)
    assert dict(served.combination.weights) == {"dcl": 0.8} and served.combination.bias == 0
    assert any("not loaded" in w for w in served.warnings)


def test_fit_gives_non_negative_weights_and_puts_the_decision_between_the_classes() -> None:
    rng = np.random.default_rng(0)
    labels = {f"v{i}": int(i % 3 != 0) for i in range(17)}
    tracks = {}
    for video, y in labels.items():
        good = 1.5 * (2 * y - 1) + rng.normal(0, 0.8)  # informative
        bad = -0.5 * (2 * y - 1) + rng.normal(0, 0.8)  # anti-correlated: must not get a negative weight
        tracks[video] = {"0": {"good": scores.sigmoid(good), "bad": scores.sigmoid(bad)}}
    video_scores = VideoScores(labels, tracks)
    fitted = fit(video_scores, ["bad", "good"])
    assert (
        fitted.weights["good"] > 0.9 and fitted.weights["bad"] >= 0 and sum(fitted.weights.values()) == pytest.approx(1)
    )
    assert fitted.coefficients["bad"] < 0 and fitted.fallback is None and fitted.videos == 17
    served = video_scores.ensemble(fitted.combination)
    fnr = np.mean([served[v] < 0.5 for v, y in labels.items() if y == 1])
    fpr = np.mean([served[v] >= 0.5 for v, y in labels.items() if y == 0])
    assert abs(fnr - fpr) <= 1 / 6 + 1e-9  # at the equal-error point, to one video of the smaller class
    assert not any(math.isclose(p, 0.5) for p in served.values())  # no video on the boundary

    weights, _, fallback = fit_weights(np.array([[1.0], [-1.0]]), np.array([0, 1]), ["anti"])
    assert weights == {"anti": 1.0} and fallback == "no model's coefficient is positive"
