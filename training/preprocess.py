"""``python -m training.preprocess``: videos and images -> face-track crops + an index.

The faces are found, tracked and cropped by the service's own code (``service.pipeline``), so
training sees the faces serving will see. For each track we store "loose" crops — a square of
``--crop-scale`` x the face box around it, at ``--crop-size`` px — plus, per frame, the affine
matrix that cut it and the five landmarks in frame coordinates. Every model's own crop rule is then
applied at training time by composing matrices (``training.data``), exactly as the service would
warp the full frame, with one extra resampling.

Input (``--input``): a folder with ``real/`` and ``fake/`` (optionally under ``train/ val/ test/``), a
FaceForensics++ root (with ``--ffpp-splits``), or a label-list CSV with the columns

    label      required: real/fake or 0/1
    path       required: video or image, relative to the CSV's folder or absolute
    split      optional: train/val/test (training, validation/valid/dev, testing; any case); empty = train
    identity   optional: the person shown (keeps a person's videos on one side of a split); empty = file stem
    frames     optional: frames read from that video, overriding --max-frames for it; empty = --max-frames

(details in ``training.sources``).

Output::

    OUT/index.csv                      one row per track: track, source, label, split, identity, frames
    OUT/tracks/<key>/t<k>/000123.jpg   loose crops
    OUT/tracks/<key>/t<k>/track.json   frame indices, matrices, five landmarks, boxes
    OUT/tracks/<key>/.done             marker: the options and labels the source was processed with
    OUT/errors.csv                     sources that could not be read, and why

Re-running skips sources already done (resumable). A source is redone (its folder cleared first) when
its marker records other crop-shaping options (crop size and scale, max frames, frame step, detector
and detection settings) or another file; when only its label, split or identity changed, its
``track.json`` files and the index are updated without recropping. ``--force`` redoes every source.
``index.csv`` lists only the sources of the current input whose crops match the current options, so
one output folder can hold several inputs (say two FF++ compressions) without mixing them.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from service.pipeline.crops import box_matrix
from service.pipeline.decode import iter_frames, probe
from service.pipeline.face_tracks import StageClock, find_tracks, keep_face
from service.pipeline.faces import FaceDetector, create_detector
from service.pipeline.failures import RequestFailure
from service.pipeline.media_settings import MediaSettings
from service.pipeline.tracks import IouTracker, Track
from training.errors import TrainingInputError, TrainingWriteError
from training.sources import Source, discover

log = logging.getLogger("training.preprocess")

INDEX_COLUMNS = ["track", "source", "label", "split", "identity", "frames"]
MARKER = ".done"
MARKER_VERSION = 2  # version 1 (no "version" key) was the bare track count: no options recorded


@dataclass(frozen=True)
class CropOptions:
    size: int = 320
    scale: float = 2.0
    max_frames: int = 256
    frame_step: int = 1
    jpeg_quality: int = 95


def source_key(source: Source, root: Path) -> str:
    """A stable folder name: readable stem + hash of the path relative to the input.

    Relative, so a dataset moved along with its output keeps its keys; two inputs can therefore share
    a key (``a/x.mp4`` listed by two CSVs in different folders), which is why the marker also records
    the file each folder was made from.
    """
    try:
        relative = source.path.resolve().relative_to(root.resolve())
    except ValueError:
        relative = source.path.resolve()
    digest = hashlib.sha1(str(relative).encode()).hexdigest()[:10]
    return f"{source.path.stem[:40]}-{digest}"


def source_options(source: Source, options: CropOptions) -> CropOptions:
    """The options for one source: a label list's ``frames`` column overrides ``--max-frames``."""
    return replace(options, max_frames=source.frames) if source.frames else options


def detection_record(settings: MediaSettings, detector: FaceDetector) -> dict[str, Any]:
    """Settings (``DFS_*`` included) that decide which faces and tracks a source yields."""
    weights = settings.retinaface_weights
    return {
        "detector": detector.name,
        "detector_weights": str(weights.resolve()) if detector.name == "retinaface" and weights else None,
        "detection_max_side": settings.detection_max_side,
        "detect_every": settings.detect_every,
        "min_face_score": settings.min_face_score,
        "min_face_size": settings.min_face_size,
        "max_tracks": settings.max_tracks,
        "min_track_frames": settings.min_track_frames,
        "track_iou": settings.track_iou,
        "track_max_gap": settings.track_max_gap,
    }


def expected_marker(source: Source, options: CropOptions, detection: dict[str, Any]) -> dict[str, Any]:
    """What a source's marker must say for its crops to be reused as they are.

    ``crops`` holds what shapes the pixels and tracks (a change means recropping); ``labels`` what
    only the index and ``track.json`` carry (a change means relabelling). Frame count and step do not
    apply to a photo, so changing them does not redo photos.
    """
    options = source_options(source, options)
    crops: dict[str, Any] = {
        "crop_size": options.size,
        "crop_scale": options.scale,
        "jpeg_quality": options.jpeg_quality,
        **detection,
    }
    if not source.is_image:
        crops |= {"max_frames": options.max_frames, "frame_step": options.frame_step}
    return {
        "version": MARKER_VERSION,
        "source": str(source.path.resolve()),
        "crops": crops,
        "labels": {"label": source.label, "split": source.split, "identity": source.identity},
    }


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of a source folder; None when the source was never finished.

    A marker of an older preprocess (the bare track count) or an unreadable one comes back as ``{}``:
    done, but with unknown options, so it is redone rather than trusted.
    """
    try:
        data = json.loads((folder / MARKER).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [
        f"{key} {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]


def plan(found: dict[str, Any] | None, wanted: dict[str, Any], force: bool = False) -> tuple[str, str]:
    """``("redo" | "relabel" | "skip", why)`` for a source whose marker is ``found``."""
    if force:
        return "redo", "--force"
    if found is None:
        return "redo", ""
    if found.get("version") != MARKER_VERSION:
        return "redo", "its crops were made by an older preprocess that recorded no options"
    if found.get("source") != wanted["source"]:
        return "redo", f"its crops were made from another file, {found.get('source')}"
    crop_changes = _differences(found.get("crops", {}), wanted["crops"])
    if crop_changes:
        return "redo", "options changed: " + ", ".join(crop_changes)
    label_changes = _differences(found.get("labels", {}), wanted["labels"])
    if label_changes:
        return "relabel", ", ".join(label_changes)
    return "skip", ""


def _write_json(path: Path, data: object) -> None:
    """Write via a temporary file so an interrupted run never leaves half a JSON behind."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, path)


def image_tracks(image_rgb: np.ndarray, detector: FaceDetector, settings: MediaSettings) -> list[Track]:
    """A photo is a one-frame video: each face is a track of length one."""
    height, width = image_rgb.shape[:2]
    scale = min(1.0, settings.detection_max_side / max(height, width))
    small = cv2.resize(image_rgb, (round(width * scale), round(height * scale))) if scale < 1 else image_rgb
    tracker = IouTracker()
    faces = [f.scaled(1 / scale) for f in detector.detect([small])[0]]
    tracker.update(0, [f for f in faces if keep_face(f, settings)])
    return tracker.finish(max_tracks=settings.max_tracks)


def _write_track(
    folder: Path, track: Track, frames: dict[int, np.ndarray], source: Source, options: CropOptions
) -> int:
    """Crops and ``track.json`` of one track; returns the frames kept (0: nothing written)."""
    folder.mkdir(parents=True, exist_ok=True)
    kept, matrices = [], []
    for position, frame_index in enumerate(track.frame_indices):
        if int(frame_index) not in frames or position % options.frame_step:
            continue
        matrix = box_matrix(track.boxes[position], options.scale, options.size)
        crop = cv2.warpAffine(frames[int(frame_index)], matrix, (options.size, options.size), flags=cv2.INTER_LINEAR)
        path = folder / f"{int(frame_index):06d}.jpg"
        # imwrite reports failure (disk full, bad path) by returning False, not by raising
        bgr = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality]):
            raise TrainingWriteError(f"could not write {path}")
        kept.append(position)
        matrices.append(matrix.round(6).tolist())
    if not kept:  # frames that did not decode a second time: an empty track would only trip the datasets
        shutil.rmtree(folder)
        return 0
    record = {
        "source": str(source.path),
        "label": source.label,
        "split": source.split,
        "identity": source.identity,
        "track_id": track.track_id,
        "crop_size": options.size,
        "crop_scale": options.scale,
        "frame_indices": [int(track.frame_indices[p]) for p in kept],
        "matrices": matrices,
        "landmarks5": [track.landmarks[p].round(2).tolist() for p in kept],
        "boxes": [track.boxes[p].round(2).tolist() for p in kept],
        "detected": [bool(track.detected[p]) for p in kept],
    }
    _write_json(folder / "track.json", record)
    return len(kept)


def _find_source_tracks(
    source: Source, detector: FaceDetector, settings: MediaSettings, options: CropOptions
) -> tuple[list[Track], dict[int, np.ndarray]]:
    """Tracks of one source and the full-size frames they cover."""
    if source.is_image:
        image = cv2.imread(str(source.path), cv2.IMREAD_COLOR)
        if image is None:
            raise TrainingInputError("not a readable image")
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return image_tracks(rgb, detector, settings), {0: rgb}
    info = probe(source.path, max_side=settings.max_video_side, max_duration_s=settings.max_duration_s)
    tracks, frames_read = find_tracks(source.path, info, detector, settings, options.max_frames, StageClock())
    wanted = {int(i) for t in tracks for i in t.frame_indices}
    # Frames of all tracks of this source: bounded by max_frames and only those with faces.
    frames = {f.index: f.rgb for f in iter_frames(source.path, max_frames=frames_read, wanted=wanted)}
    return tracks, frames


def process_source(
    source: Source,
    out: Path,
    key: str,
    detector: FaceDetector,
    settings: MediaSettings,
    options: CropOptions,
    marker: dict[str, Any] | None = None,
) -> int:
    """Crop every face track of one source; returns the number of tracks written.

    The source's folder is cleared first: a previous run may have left more tracks (``t<k>``) than
    this one writes, and those would otherwise stay and be indexed. The marker is written last, so a
    source interrupted half-way has none and is redone.
    """
    target = out / "tracks" / key
    if target.exists():
        shutil.rmtree(target)
    options = source_options(source, options)
    tracks, frames = _find_source_tracks(source, detector, settings, options)
    written = sum(_write_track(target / f"t{t.track_id}", t, frames, source, options) > 0 for t in tracks)
    target.mkdir(parents=True, exist_ok=True)
    _write_json(target / MARKER, {**(marker or {}), "tracks": written})
    return written


def relabel_source(folder: Path, source: Source, marker: dict[str, Any]) -> None:
    """New label/split/identity into the ``track.json`` files and marker; the crops stay as they are."""
    for track_file in sorted(folder.glob("t*/track.json")):
        record = json.loads(track_file.read_text())
        record.update(source=str(source.path), label=source.label, split=source.split, identity=source.identity)
        _write_json(track_file, record)
    found = read_marker(folder) or {}
    _write_json(folder / MARKER, {**marker, "tracks": found.get("tracks")})


def _index_rows(out: Path, key: str, source: Source) -> list[dict[str, Any]]:
    rows = []
    for track_file in sorted((out / "tracks" / key).glob("t*/track.json")):
        record = json.loads(track_file.read_text())
        rows.append(
            {
                "track": str(track_file.parent.relative_to(out)),
                "source": str(source.path),
                "label": source.label,
                "split": source.split,
                "identity": source.identity,
                "frames": len(record["frame_indices"]),
            }
        )
    return rows


def rebuild_index(out: Path, wanted: list[tuple[str, Source, dict[str, Any]]]) -> int:
    """index.csv from the tracks of the current input's sources whose marker matches ``wanted``.

    Only these: the output folder may also hold sources of other inputs (another compression,
    another CSV) or sources made with other options, and those must not leak into this index.
    A source without a matching marker (failed, interrupted) is left out until it is redone.
    """
    rows = []
    for key, source, marker in wanted:
        if plan(read_marker(out / "tracks" / key), marker)[0] == "skip":
            rows += _index_rows(out, key, source)
    rows.sort(key=lambda row: row["track"])
    temporary = out / "index.csv.tmp"
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=INDEX_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, out / "index.csv")
    return len(rows)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


LIST_HELP = """\
label-list CSV columns (header row required; UTF-8, with or without a byte-order mark):
  label      required  real/fake (or 0/1)
  path       required  video or image, relative to the CSV's folder or absolute
  split      optional  train/val/test (also training, validation/valid/dev, testing; any case); empty = train;
                       any other value is refused with the row's line number
  identity   optional  the person shown: keeps all of one person's videos on one side of the split and lets
                       blending pair different people; empty or no column = the file name without extension
  frames     optional  frames read from that video, overriding --max-frames for it; empty = --max-frames

re-runs skip finished sources, redo those processed with other crop options (size, scale, max frames, frame
step, detector) or from another file, and only relabel those whose label/split/identity changed; index.csv
lists just the current input's sources.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.preprocess",
        description=(
            "Detect, track and crop faces in videos/images for training, with the service's face code. "
            "INPUT is a folder with real/ and fake/ (optionally under train/ val/ test/), a FaceForensics++ "
            "root (with --ffpp-splits), or a CSV label list (label,path[,split][,identity][,frames])."
        ),
        epilog=LIST_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", required=True, type=Path, help="dataset folder or label-list CSV")
    parser.add_argument("--output", required=True, type=Path, help="where crops and index.csv go")
    parser.add_argument("--ffpp-splits", type=Path, help="folder with FaceForensics++ train/val/test.json")
    parser.add_argument("--compression", default="c23", help="FaceForensics++ compression folder (default c23)")
    parser.add_argument(
        "--max-frames",
        type=_positive_int,
        default=256,
        help="frames read per video (default 256; a label list's frames column overrides it)",
    )
    parser.add_argument(
        "--frame-step",
        type=_positive_int,
        default=1,
        help="keep every k-th frame of a track "
        "(default 1; FTCN needs consecutive frames, frame models train fine on k=4)",
    )
    parser.add_argument("--crop-size", type=_positive_int, default=320, help="loose crop side in px (default 320)")
    parser.add_argument(
        "--crop-scale", type=_positive_float, default=2.0, help="loose crop side / face box side (default 2)"
    )
    parser.add_argument("--retinaface-weights", type=Path, help="use RetinaFace instead of BlazeFace")
    parser.add_argument("--force", action="store_true", help="redo sources already processed")
    return parser


@dataclass
class Tally:
    """What a run did, for the summary line."""

    processed: int = 0
    relabelled: int = 0
    skipped: int = 0


def _run_source(
    source: Source,
    key: str,
    marker: dict[str, Any],
    args: argparse.Namespace,
    detector: FaceDetector,
    settings: MediaSettings,
    options: CropOptions,
    tally: Tally,
) -> None:
    """Skip, relabel or (re)process one source as its marker asks; failures propagate to the caller."""
    folder = args.output / "tracks" / key
    action, why = plan(read_marker(folder), marker, args.force)
    if action == "skip":
        tally.skipped += 1
    elif action == "relabel":
        log.info("relabelling %s: %s", source.path, why)
        relabel_source(folder, source, marker)
        tally.relabelled += 1
    else:
        if why:
            log.info("redoing %s: %s", source.path, why)
        process_source(source, args.output, key, detector, settings, options, marker)
        tally.processed += 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sources = discover(args.input, ffpp_splits=args.ffpp_splits, compression=args.compression)
    settings = MediaSettings(retinaface_weights=args.retinaface_weights, max_frames=args.max_frames)
    detector = create_detector(settings)
    options = CropOptions(
        size=args.crop_size, scale=args.crop_scale, max_frames=args.max_frames, frame_step=args.frame_step
    )
    detection = detection_record(settings, detector)
    args.output.mkdir(parents=True, exist_ok=True)
    root = args.input if args.input.is_dir() else args.input.parent
    wanted = [(source_key(s, root), s, expected_marker(s, options, detection)) for s in sources]
    errors: list[tuple[str, str]] = []
    tally = Tally()
    try:
        for key, source, marker in tqdm(wanted, desc="preprocess", unit="file"):
            try:
                _run_source(source, key, marker, args, detector, settings, options, tally)
            except (RequestFailure, ValueError, OSError, cv2.error) as exc:
                message = getattr(exc, "detail", None) or str(exc)
                errors.append((str(source.path), message))
                log.warning("skipped %s: %s", source.path, message)
                shutil.rmtree(args.output / "tracks" / key, ignore_errors=True)  # no half-written source
    finally:  # even when interrupted, the index matches what is on disk
        with (args.output / "errors.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows([("source", "error"), *errors])
        tracks = rebuild_index(args.output, wanted)
    print(
        f"{tally.processed} processed, {tally.relabelled} relabelled, {tally.skipped} already done, "
        f"{len(errors)} unreadable; {tracks} tracks in {args.output / 'index.csv'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
