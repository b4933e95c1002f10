"""training.preprocess on generated MP4s: tracks found, unreadable files reported, resumable."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from training.preprocess import main


def read_index(root: Path) -> list[dict[str, str]]:
    with (root / "index.csv").open() as handle:
        return list(csv.DictReader(handle))


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


def test_rerun_skips_done_sources(raw_dataset: Path, crops_copy: Path, capsys) -> None:  # noqa: ANN001
    before = read_index(crops_copy)
    assert main(["--input", str(raw_dataset), "--output", str(crops_copy), "--max-frames", "36", "--crop-size", "192"]) == 0
    assert "4 already done" in capsys.readouterr().out
    assert read_index(crops_copy) == before
