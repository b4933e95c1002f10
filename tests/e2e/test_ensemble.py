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
            subset = client.post(
                "/predict", json={"file_path": file_server.url("one_face.mp4"), "models": ["dcl", "lib"]}
            ).json()
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


# --- the repository's ensemble.json, served -----------------------------------------------------

SHARED_VIDEO = "wild_fake_Obama.mp4"  # one face over the first frames: every model scores its track


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


@pytest.fixture(scope="module")
def bundle_with_ensemble(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float], float]:
    """The default bundle's trained DCL + FTCN, copied, with an ensemble.json of deliberately unequal weights."""
    import shutil

    from export.ensemble import EnsembleFile
    from export.manifest import Manifest
    from tests.conftest import REPO_ROOT

    repository = tmp_path_factory.mktemp("bundle") / "model_repository"
    for name in ("dcl", "ftcn"):  # two models keep the service quick; the bundle's own ensemble.json stays behind
        shutil.copytree(REPO_ROOT / "model_repository" / name, repository / name)
    folders = {name: sorted(p for p in (repository / name).iterdir() if p.is_dir())[-1] for name in ("dcl", "ftcn")}
    weights, bias = {"dcl": 0.85, "ftcn": 0.15}, 0.6
    EnsembleFile(
        weights=weights,
        bias=bias,
        model_versions={name: int(folder.name) for name, folder in folders.items()},
        model_calibrations={name: Manifest.read(folder).calibration.model_dump() for name, folder in folders.items()},
        fitted_on={"command": "written by the test"},
    ).write(repository)
    return repository, weights, bias


def serve_shared_video(
    repository: Path, shared_data: Path, log: Path, extra: dict[str, str] | None = None
) -> tuple[dict, list, dict]:
    """/ensemble, /models and one /predict of the shared video from a real service on ``repository``."""
    service = start_service(
        {
            "DFS_MODEL_REPOSITORY": str(repository),
            "DFS_LOCAL_ROOTS": str(shared_data),
            "DFS_FACE_DETECTOR": "blazeface",
            "DFS_MAX_FRAMES": "64",
            "DFS_MAX_CLIPS_PER_TRACK": "1",
            "DFS_FRAMES_PER_TRACK": "4",
            **(extra or {}),
        },
        log,
    )
    try:
        with service.client() as client:
            served = client.get("/ensemble").json()
            models = client.get("/models").json()
            response = client.post("/predict", json={"file_path": str(shared_data / "videos" / SHARED_VIDEO)})
    finally:
        stop_service(service)
    assert response.status_code == 200, response.text
    return served, models, response.json()


def both_models_faces(body: dict) -> list[dict]:
    faces = [f for f in body["faces"] if sorted(f["models"]) == ["dcl", "ftcn"]]
    assert faces, body["faces"]
    return faces


def test_the_repository_ensemble_is_served_with_its_weights_and_bias(
    bundle_with_ensemble: tuple[Path, dict[str, float], float], shared_data: Path, tmp_path: Path
) -> None:
    repository, weights, bias = bundle_with_ensemble
    served, models, body = serve_shared_video(repository, shared_data, tmp_path / "service.log")

    assert served["source"] == "ensemble.json" and served["path"] == "ensemble.json"
    assert served["weights"] == pytest.approx(weights) and served["bias"] == pytest.approx(bias)
    assert served["bias_applies_to"] == ["dcl", "ftcn"] and served["warnings"] == []
    assert served["fitted"]["fitted_on"]["command"] == "written by the test"
    assert {m["name"]: m["ensemble_weight"] for m in models} == pytest.approx(weights)
    for face in both_models_faces(body):
        p = {name: s["score"] for name, s in face["models"].items()}
        expected = sigmoid(sum(w * logit(p[n]) for n, w in weights.items()) / sum(weights.values()) + bias)
        assert face["score"] == pytest.approx(expected, abs=1e-5)
        equal = sigmoid(sum(logit(v) for v in p.values()) / 2)
        assert abs(face["score"] - equal) > 1e-3  # the file changed the score: not the equal-weight formula
    assert body["df_probability"] == max(f["score"] for f in body["faces"])


def test_dfs_ensemble_weights_overrides_the_repository_ensemble(
    bundle_with_ensemble: tuple[Path, dict[str, float], float], shared_data: Path, tmp_path: Path
) -> None:
    repository, _, _ = bundle_with_ensemble
    explicit = {"dcl": 1.0, "ftcn": 3.0}
    served, models, body = serve_shared_video(
        repository, shared_data, tmp_path / "service.log", {"DFS_ENSEMBLE_WEIGHTS": "dcl=1,ftcn=3"}
    )

    assert served["source"] == "DFS_ENSEMBLE_WEIGHTS" and served["path"] is None
    assert served["weights"] == pytest.approx(explicit) and served["bias"] == 0 and served["fitted"] is None
    assert {m["name"]: m["ensemble_weight"] for m in models} == pytest.approx(explicit)
    for face in both_models_faces(body):
        p = {name: s["score"] for name, s in face["models"].items()}
        expected = sigmoid(sum(w * logit(p[n]) for n, w in explicit.items()) / sum(explicit.values()))
        assert face["score"] == pytest.approx(expected, abs=1e-5)
