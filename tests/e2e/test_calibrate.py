"""``python -m export.calibrate`` fits a deployed model on labelled videos through the serving pipeline,
and the calibration it writes gives, when served, the operating point it reported."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from export.calibrate import main as calibrate_main
from export.manifest import Manifest
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

VIDEOS = {  # two fakes and two reals of the shared media, other footage than the bundle trained on
    "wild_fake_Obama.mp4": "fake", "wild_fake_Reagan.mp4": "fake",
    "wild_real_Obama.mp4": "real", "wild_real_Bateman.mp4": "real",
}


def test_calibration_fitted_as_served_and_written_into_the_manifest(shared_data: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    repository = tmp_path / "repo"
    bundle = sorted((REPO_ROOT / "model_repository" / "dcl").iterdir())[-1]
    shutil.copytree(bundle, repository / "dcl" / bundle.name)
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "path"])
        writer.writerows([label, str(shared_data / "videos" / name)] for name, label in VIDEOS.items())
    monkeypatch.setenv("DFS_MAX_FRAMES", "48")
    monkeypatch.setenv("DFS_FACE_DETECTOR", "blazeface")

    first = tmp_path / "first.json"
    assert calibrate_main(["--repository", str(repository), "--labels", str(labels), "--json", str(first),
                           "--write"]) == 0
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


def test_unreadable_label_lists_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="No such file"):
        calibrate_main(["--labels", str(tmp_path / "missing.csv")])
    bad = tmp_path / "bad.csv"
    bad.write_text("label,path\nmaybe,x.mp4\n")
    with pytest.raises(SystemExit, match="line 2: unknown label 'maybe'"):
        calibrate_main(["--labels", str(bad)])
