"""Find labelled videos/images in the dataset layouts users have.

- ``folders``: ``DIR/real/**`` and ``DIR/fake/**``, optionally under ``DIR/{train,val,test}/``;
- ``ffpp``: FaceForensics++ (``original_sequences/youtube/<c>/videos`` and
  ``manipulated_sequences/<method>/<c>/videos``) with the official split JSONs
  (``train.json``/``val.json``/``test.json``: lists of ``[target, source]`` id pairs);
- ``list``: a CSV with columns ``label,path[,frames][,split]`` (label ``real``/``fake`` or 0/1).

Every source gets an ``identity`` (the person/video it shows) so the I2G generator can blend
faces of *different* identities and splits never share one.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Source:
    path: Path
    label: int  # 1 = fake, 0 = real
    split: str
    identity: str

    @property
    def is_image(self) -> bool:
        return self.path.suffix.lower() in IMAGE_EXTENSIONS


def _media_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS | IMAGE_EXTENSIONS)


def _parse_label(text: str) -> int:
    value = text.strip().lower()
    if value in ("1", "fake", "forged", "manipulated"):
        return 1
    if value in ("0", "real", "pristine", "original"):
        return 0
    raise ValueError(f"unknown label {text!r} (use real/fake or 0/1)")


def from_folders(root: Path) -> list[Source]:
    sources = []
    bases = [(root / s, s) for s in SPLITS if (root / s).is_dir()] or [(root, "train")]
    for base, split in bases:
        for label_name, label in (("real", 0), ("fake", 1)):
            folder = base / label_name
            if folder.is_dir():
                sources += [Source(p, label, split, p.stem) for p in _media_files(folder)]
    if not sources:
        raise ValueError(f"{root}: expected real/ and fake/ folders (optionally under train/, val/, test/)")
    return sources


def from_label_list(csv_path: Path) -> list[Source]:
    sources = []
    with csv_path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            path = Path(row["path"])
            path = path if path.is_absolute() else csv_path.parent / path
            sources.append(Source(path, _parse_label(row["label"]), row.get("split") or "train", path.stem))
    return sources


def from_ffpp(root: Path, splits_dir: Path, compression: str = "c23", methods: list[str] | None = None) -> list[Source]:
    split_of: dict[str, str] = {}
    for split in SPLITS:
        file = splits_dir / f"{split}.json"
        if file.is_file():
            for pair in json.loads(file.read_text()):
                for video_id in pair:
                    split_of[video_id] = split
                split_of["_".join(pair)] = split
                split_of["_".join(reversed(pair))] = split
    sources = []
    for path in sorted((root / "original_sequences" / "youtube" / compression / "videos").glob("*.mp4")):
        if path.stem in split_of:
            sources.append(Source(path, 0, split_of[path.stem], path.stem))
    manipulated = root / "manipulated_sequences"
    for method_dir in sorted(p for p in manipulated.iterdir() if p.is_dir()) if manipulated.is_dir() else []:
        if methods and method_dir.name not in methods:
            continue
        for path in sorted((method_dir / compression / "videos").glob("*.mp4")):
            if path.stem in split_of:
                sources.append(Source(path, 1, split_of[path.stem], path.stem.split("_")[0]))
    if not sources:
        raise ValueError(f"{root}: no FaceForensics++ videos matched the split files in {splits_dir}")
    return sources


def discover(input_path: Path, *, ffpp_splits: Path | None = None, compression: str = "c23") -> list[Source]:
    """Pick the layout from what is there: a CSV file, FF++ folders, or real/fake folders."""
    if input_path.is_file() and input_path.suffix.lower() == ".csv":
        return from_label_list(input_path)
    if (input_path / "original_sequences").is_dir():
        if ffpp_splits is None:
            raise ValueError("FaceForensics++ layout found: pass --ffpp-splits DIR with train/val/test.json")
        return from_ffpp(input_path, ffpp_splits, compression)
    return from_folders(input_path)
