"""training.preprocess on generated MP4s: tracks found, unreadable files reported, resumable.

Resuming must never keep crops that no longer match the input or the options: stale tracks, other
inputs' sources, other crop sizes or frame steps, old splits.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import pytest

from tests import media
from training.preprocess import main


def read_index(root: Path) -> list[dict[str, str]]:
    with (root / "index.csv").open() as handle:
        return list(csv.DictReader(handle))


Capture = pytest.CaptureFixture[str]
ARGS = ["--max-frames", "36", "--crop-size", "192"]


def run(input_path: Path, output: Path, *extra: str) -> None:
    assert main(["--input", str(input_path), "--output", str(output), *ARGS, *extra]) == 0


def track_folders(output: Path) -> list[str]:
    return sorted(str(p.parent.relative_to(output)) for p in (output / "tracks").glob("*/t*/track.json"))


def one_video(folder: Path, faces: int, name: str = "clip.mp4", frames: int = 12) -> Path:
    """``folder`` holding ``name`` under real/, a short video of ``faces`` faces."""
    (folder / "real").mkdir(parents=True, exist_ok=True)
    media.face_video(folder / "real" / name, faces=faces, frames=frames, face_size=140)
    return folder


def test_index_lists_the_tracks(crops_dataset: Path) -> None:
    rows = read_index(crops_dataset)
    by_source = {}
    for row in rows:
        by_source.setdefault(Path(row["source"]).name, []).append(row)
    assert len(by_source["real0.mp4"]) == 1 and len(by_source["fake0.mp4"]) == 2, by_source.keys()
    assert len(by_source["astronaut.png"]) == 1 and by_source["astronaut.png"][0]["frames"] == "1"
    assert {r["label"] for r in by_source["fake0.mp4"]} == {"1"}
    video_track = by_source["real0.mp4"][0]
    assert video_track["frames"] == "36"
    record = json.loads((crops_dataset / video_track["track"] / "track.json").read_text())
    assert record["frame_indices"] == list(range(36))
    assert len(record["matrices"]) == len(record["landmarks5"]) == 36
    assert (crops_dataset / video_track["track"] / "000035.jpg").is_file()


def test_unreadable_files_are_reported_not_fatal(crops_dataset: Path) -> None:
    errors = (crops_dataset / "errors.csv").read_text()
    assert "broken.mp4" in errors


def test_rerun_skips_done_sources(raw_dataset: Path, crops_copy: Path, capsys: Capture) -> None:
    before = read_index(crops_copy)
    run(raw_dataset, crops_copy)
    assert "4 already done" in capsys.readouterr().out
    assert read_index(crops_copy) == before


def test_force_clears_tracks_of_an_earlier_run(tmp_path: Path, capsys: Capture) -> None:
    data, out = one_video(tmp_path / "data", faces=2), tmp_path / "out"
    run(data, out)
    assert len(read_index(out)) == 2
    one_video(data, faces=1)  # same path, now one face: t1 of the first run must not survive
    run(data, out, "--force")
    assert "1 processed" in capsys.readouterr().out
    assert [row["track"] for row in read_index(out)] == track_folders(out) and len(track_folders(out)) == 1


def test_another_input_into_the_same_output_indexes_only_its_sources(crops_copy: Path, tmp_path: Path) -> None:
    other = one_video(tmp_path / "other", faces=1, name="other.mp4")
    run(other, crops_copy)
    assert {Path(row["source"]).name for row in read_index(crops_copy)} == {"other.mp4"}
    assert len(track_folders(crops_copy)) > 1, "the first input's crops stay on disk for its own runs"


def test_same_relative_path_from_another_list_is_redone(tmp_path: Path) -> None:
    """Two lists in different folders naming ``real/clip.mp4`` share a key: the marker tells them apart."""
    out = tmp_path / "out"
    for folder, faces in (("a", 2), ("b", 1)):
        one_video(tmp_path / folder, faces=faces)
        (tmp_path / folder / "list.csv").write_text("label,path\nreal,real/clip.mp4\n")
        run(tmp_path / folder / "list.csv", out)
    rows = read_index(out)
    assert len(rows) == 1 and Path(rows[0]["source"]).parent.parent.name == "b"


def test_changed_crop_options_redo_the_sources(crops_copy: Path, raw_dataset: Path, capsys: Capture) -> None:
    args = ["--input", str(raw_dataset), "--output", str(crops_copy), "--max-frames", "36", "--crop-size", "160"]
    assert main(args) == 0
    assert "4 processed" in capsys.readouterr().out
    rows = read_index(crops_copy)
    for row in rows:
        record = json.loads((crops_copy / row["track"] / "track.json").read_text())
        image = cv2.imread(str(crops_copy / row["track"] / f"{record['frame_indices'][0]:06d}.jpg"))
        assert image.shape[:2] == (160, 160)
    assert main([*args, "--frame-step", "2"]) == 0
    # the photo has no frames to step: it is kept
    assert "3 processed, 0 relabelled, 1 already done" in capsys.readouterr().out
    by_source = {Path(row["source"]).name: row for row in read_index(crops_copy)}
    assert by_source["real0.mp4"]["frames"] == "18" and by_source["astronaut.png"]["frames"] == "1"


def test_marker_of_an_older_preprocess_is_redone(crops_copy: Path, raw_dataset: Path, capsys: Capture) -> None:
    marker = next((crops_copy / "tracks").glob("real0-*/.done"))
    marker.write_text("1")  # what the first version wrote: the track count, no options
    run(raw_dataset, crops_copy)
    assert "1 processed, 0 relabelled, 3 already done" in capsys.readouterr().out


def test_label_list_split_change_relabels_without_recropping(tmp_path: Path, capsys: Capture) -> None:
    data, out = one_video(tmp_path / "data", faces=1), tmp_path / "out"
    labels = data / "list.csv"
    labels.write_text("label,path,split\nreal,real/clip.mp4,train\n")
    run(labels, out)
    crop = next((out / "tracks").glob("*/t0/000000.jpg"))
    written = crop.stat().st_mtime_ns
    labels.write_text("label,path,split,identity\nreal,real/clip.mp4,Validation,alice\n")
    run(labels, out)
    assert "0 processed, 1 relabelled" in capsys.readouterr().out
    row = read_index(out)[0]
    assert (row["split"], row["identity"]) == ("val", "alice") and crop.stat().st_mtime_ns == written
    assert json.loads((out / row["track"] / "track.json").read_text())["split"] == "val"


def test_frames_column_bounds_the_frames_read(tmp_path: Path) -> None:
    data, out = one_video(tmp_path / "data", faces=1, frames=24), tmp_path / "out"
    labels = data / "list.csv"
    labels.write_bytes("label,path,frames\nreal,real/clip.mp4,10\n".encode("utf-8-sig"))
    run(labels, out)
    assert read_index(out)[0]["frames"] == "10"
