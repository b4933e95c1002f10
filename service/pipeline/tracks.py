"""Stage 4, tracks: link per-frame detections into one track per face identity.

An IoU tracker (Hungarian matching on box overlap, as SORT does without its Kalman filter): the
videos we score are short and faces move little between detection frames, so overlap alone links
them reliably and needs no motion model to tune. Frames between detections — skipped by
``detect_every`` or missed by the detector — are filled by linear interpolation of boxes and
landmarks, so each track covers every frame from its first to its last detection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from service.pipeline.faces import Face


@dataclass
class Track:
    """A face followed over consecutive frames ``first_frame..last_frame`` (inclusive)."""

    track_id: int
    frame_indices: np.ndarray  # (F,) int, consecutive
    boxes: np.ndarray  # (F, 4) float32
    landmarks: np.ndarray  # (F, 5, 2) float32
    scores: np.ndarray  # (F,) float32, detector score (interpolated between detections)
    detected: np.ndarray  # (F,) bool, True where the detector saw the face on that frame

    @property
    def first_frame(self) -> int:
        return int(self.frame_indices[0])

    @property
    def last_frame(self) -> int:
        return int(self.frame_indices[-1])

    @property
    def mean_box(self) -> np.ndarray:
        return self.boxes.mean(axis=0)

    @property
    def mean_side(self) -> float:
        box = self.mean_box
        return float(max(box[2] - box[0], box[3] - box[1]))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes ``a`` (N,4) and ``b`` (M,4) -> (N, M)."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


@dataclass
class _OpenTrack:
    track_id: int
    detections: dict[int, Face] = field(default_factory=dict)
    last_seen: int = 0

    @property
    def last_box(self) -> np.ndarray:
        return self.detections[self.last_seen].box


class IouTracker:
    """Feed detections frame by frame with :meth:`update`; collect tracks with :meth:`finish`."""

    def __init__(self, iou_threshold: float = 0.3, max_gap: int = 8) -> None:
        self.iou_threshold = iou_threshold
        self.max_gap = max_gap
        self._open: list[_OpenTrack] = []
        self._closed: list[_OpenTrack] = []
        self._next_id = 0

    def update(self, frame_index: int, faces: list[Face]) -> None:
        still_open = []
        for track in self._open:
            (still_open if frame_index - track.last_seen <= self.max_gap + 1 else self._closed).append(track)
        self._open = still_open

        unmatched = set(range(len(faces)))
        if self._open and faces:
            iou = box_iou(np.stack([t.last_box for t in self._open]), np.stack([f.box for f in faces]))
            rows, cols = linear_sum_assignment(-iou)
            for row, col in zip(rows, cols, strict=True):
                if iou[row, col] >= self.iou_threshold:
                    track = self._open[row]
                    track.detections[frame_index] = faces[col]
                    track.last_seen = frame_index
                    unmatched.discard(col)
        for col in sorted(unmatched):
            track = _OpenTrack(self._next_id, {frame_index: faces[col]}, frame_index)
            self._next_id += 1
            self._open.append(track)

    def finish(self, *, min_detections: int = 1, max_tracks: int | None = None) -> list[Track]:
        """Interpolate every track over its span; drop short ones; keep the largest faces."""
        candidates = [t for t in self._closed + self._open if len(t.detections) >= min_detections]
        tracks = [_interpolate(t) for t in candidates]
        tracks.sort(key=lambda t: t.mean_side, reverse=True)
        if max_tracks is not None:
            tracks = tracks[:max_tracks]
        tracks.sort(key=lambda t: (t.first_frame, t.track_id))
        for new_id, track in enumerate(tracks):  # ids the caller sees are 0..n-1 in order of appearance
            track.track_id = new_id
        return tracks


def _interpolate(track: _OpenTrack) -> Track:
    seen = np.array(sorted(track.detections), dtype=np.int64)
    frames = np.arange(seen[0], seen[-1] + 1)
    boxes = np.stack([track.detections[i].box for i in seen])
    marks = np.stack([track.detections[i].landmarks for i in seen]).reshape(len(seen), -1)
    scores = np.array([track.detections[i].score for i in seen], dtype=np.float32)

    def fill(values: np.ndarray) -> np.ndarray:
        return np.stack([np.interp(frames, seen, values[:, k]) for k in range(values.shape[1])], axis=1)

    return Track(
        track_id=track.track_id,
        frame_indices=frames,
        boxes=fill(boxes).astype(np.float32),
        landmarks=fill(marks).reshape(len(frames), 5, 2).astype(np.float32),
        scores=np.interp(frames, seen, scores).astype(np.float32),
        detected=np.isin(frames, seen),
    )
