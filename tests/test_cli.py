"""``python -m service.cli score``: the pipeline in-process on real MP4s with FTCN in ONNX, as a user
runs it (a child process, DFS_* settings in its environment, no DFS_LOCAL_ROOTS)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def run_cli(args: list[str], ftcn_repository: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DFS_")}
    environment.update({"DFS_MODEL_REPOSITORY": str(ftcn_repository), "DFS_MAX_CLIPS_PER_TRACK": "1", **env})
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_help_describes_the_command() -> None:
    top = subprocess.run([sys.executable, "-m", "service.cli", "--help"], cwd=REPO_ROOT, capture_output=True, text=True)
    score = subprocess.run(
        [sys.executable, "-m", "service.cli", "score", "--help"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    missing = subprocess.run(
        [sys.executable, "-m", "service.cli", "score"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert top.returncode == 0 and "score" in top.stdout
    assert score.returncode == 0
    for option in ("PATH_OR_URL", "--json", "--csv", "--annotate", "--models", "Exit status"):
        assert option in score.stdout, option
    assert missing.returncode == 2 and "PATH_OR_URL" in missing.stderr


def test_score_json_with_annotation(ftcn_repository: Path, videos: dict[str, Path], tmp_path: Path) -> None:
    """Local files outside any DFS_LOCAL_ROOTS are scored; results are /predict's body, one JSON per line."""
    out = tmp_path / "annotated"
    result = run_cli(
        ["score", str(videos["one_face"]), str(videos["no_face"]), "--json", "--annotate", str(out)],
        ftcn_repository,
        DFS_LOCAL_ROOTS="",
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["input"] for line in lines] == [str(videos["one_face"]), str(videos["no_face"])]
    assert all(line["ok"] for line in lines)
    face, empty = lines[0]["result"], lines[1]["result"]
    assert {
        "df_probability",
        "prediction",
        "models",
        "faces",
        "video",
        "timings_ms",
        "request_id",
        "warnings",
    } <= face.keys()
    assert len(face["faces"]) == 1 and 0 <= face["df_probability"] <= 1 and face["prediction"] in ("REAL", "FAKE")
    assert face["models"]["ftcn"]["clips"] == 1 and face["video"]["frames_analyzed"] == 40
    assert empty["prediction"] == "NO_FACE" and lines[1]["annotated"] is None
    annotated = Path(lines[0]["annotated"])
    assert annotated.parent == out
    with av.open(str(annotated)) as container:
        assert sum(1 for _ in container.decode(video=0)) == face["video"]["frames_analyzed"]
    assert "one_face.mp4" in result.stderr  # the progress bar names the video


def test_score_csv_reports_failures_with_their_code(
    ftcn_repository: Path, videos: dict[str, Path], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.mp4"
    result = run_cli(
        ["score", str(videos["one_face"]), str(videos["png_named_mp4"]), str(missing), "--csv", "--no-progress"],
        ftcn_repository,
    )
    assert result.returncode == 1, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["status"] for row in rows] == ["ok", "failed", "failed"]
    assert rows[0]["prediction"] in ("REAL", "FAKE") and rows[0]["faces"] == "1" and rows[0]["frames_analyzed"] == "40"
    assert (rows[1]["error"], rows[1]["status_code"]) == ("not_a_video", "415")
    assert (rows[2]["error"], rows[2]["status_code"]) == ("file_not_found", "400")
    assert "failed: not_a_video (415)" in result.stderr and "failed: file_not_found (400)" in result.stderr


def test_unloadable_models_exit_3(tmp_path: Path, videos: dict[str, Path]) -> None:
    result = run_cli(["score", str(videos["one_face"]), "--models", "nope", "--no-progress"], tmp_path / "empty")
    assert result.returncode == 3, (result.returncode, result.stderr)
    assert "models could not be loaded" in result.stderr
