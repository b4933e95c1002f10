"""Find labelled videos/images in the dataset layouts users have.

- ``folders``: ``DIR/real/**`` and ``DIR/fake/**``, optionally under ``DIR/{train,val,test}/``;
- ``ffpp``: FaceForensics++ (``original_sequences/youtube/<c>/videos`` and
  ``manipulated_sequences/<method>/<c>/videos``) with the official split JSONs
  (``train.json``/``val.json``/``test.json``: lists of ``[target, source]`` id pairs);
- ``list``: a CSV label list (UTF-8, a byte-order mark is fine; header names are case-insensitive):

  ``label``     required: ``real``/``fake`` (also ``pristine``/``original``, ``forged``/``manipulated``) or 0/1;
  ``path``      required: the video or image, relative to the CSV's folder or absolute;
  ``split``     optional: ``train``/``val``/``test`` (also ``training``, ``validation``/``valid``/``dev``,
                ``testing``; any case); empty or no column = ``train``; anything else is refused;
  ``identity``  optional: the person shown, so all of one person's videos stay on one side of a split
                and blending pairs different people; empty or no column = the file name without extension;
  ``frames``    optional: frames read from that video (overrides ``--max-frames`` for it); empty = the default.

Every source gets an ``identity`` (the person/video it shows) so the I2G generator can blend
faces of *different* identities and splits never share one. Folder and FaceForensics++ layouts have no
identity column: there it is the file stem (FF++ fakes: their target id), i.e. one identity per video.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from training.errors import TrainingInputError

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
LIST_COLUMNS = ("label", "path", "split", "identity", "frames")


@dataclass(frozen=True)
class Source:
    path: Path
    label: int  # 1 = fake, 0 = real
    split: str
    identity: str
    frames: int | None = None  # frames to read from this video; None = --max-frames

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
    raise TrainingInputError(f"unknown label {text!r} (use real/fake or 0/1)")


def normalise_split(text: str | None) -> str:
    """``train``/``val``/``test`` from what people write; empty = ``train``.

    ``training.data`` selects rows by the exact split name, so a ``Validation`` row kept verbatim
    would silently be in no split at all: unknown names are refused instead of passed through.
    """
    value = (text or "").strip().lower()
    if not value:
        return "train"
    if value not in SPLIT_ALIASES:
        raise TrainingInputError(f"unknown split {text!r} (use train, val or test)")
    return SPLIT_ALIASES[value]


def _parse_frames(text: str | None) -> int | None:
    """The optional per-source frame budget: a positive int, or None when empty."""
    value = (text or "").strip()
    if not value:
        return None
    try:
        frames = int(value)
    except ValueError:
        raise TrainingInputError(f"frames must be a whole number, not {text!r}") from None
    if frames <= 0:
        raise TrainingInputError(f"frames must be positive, not {frames}")
    return frames


def _list_source(row: dict[str, str], base: Path) -> Source:
    """One label-list row as a Source (raises ValueError naming the bad field)."""
    text = (row.get("path") or "").strip()
    if not text:
        raise TrainingInputError("empty path")
    path = Path(text)
    path = path if path.is_absolute() else base / path
    identity = (row.get("identity") or "").strip() or path.stem
    return Source(
        path,
        _parse_label(row.get("label") or ""),
        normalise_split(row.get("split")),
        identity,
        _parse_frames(row.get("frames")),
    )


def _list_rows(csv_path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs with lower-cased, stripped header names.

    ``utf-8-sig`` because spreadsheet exports start with a byte-order mark, which would otherwise
    become part of the first header name (``'\\ufefflabel'``) and hide the ``label`` column.
    """
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [name.strip().lower() for name in next(reader, [])]
        missing = [name for name in ("label", "path") if name not in header]
        if missing:
            raise TrainingInputError(
                f"{csv_path}: no {' or '.join(missing)} column (columns: {', '.join(LIST_COLUMNS)})"
            )
        return [(reader.line_num, dict(zip(header, values, strict=False))) for values in reader if any(values)]


def from_label_list(csv_path: Path) -> list[Source]:
    """Sources of a label-list CSV; a bad row is refused with its line number, not skipped.

    A path listed twice with different labels, splits, identities or frames is refused: the crops of
    one file can only carry one label. Exact repeats are dropped.
    """
    sources: dict[Path, tuple[int, Source]] = {}
    for line, row in _list_rows(csv_path):
        try:
            source = _list_source(row, csv_path.parent)
        except ValueError as exc:
            raise TrainingInputError(f"{csv_path}, line {line}: {exc}") from None
        seen = sources.get(source.path.resolve())
        if seen is not None and seen[1] != source:
            raise TrainingInputError(
                f"{csv_path}, line {line}: {source.path} is already listed differently on line {seen[0]}"
            )
        sources.setdefault(source.path.resolve(), (line, source))
    return [source for _, source in sources.values()]


def from_folders(root: Path) -> list[Source]:
    sources = []
    bases = [(root / s, s) for s in SPLITS if (root / s).is_dir()] or [(root, "train")]
    for base, split in bases:
        for label_name, label in (("real", 0), ("fake", 1)):
            folder = base / label_name
            if folder.is_dir():
                sources += [Source(p, label, split, p.stem) for p in _media_files(folder)]
    if not sources:
        raise TrainingInputError(f"{root}: expected real/ and fake/ folders (optionally under train/, val/, test/)")
    return sources


def _ffpp_split_of(splits_dir: Path) -> dict[str, str]:
    """Video id (``000``) and pair name (``000_003``, either order) -> split.

    An id in two split files would put the same face on both sides of the split, so it is refused.
    """
    split_of: dict[str, str] = {}
    for split in SPLITS:
        file = splits_dir / f"{split}.json"
        if not file.is_file():
            continue
        for pair in json.loads(file.read_text()):
            for name in [*pair, "_".join(pair), "_".join(reversed(pair))]:
                if split_of.setdefault(name, split) != split:
                    raise TrainingInputError(f"{splits_dir}: {name} is in both {split_of[name]}.json and {split}.json")
    return split_of


def from_ffpp(root: Path, splits_dir: Path, compression: str = "c23", methods: list[str] | None = None) -> list[Source]:
    split_of = _ffpp_split_of(splits_dir)
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
        raise TrainingInputError(f"{root}: no FaceForensics++ videos matched the split files in {splits_dir}")
    return sources


def discover(input_path: Path, *, ffpp_splits: Path | None = None, compression: str = "c23") -> list[Source]:
    """Pick the layout from what is there: a CSV file, FF++ folders, or real/fake folders."""
    if input_path.is_file() and input_path.suffix.lower() == ".csv":
        return from_label_list(input_path)
    if (input_path / "original_sequences").is_dir():
        if ffpp_splits is None:
            raise TrainingInputError("FaceForensics++ layout found: pass --ffpp-splits DIR with train/val/test.json")
        return from_ffpp(input_path, ffpp_splits, compression)
    return from_folders(input_path)
