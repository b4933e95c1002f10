"""``python -m training.preprocess``: videos and images -> face-track crops + an index.

The faces are found, tracked and cropped by the service's own code (``service.pipeline``), so
training sees the faces serving will see. For each track we store "loose" crops — a square of
``--crop-scale`` x the face box around it, at ``--crop-size`` px — plus, per frame, the affine
matrix that cut it and the five landmarks in frame coordinates. Every model's own crop rule is then
applied at training time by composing matrices (``training.data``), exactly as the service would
warp the full frame, with one extra resampling.

Output::

    OUT/index.csv                      one row per track: track, source, label, split, identity, frames
    OUT/tracks/<key>/t<k>/000123.jpg   loose crops
    OUT/tracks/<key>/t<k>/track.json   frame indices, matrices, five landmarks, boxes
    OUT/errors.csv                     sources that could not be read, and why

Re-running skips sources already done (resumable); ``--force`` redoes them.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from service.config import Settings
from service.errors import ServiceError
from service.pipeline.analyse import StageClock, find_tracks
from service.pipeline.crops import box_matrix
from service.pipeline.decode import iter_frames, probe
from service.pipeline.faces import FaceDetector, create_detector
from service.pipeline.tracks import IouTracker, Track
from training.sources import Source, discover

log = logging.getLogger("training.preprocess")

INDEX_COLUMNS = ["track", "source", "label", "split", "identity", "frames"]


@dataclass(frozen=True)
class CropOptions:
    size: int = 320
    scale: float = 2.0
    max_frames: int = 256
    frame_step: int = 1
    jpeg_quality: int = 95


def source_key(source: Source, root: Path) -> str:
    """A stable folder name: readable stem + hash of the path relative to the input."""
    try:
        relative = source.path.resolve().relative_to(root.resolve())
    except ValueError:
        relative = source.path.resolve()
    digest = hashlib.sha1(str(relative).encode()).hexdigest()[:10]
    return f"{source.path.stem[:40]}-{digest}"


def image_tracks(image_rgb: np.ndarray, detector: FaceDetector, settings: Settings) -> list[Track]:
    """A photo is a one-frame video: each face is a track of length one."""
    height, width = image_rgb.shape[:2]
    scale = min(1.0, settings.detection_max_side / max(height, width))
    small = cv2.resize(image_rgb, (round(width * scale), round(height * scale))) if scale < 1 else image_rgb
    tracker = IouTracker()
    faces = [f.scaled(1 / scale) for f in detector.detect([small])[0] if f.score >= settings.min_face_score]
    tracker.update(0, [f for f in faces if min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= settings.min_face_size])
    return tracker.finish(max_tracks=settings.max_tracks)


def _write_track(folder: Path, track: Track, frames: dict[int, np.ndarray], source: Source, options: CropOptions) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    kept, matrices = [], []
    for position, frame_index in enumerate(track.frame_indices):
        if int(frame_index) not in frames or position % options.frame_step:
            continue
        matrix = box_matrix(track.boxes[position], options.scale, options.size)
        crop = cv2.warpAffine(frames[int(frame_index)], matrix, (options.size, options.size), flags=cv2.INTER_LINEAR)
        cv2.imwrite(str(folder / f"{int(frame_index):06d}.jpg"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality])
        kept.append(position)
        matrices.append(matrix.round(6).tolist())
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
    (folder / "track.json").write_text(json.dumps(record))
    return len(kept)


def process_source(source: Source, out: Path, key: str, detector: FaceDetector, settings: Settings,
                   options: CropOptions) -> int:
    """Crop every face track of one source; returns the number of tracks written."""
    target = out / "tracks" / key
    if source.is_image:
        image = cv2.imread(str(source.path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError("not a readable image")
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        tracks, frames = image_tracks(rgb, detector, settings), {0: rgb}
    else:
        info = probe(source.path, max_side=settings.max_video_side, max_duration_s=settings.max_duration_s)
        tracks, frames_read = find_tracks(source.path, info, detector, settings, options.max_frames, StageClock())
        wanted = {int(i) for t in tracks for i in t.frame_indices}
        # Frames of all tracks of this source: bounded by max_frames and only those with faces.
        frames = {f.index: f.rgb for f in iter_frames(source.path, max_frames=frames_read, wanted=wanted)}
    for track in tracks:
        _write_track(target / f"t{track.track_id}", track, frames, source, options)
    (target / ".done").write_text(str(len(tracks)))
    return len(tracks)


def rebuild_index(out: Path) -> int:
    """index.csv from every track.json on disk (so partial and resumed runs stay consistent)."""
    rows = []
    for track_file in sorted((out / "tracks").glob("*/t*/track.json")):
        record = json.loads(track_file.read_text())
        rows.append({
            "track": str(track_file.parent.relative_to(out)),
            "source": record["source"],
            "label": record["label"],
            "split": record["split"],
            "identity": record["identity"],
            "frames": len(record["frame_indices"]),
        })
    with (out / "index.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=INDEX_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.preprocess",
        description=(
            "Detect, track and crop faces in videos/images for training, with the service's face code. "
            "INPUT is a folder with real/ and fake/ (optionally under train/ val/ test/), a FaceForensics++ "
            "root (with --ffpp-splits), or a CSV label list (label,path[,split])."
        ),
    )
    parser.add_argument("--input", required=True, type=Path, help="dataset folder or label-list CSV")
    parser.add_argument("--output", required=True, type=Path, help="where crops and index.csv go")
    parser.add_argument("--ffpp-splits", type=Path, help="folder with FaceForensics++ train/val/test.json")
    parser.add_argument("--compression", default="c23", help="FaceForensics++ compression folder (default c23)")
    parser.add_argument("--max-frames", type=int, default=256, help="frames read per video (default 256)")
    parser.add_argument("--frame-step", type=int, default=1, help="keep every k-th frame of a track (default 1; "
                        "FTCN needs consecutive frames, frame models train fine on k=4)")
    parser.add_argument("--crop-size", type=int, default=320, help="loose crop side in px (default 320)")
    parser.add_argument("--crop-scale", type=float, default=2.0, help="loose crop side / face box side (default 2)")
    parser.add_argument("--retinaface-weights", type=Path, help="use RetinaFace instead of BlazeFace")
    parser.add_argument("--force", action="store_true", help="redo sources already processed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sources = discover(args.input, ffpp_splits=args.ffpp_splits, compression=args.compression)
    settings = Settings(retinaface_weights=args.retinaface_weights, max_frames=args.max_frames)
    detector = create_detector(settings)
    options = CropOptions(size=args.crop_size, scale=args.crop_scale, max_frames=args.max_frames,
                          frame_step=args.frame_step)
    args.output.mkdir(parents=True, exist_ok=True)
    root = args.input if args.input.is_dir() else args.input.parent
    errors: list[tuple[str, str]] = []
    done = skipped = 0
    for source in tqdm(sources, desc="preprocess", unit="file"):
        key = source_key(source, root)
        if (args.output / "tracks" / key / ".done").exists() and not args.force:
            skipped += 1
            continue
        try:
            process_source(source, args.output, key, detector, settings, options)
            done += 1
        except (ServiceError, ValueError, OSError) as exc:
            message = getattr(exc, "detail", None) or str(exc)
            errors.append((str(source.path), message))
            log.warning("skipped %s: %s", source.path, message)
    with (args.output / "errors.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("source", "error"), *errors])
    tracks = rebuild_index(args.output)
    print(f"{done} processed, {skipped} already done, {len(errors)} unreadable; {tracks} tracks in {args.output / 'index.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
