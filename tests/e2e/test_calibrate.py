"""``python -m export.calibrate`` fits a deployed model on labelled videos through the serving pipeline,
and the calibration it writes gives, when served, the operating point it reported."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import pytest

from export.calibrate import main as calibrate_main
from export.ensemble import EnsembleFile
from export.manifest import Manifest
from tests.conftest import REPO_ROOT, start_service, stop_service

pytestmark = pytest.mark.slow

VIDEOS = {  # two fakes and two reals of the shared media, other footage than the bundle trained on
    "wild_fake_Obama.mp4": "fake",
    "wild_fake_Reagan.mp4": "fake",
    "wild_real_Obama.mp4": "real",
    "wild_real_Bateman.mp4": "real",
}


def test_calibration_fitted_as_served_and_written_into_the_manifest(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = tmp_path / "repo"
    bundle = sorted(p for p in (REPO_ROOT / "model_repository" / "dcl").iterdir() if p.is_dir())[-1]
    shutil.copytree(bundle, repository / "dcl" / bundle.name)
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "path"])
        writer.writerows([label, str(shared_data / "videos" / name)] for name, label in VIDEOS.items())
    monkeypatch.setenv("DFS_MAX_FRAMES", "48")
    monkeypatch.setenv("DFS_FACE_DETECTOR", "blazeface")

    first = tmp_path / "first.json"
    assert (
        calibrate_main(["--repository", str(repository), "--labels", str(labels), "--json", str(first), "--write"]) == 0
    )
    fitted = json.loads(first.read_text())["dcl"]
    assert fitted["videos"] == len(VIDEOS) and fitted["items"] >= len(VIDEOS)
    manifest = Manifest.read(repository / "dcl" / bundle.name)
    assert manifest.calibration.model_dump() == pytest.approx(fitted["after"]["calibration"])
    assert manifest.metrics["calibration_served"]["videos"] == len(VIDEOS)
    after = fitted["after"]["videos_at_calibrated_threshold"]

    # Served again with the written calibration, the same videos land where the fit said they would.
    second = tmp_path / "second.json"
    assert calibrate_main(["--repository", str(repository), "--labels", str(labels), "--json", str(second)]) == 0
    served = json.loads(second.read_text())["dcl"]["before"]
    assert served["calibration"] == pytest.approx(fitted["after"]["calibration"])
    assert served["videos_at_calibrated_threshold"] == pytest.approx(after)
    for video, row in fitted["after"]["per_video"].items():
        assert served["per_video"][video]["service_score"] == pytest.approx(row["service_score"], abs=1e-4)


def test_calibrate_writes_the_ensemble_the_service_then_serves(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both bundle models: ensemble.json is written valid, and served it gives the scores the fit reported."""
    repository = tmp_path / "repo"
    for name in ("dcl", "ftcn"):
        bundle = sorted(p for p in (REPO_ROOT / "model_repository" / name).iterdir() if p.is_dir())[-1]
        shutil.copytree(bundle, repository / name / bundle.name)
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "path", "split"])
        writer.writerows([label, str(shared_data / "videos" / name), "val"] for name, label in VIDEOS.items())
        writer.writerow(["real", str(shared_data / "videos" / "wild_real_Clinton.mp4"), "train"])  # not in --split val
    for key, value in {
        "DFS_MAX_FRAMES": "48",
        "DFS_FACE_DETECTOR": "blazeface",
        "DFS_MAX_CLIPS_PER_TRACK": "1",
        "DFS_FRAMES_PER_TRACK": "4",
    }.items():
        monkeypatch.setenv(key, value)

    report = tmp_path / "report.json"
    assert (
        calibrate_main(
            [
                "--repository",
                str(repository),
                "--labels",
                str(labels),
                "--split",
                "val",
                "--json",
                str(report),
                "--write",
            ]
        )
        == 0
    )
    ensemble = EnsembleFile.read(repository)
    assert ensemble is not None and ensemble.model_dump(mode="json") == json.loads(report.read_text())["ensemble"]
    assert sorted(ensemble.weights) == ["dcl", "ftcn"] and sum(ensemble.weights.values()) == pytest.approx(1)
    assert all(w >= 0 for w in ensemble.weights.values())
    for name in ("dcl", "ftcn"):
        folder = sorted(p for p in (repository / name).iterdir() if p.is_dir())[-1]
        assert ensemble.model_versions[name] == int(folder.name)
        assert ensemble.model_calibrations[name] == Manifest.read(folder).calibration.model_dump()
    assert ensemble.fitted_on["labels_sha256"] == hashlib.sha256(labels.read_bytes()).hexdigest()
    assert ensemble.fitted_on["split"] == "val" and ensemble.fitted_on["videos"] == len(VIDEOS)
    assert "--write" in ensemble.fitted_on["command"]
    fitted = ensemble.metrics["fitted"]
    assert fitted["n"] == len(VIDEOS) and set(fitted) >= {"auc", "ap", "eer", "accuracy"}
    assert ensemble.threshold == pytest.approx(1 / (1 + math.exp(ensemble.bias)))
    crossed = ensemble.metrics["cross_validated"]  # leave one identity out, each AUC with its interval
    assert "ensemble" in crossed["auc"] and set(crossed["auc_interval_95"]) == set(crossed["auc"])
    assert all(low <= crossed["auc"][n] <= high for n, (low, high) in crossed["auc_interval_95"].items())

    # The service picks it up as fitted (no warning: versions and calibrations match) and serves what it reported.
    video = shared_data / "videos" / "wild_fake_Obama.mp4"
    service = start_service(
        {"DFS_MODEL_REPOSITORY": str(repository), "DFS_LOCAL_ROOTS": str(shared_data)}, tmp_path / "service.log"
    )
    try:
        with service.client() as client:
            served = client.get("/ensemble").json()
            body = client.post("/predict", json={"file_path": str(video)}).json()
    finally:
        stop_service(service)
    assert served["source"] == "ensemble.json" and served["warnings"] == []
    assert served["bias"] == pytest.approx(ensemble.bias)
    reported = ensemble.metrics["per_video"][os.path.relpath(video, labels.parent)]["score"]
    assert body["df_probability"] == pytest.approx(reported, abs=1e-3)


def test_unreadable_label_lists_are_refused_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The library raises ServedRunError; the command prints it and exits 2, without a traceback."""
    from export.served import ServedRunError, labelled

    assert calibrate_main(["--labels", str(tmp_path / "missing.csv")]) == 2
    assert "No such file" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("label,path\nmaybe,x.mp4\n")
    assert calibrate_main(["--labels", str(bad)]) == 2
    assert "line 2: unknown label 'maybe'" in capsys.readouterr().err
    with pytest.raises(ServedRunError, match="no videos in split 'val'"):
        labelled(_one_train_row(tmp_path), "val")


def _one_train_row(tmp_path: Path) -> Path:
    """A label list whose only row is in the train split."""
    (tmp_path / "x.mp4").write_bytes(b"")
    listed = tmp_path / "train_only.csv"
    listed.write_text("label,path,split\nreal,x.mp4,train\n")
    return listed
