"""Stage 5, crops: decide which clips/frames each model scores, and cut them out.

Planning is cheap and pure (tracks + spec -> :class:`CropItem` list with one affine matrix per
frame). Extraction decodes the video a second time at full resolution, converts to RGB only the
part of each frame its crops read (the faces, not the frame) and warps it straight into the
model's input size, so what travels onward are small uint8 crops, never frames; with
``DFS_KEEP_FACES_MB`` it takes those parts from the planes the detection pass kept
(:mod:`service.pipeline.kept_faces`) and decodes again only the frames they miss. Normalisation
to float happens in the engine, at batch time.

Crop rules come from each model's :class:`models.spec.CropRule`:
- ``align``: a least-squares similarity transform (Umeyama, via scikit-image) from the five
  landmarks to the template; for clip models ONE transform is fitted on all frames of the clip
  jointly, as FTCN was trained, so the face does not jitter inside a clip;
- ``box``: a square of ``scale`` x the box's longer side around the box centre, per frame.
"""

from __future__ import annotations

import heapq
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

from models.spec import ModelSpec
from service.pipeline.decode import DecodedFrame, DecodeGuard, Frame, Region, iter_frames, same_shape_chunks
from service.pipeline.failures import DfsInputError
from service.pipeline.gpu_streams import thread_stream
from service.pipeline.kept_faces import KeptFaces
from service.pipeline.tensor_frames import FrameSourceUnsupported, TensorFrameSource
from service.pipeline.tracks import Track

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingOptions:
    clip_stride: int = 32
    max_clips_per_track: int = 8
    frames_per_track: int = 16


@dataclass
class CropItem:
    """One engine input: a clip (T frames) or a single frame (T = 1) of one track."""

    model: str
    track_id: int
    frame_indices: np.ndarray  # (T,) video frame indices, may repeat (mirror padding)
    matrices: np.ndarray  # (T, 2, 3) float64, frame pixels -> crop pixels


def clip_windows(track_length: int, num_frames: int, stride: int, max_clips: int) -> list[np.ndarray]:
    """Positions (into the track) of each clip: consecutive frames, evenly chosen starts.

    A track shorter than a clip is padded with mirrored positions (0,1,..,L-1,L-2,..), as FTCN does.
    """
    if track_length >= num_frames:
        starts = np.arange(0, track_length - num_frames + 1, stride)
        if len(starts) > max_clips:
            starts = starts[np.unique(np.linspace(0, len(starts) - 1, max_clips).round().astype(int))]
        return [np.arange(s, s + num_frames) for s in starts]
    positions = np.arange(track_length)
    mode = "reflect" if track_length > 1 else "edge"
    return [np.pad(positions, (0, num_frames - track_length), mode=mode)]


def frame_positions(track_length: int, count: int) -> np.ndarray:
    """``count`` positions spread evenly over a track (all of them when it is short)."""
    return np.unique(np.linspace(0, track_length - 1, min(count, track_length)).round().astype(int))


def _template_points(spec: ModelSpec) -> np.ndarray:
    crop = spec.crop
    if crop.template is None or not crop.template_size:
        raise DfsInputError(f"{spec.name}: an 'align' crop needs a template and its size")
    return np.asarray(crop.template, dtype=np.float64) * (spec.input_size / crop.template_size)


def similarity_matrix(landmarks: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift) mapping landmarks onto template.

    ``landmarks`` is (K, 5, 2): several frames fitted jointly against the same template.
    """
    src = landmarks.reshape(-1, 2).astype(np.float64)
    dst = np.tile(template, (len(src) // len(template), 1))
    transform = SimilarityTransform.from_estimate(src, dst)
    if not transform:  # degenerate (e.g. all points equal): fall back to the identity
        return np.eye(3)[:2]
    return transform.params[:2]


def box_matrix(box: np.ndarray, scale: float, size: int) -> np.ndarray:
    """Affine matrix cutting a ``scale`` x longer-side square around ``box``, resized to ``size``."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(float(box[2] - box[0]), float(box[3] - box[1]), 1.0) * scale
    zoom = size / side
    return np.array([[zoom, 0, size / 2 - cx * zoom], [0, zoom, size / 2 - cy * zoom]], dtype=np.float64)


def crop_matrices(spec: ModelSpec, boxes: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The crop rule of ``spec`` as frame -> model-input affine matrices, (T, 2, 3), for T frames of a track.

    ``align`` fits one similarity on all T frames' 5 landmarks jointly against the spec's template
    (a clip stays steady; FTCN's rule), repeated per frame; ``box`` cuts ``crop.scale`` x each
    frame's box. ``boxes`` is (T, 4), ``landmarks`` (T, 5, 2). Serving (:func:`plan_crops`) and
    training (``training.data.loose_to_model``) both call this, so a model learns on the crops it
    is served.
    """
    if spec.crop.method == "align":
        matrix = similarity_matrix(np.asarray(landmarks), _template_points(spec))
        return np.repeat(matrix[None], len(landmarks), axis=0)
    return np.stack([box_matrix(box, spec.crop.scale, spec.input_size) for box in np.asarray(boxes)])


def plan_crops(tracks: list[Track], specs: dict[str, ModelSpec], options: SamplingOptions) -> list[CropItem]:
    """Every item each model will score, for every track."""
    items: list[CropItem] = []
    for name, spec in specs.items():
        for track in tracks:
            length = len(track.frame_indices)
            if spec.kind == "clip":
                groups = clip_windows(length, spec.num_frames, options.clip_stride, options.max_clips_per_track)
            else:
                groups = [np.array([p]) for p in frame_positions(length, options.frames_per_track)]
            for positions in groups:
                matrices = crop_matrices(spec, track.boxes[positions], track.landmarks[positions])
                items.append(CropItem(name, track.track_id, track.frame_indices[positions], matrices))
    return items


def extract_crops(
    path: Path,
    items: list[CropItem],
    specs: dict[str, ModelSpec],
    *,
    max_frames: int,
    threads: int = 0,
    frames: TensorFrameSource | None = None,
    warp_chunk: int = 16,
    guard: DecodeGuard | None = None,
    progress: Callable[[int, int], None] | None = None,
    kept: KeptFaces | None = None,
) -> list[np.ndarray]:
    """Decode the needed frames once and warp every item: returns, per item, uint8 (T, S, S, 3).

    ``frames`` is a tensor decoder (NVDEC when ``DFS_DECODER`` chose it): the crops are then cut
    on the frames' device, ``warp_chunk`` frames per batched warp, and only the crops come to the
    host. None, or a file that source cannot decode, runs the PyAV + OpenCV path. Decoding stops
    after the last frame an item uses; ``guard`` checks every decoded frame (see
    :class:`~service.pipeline.decode.DecodeGuard`). ``progress(done, total)`` is told, at every
    frame an item uses, how far into the pass's ``total`` frames the decode is. ``kept`` holds the
    planes the detection pass kept around the faces (:mod:`service.pipeline.kept_faces`): frames
    whose crops lie inside them are converted from there, and only the others are decoded again.
    """
    outputs = [
        np.zeros((len(it.frame_indices), specs[it.model].input_size, specs[it.model].input_size, 3), np.uint8)
        for it in items
    ]
    uses: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for item_no, item in enumerate(items):
        for position, frame_index in enumerate(item.frame_indices):
            uses[int(frame_index)].append((item_no, position))
    if not uses:
        return outputs
    max_frames = min(max_frames, max(uses) + 1)  # frames after the last one used cost decode time for nothing
    if frames is not None:
        try:
            with thread_stream():  # this request's decode and warps overlap other requests' GPU work
                _extract_crops_tensor(
                    path, items, specs, uses, outputs, frames, max_frames, warp_chunk, guard, progress
                )
            return outputs
        except FrameSourceUnsupported as exc:
            log.info("%s: tensor decoder cannot decode it (%s); using PyAV", path.name, exc)
    regions = {
        index: crop_region([(items[n].matrices[p], specs[items[n].model].input_size) for n, p in used])
        for index, used in uses.items()
    }
    covered = {index for index, region in regions.items() if kept is not None and kept.covers(index, region)}
    missing = sorted(uses.keys() - covered)
    frames_in: Iterable[DecodedFrame] = ()
    if missing:
        frames_in = iter_frames(
            path, max_frames=missing[-1] + 1, wanted=set(missing), threads=threads, guard=guard, regions=regions
        )
    if covered and kept is not None:
        from_kept = kept.frames_for({i: regions[i] for i in covered}, guard.check_cancelled if guard else None)
        frames_in = heapq.merge(from_kept, frames_in, key=lambda frame: frame.index)
    log.debug(
        "%s: %d frames cropped from the detection pass's planes, %d decoded again",
        path.name,
        len(covered),
        len(missing),
    )
    canvas = FrameCanvas()
    for frame in _reporting(frames_in, progress, max_frames):
        rgb = canvas.holding(frame)
        for item_no, position in uses[frame.index]:
            size = specs[items[item_no].model].input_size
            cv2.warpAffine(
                rgb,
                items[item_no].matrices[position],
                (size, size),
                dst=outputs[item_no][position],
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
            )
    return outputs


#: Source pixels a crop's bilinear samples may read beyond its corners' footprint.
_REGION_MARGIN = 2


def crop_region(crops: list[tuple[np.ndarray, int]]) -> Region:
    """The frame rectangle every (matrix, size) crop of one frame reads, with a margin: the part of
    the frame the crop pass converts to RGB (:func:`~service.pipeline.decode.region_rgb`).

    Each crop's output square maps back through its inverse matrix to a quadrilateral of the frame;
    the rectangle bounds them all. Sampling outside it would read pixels the region lacks, so the
    margin covers the bilinear neighbours; the decoder clips the rectangle to the frame, where the
    border behaves as before.
    """
    corners = []
    for matrix, size in crops:
        inverse = cv2.invertAffineTransform(matrix)
        square = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]], np.float64)
        corners.append(square @ inverse.T)
    points = np.concatenate(corners)
    low = np.floor(points.min(axis=0)) - _REGION_MARGIN
    high = np.ceil(points.max(axis=0)) + _REGION_MARGIN + 1
    return int(low[0]), int(low[1]), int(high[0]), int(high[1])


class FrameCanvas:
    """One whole-frame buffer that regions are pasted into at their corner (remade when the size changes).

    Each crop then warps with its own matrix on an image of the frame's size, which gives bit for
    bit the crop the whole frame gives: a matrix shifted by the region's corner does not (OpenCV's
    fixed-point rounding moves ~1 in 10^4 pixels of a rotated crop by 1). Pixels outside the region
    are stale and never read (:func:`crop_region`'s margin). One buffer, not one per size: a stream
    that changes size at every frame must not hold a frame of each.
    """

    def __init__(self) -> None:
        self._buffer = np.empty((0, 0, 3), np.uint8)

    def holding(self, frame: DecodedFrame) -> np.ndarray:
        """``frame``'s pixels at their place in a frame-sized image (the frame itself when whole)."""
        if frame.whole is None:
            return frame.rgb
        if self._buffer.shape[:2] != frame.whole:
            self._buffer = np.empty((*frame.whole, 3), np.uint8)
        buffer = self._buffer
        x, y = frame.origin
        height, width = frame.rgb.shape[:2]
        buffer[y : y + height, x : x + width] = frame.rgb
        return buffer


def _extract_crops_tensor(
    path: Path,
    items: list[CropItem],
    specs: dict[str, ModelSpec],
    uses: dict[int, list[tuple[int, int]]],
    outputs: list[np.ndarray],
    frames: TensorFrameSource,
    max_frames: int,
    chunk_size: int,
    guard: DecodeGuard | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Fill ``outputs`` from tensor frames: one batched warp per crop size per chunk of frames."""
    import torch

    from service.pipeline.gpu_warp import warp_crops

    decoded = _reporting(frames(path, max_frames=max_frames, wanted=uses.keys(), guard=guard), progress, max_frames)
    for chunk in same_shape_chunks(decoded, chunk_size):
        batch = torch.stack([f.rgb for f in chunk])
        by_size: dict[int, tuple[list[int], list[np.ndarray], list[tuple[int, int]]]] = {}
        for row, frame in enumerate(chunk):
            for item_no, position in uses[frame.index]:
                rows, matrices, slots = by_size.setdefault(specs[items[item_no].model].input_size, ([], [], []))
                rows.append(row)
                matrices.append(items[item_no].matrices[position])
                slots.append((item_no, position))
        for size, (rows, matrices, slots) in by_size.items():
            crops = warp_crops(batch, rows, np.stack(matrices), size).cpu().numpy()
            for crop, (item_no, position) in zip(crops, slots, strict=True):
                outputs[item_no][position] = crop


def _reporting(frames: Iterable[Frame], progress: Callable[[int, int], None] | None, total: int) -> Iterator[Frame]:
    """``frames`` as they are, telling ``progress`` each one's position in the pass."""
    for frame in frames:
        if progress is not None:
            progress(frame.index + 1, total)
        yield frame
