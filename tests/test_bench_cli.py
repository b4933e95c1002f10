"""Every benchmark script imports and explains itself (``--help``): they are not run by CI, so this
keeps them from rotting when the modules they drive change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SCRIPTS = sorted(p.name for p in (REPO_ROOT / "bench").glob("*.py") if not p.name.startswith("_"))


def test_bench_scripts_found() -> None:
    assert {
        "e2e.py",
        "floor.py",
        "sampling.py",
        "stages.py",
        "held_out.py",
        "train.py",
        "quality.py",
        "load.py",
    } <= set(SCRIPTS)


def bundle_copy(target: Path, *names: str) -> Path:
    """A repository holding the bundle's newest version of each of ``names`` (the bench smoke runs)."""
    import shutil

    for name in names:
        newest = sorted(p for p in (REPO_ROOT / "model_repository" / name).iterdir() if p.is_dir())[-1]
        shutil.copytree(newest, target / name / newest.name)
    return target


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script: str) -> None:
    result = subprocess.run(
        [sys.executable, f"bench/{script}", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and len(result.stdout) > 300


@pytest.mark.parametrize("script", ["bench/gpu_check.sh", "scripts/gpu_pack.sh"])
def test_gpu_check_scripts_parse_and_refuse_bad_usage(script: str) -> None:
    assert subprocess.run(["bash", "-n", script], cwd=REPO_ROOT, timeout=30).returncode == 0
    if script == "bench/gpu_check.sh":
        result = subprocess.run(
            ["bash", script],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            env={"OUT": "/tmp/dfs-gpu-check-usage", "PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 2 and "usage:" in result.stderr


def test_quality_report_on_a_tiny_repository(videos: dict[str, Path], tmp_path: Path) -> None:
    """bench/quality.py end to end on the bundle's two models and four test videos: PNG, tables, JSON."""
    import csv
    import json

    from tests import media

    repository = bundle_copy(tmp_path / "repo", "dcl", "ftcn")
    lipsync = media.face_video(tmp_path / "fake_wav2lip_result_voice.mp4", faces=1, face_size=128)
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split", "dataset_of_origin"])
        writer.writerow([str(videos["one_face"]), "real", "val", "studio footage (test media)"])
        writer.writerow([str(videos["no_face"]), "real", "val", "studio footage (test media)"])
        writer.writerow([str(videos["two_faces"]), "fake", "val", "FaceForensics++ c40 Deepfakes"])
        writer.writerow([lipsync.name, "fake", "val", ""])  # relative to the CSV; method from the file name
        writer.writerow([str(videos["one_face"].with_name("unused.mp4")), "fake", "train", ""])  # other split
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "bench/quality.py",
            "--repository",
            str(repository),
            "--data",
            f"tiny={labels}:val",
            "--out",
            str(out),
            "--max-frames",
            "40",
            "--max-clips-per-track",
            "1",
            "--frames-per-track",
            "2",
            "--face-detector",
            "blazeface",
            "--runtime",
            "onnxruntime",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "quality.md").read_text()
    for row in (
        "| dcl | 3 |",
        "| ftcn | 3 |",
        "| ensemble | 3 |",
        "| FF++ Deepfakes | fake | 1 |",
        "| Wav2Lip | fake | 1 |",
        "| studio footage | real | 1 |",
        "no_face.mp4`: no face found",
    ):
        assert row in table, (row, table)
    report = json.loads((out / "quality.json").read_text())
    tiny = report["data_sets"]["tiny"]
    assert tiny["videos"] == 4 and tiny["fakes"] == 2 and report["ensemble"]["source"] == "equal"
    assert set(tiny["metrics"]) == {"dcl", "ftcn", "ensemble"}
    assert all(0 <= m["auc"] <= 1 for m in tiny["metrics"].values())
    assert all(m["auc_ci"][0] <= m["auc"] <= m["auc_ci"][1] for m in tiny["metrics"].values())
    assert "| AUC 95% interval |" in table
    assert report["settings"]["detect_every"] == 1
    assert {m["runtime"] for m in report["models"].values()} == {"onnxruntime:CPUExecutionProvider"}

    # the same data with faces detected every 3rd frame, then both runs side by side
    sparse = tmp_path / "sparse"
    command = list(result.args)
    command[command.index("--out") + 1] = str(sparse)
    again = subprocess.run(
        [*command, "--detect-every", "3"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((sparse / "quality.json").read_text())["settings"]["detect_every"] == 3
    shown = subprocess.run(
        [sys.executable, "bench/quality.py", "--compare", str(out), str(sparse)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    lines = shown.stdout.splitlines()
    assert "| out (detect_every=1) | sparse (detect_every=3) |" in lines[0], lines[0]  # the one setting that differs
    assert sum(line.startswith("| tiny | ") for line in lines) == 3, shown.stdout


def test_load_smoke_on_a_tiny_repository(videos: dict[str, Path], tmp_path: Path) -> None:
    """bench/load.py for a few seconds at 2 clients on the bundle's DCL alone: the table prints,
    every kind of request got its documented answers (never a 500), the probes always answered.
    RSS may still be growing this early, so PASS itself is not asserted."""
    import json

    repository = bundle_copy(tmp_path / "repo", "dcl")
    out = tmp_path / "load.json"
    result = subprocess.run(
        [
            sys.executable,
            "bench/load.py",
            "--repository",
            str(repository),
            "--videos",
            str(videos["one_face"]),
            str(videos["two_faces"]),
            "--clients",
            "2",
            "--duration",
            "5",
            "--warmup",
            "3",
            "--max-frames",
            "16",
            "--max-requests",
            "200",
            "--json",
            str(out),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    assert "phase    clients" in result.stdout and ("PASS" in result.stdout or "FAIL" in result.stdout), result.stdout
    report = json.loads(out.read_text())
    phases = report["phases"]
    assert [p["name"] for p in phases] == ["warm-up", "2"]
    assert all("500" not in p["statuses"] and not any(s.startswith("error:") for s in p["statuses"]) for p in phases)
    assert all(not p["unexpected"] for p in phases), [p["unexpected"] for p in phases]
    assert all(p["healthcheck"]["failures"] == 0 and p["metrics"]["failures"] == 0 for p in phases)
    assert sum(p["good_ok"] for p in phases) >= 1 and report["private_fetches"] == 0
    assert all(r.startswith("RSS grew") for r in report["reasons"]), report["reasons"]


def test_long_jobs_smoke_on_a_tiny_repository(videos: dict[str, Path], tmp_path: Path) -> None:
    """bench/long_jobs.py on a short video with the bundle's DCL alone: one job per frame count,
    each analysed exactly the frames asked, the server's memory sampled while it ran, the table
    and the JSON written."""
    import json

    repository = bundle_copy(tmp_path / "repo", "dcl")
    out = tmp_path / "long.json"
    result = subprocess.run(
        [
            sys.executable,
            "bench/long_jobs.py",
            "--repository",
            str(repository),
            "--video",
            str(videos["one_face"]),
            "--seconds",
            "3",
            "--height",
            "240",
            "--frames",
            "12,48",
            "--json",
            str(out),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RSS before MB" in result.stdout and "the frames: peak RSS" in result.stdout, result.stdout
    runs = json.loads(out.read_text())["runs"]
    assert [(r["frames_asked"], r["frames_analyzed"]) for r in runs] == [(12, 12), (48, 48)]
    assert all(r["rss_peak_mb"] >= r["rss_before_mb"] > 50 and r["items"] > 0 and r["tracks"] >= 1 for r in runs)


def test_e2e_then_profile_serves_another_checkout_beside_today(videos: dict[str, Path], tmp_path: Path) -> None:
    """bench/e2e.py's ``then`` profile: the service package of another tree (here a copy of this one
    that leaves a mark when imported) serves the same repository in the same run as ``ort``, and the
    table and JSON give each profile's ratio against it."""
    import json
    import shutil

    then_tree = tmp_path / "then"
    shutil.copytree(
        REPO_ROOT,
        then_tree,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "runs", "model_repository", "tmp", "__pycache__", "node_modules"
        ),
    )
    marker = then_tree / "service" / "imported_from_here"
    with (then_tree / "service" / "__init__.py").open("a") as handle:
        handle.write("\n__import__('pathlib').Path(__file__).with_name('imported_from_here').touch()\n")
    repository = bundle_copy(tmp_path / "repo", "dcl")
    out = tmp_path / "e2e.json"
    command = [sys.executable, "bench/e2e.py", "--repository", str(repository), "--video", str(videos["one_face"])]
    command += ["--profiles", "then,ort", "--clients", "1", "--requests", "1", "--max-frames", "16", "--json", str(out)]
    refused = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "needs --then-tree" in refused.stderr, "then without a tree is refused"
    result = subprocess.run(
        [*command, "--then-tree", str(then_tree)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert marker.exists(), "the then profile imported the other tree's service package"
    table = [line.split() for line in result.stdout.splitlines() if line.startswith(("then ", "ort "))]
    rows = {row[0]: row for row in table if row[1] == "1"}  # the speed table's rows (the stage table's say x1)
    header = next(line.split() for line in result.stdout.splitlines() if line.startswith("profile"))
    column = header.index("then") - 2  # "vs ort" and "vs then" are two words each in the header
    assert rows["then"][column] == "1.00" and float(rows["ort"][column]) > 0, result.stdout
    report = json.loads(out.read_text())
    assert report["meta"]["then_tree"] == str(then_tree.resolve())
    assert [level["profile"] for level in report["levels"]] == ["then", "ort"]
    assert all(level["ok"] == 1 for level in report["levels"])


def test_the_quality_reports_default_data_sets_name_real_labelled_videos() -> None:
    """The three default data sets resolve to files that exist; older_shared is every older shared video
    (held_out's and the rest, so a video cannot silently drop out), labelled as the bundle's own list."""
    from bench.quality import DEFAULT_DATA, parse_data
    from export.served import labelled

    sets = {name: labelled(csv_path, split) for name, csv_path, split in map(parse_data, DEFAULT_DATA)}
    assert set(sets) == {"corpus_val", "held_out", "older_shared"}
    assert all(source.path.is_file() for sources in sets.values() for source in sources)
    older = {source.path.resolve(): source.label for source in sets["older_shared"]}
    assert set(older) == {p.resolve() for p in (REPO_ROOT.parent / "shared" / "data" / "videos").glob("*.mp4")}
    assert {source.path.resolve(): source.label for source in sets["held_out"]}.items() <= older.items()
    assert sum(older.values()) == 9 and len(older) - sum(older.values()) == 8
