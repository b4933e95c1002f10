"""BlazeFace (full range) run by LiteRT directly: mediapipe's face detection graph without mediapipe.

The model is the one the mediapipe wheel ships (``face_detection_full_range_sparse.tflite``), so the
faces are mediapipe's. Why not mediapipe itself: its graph runs the model on one thread and serialises
graphs across threads (two threads with a graph each: 0.67 -> 1.05 s for 120 frames), and its call
costs 4.4 ms a 720p frame on the 2-core EPYC. LiteRT (``ai-edge-litert``, the TFLite interpreter
Google ships on PyPI) runs the same file with XNNPACK: 3.3 ms a frame on one thread, warp included,
2.1 ms on two, and an interpreter per thread runs in parallel. In the service the detection pass
also decodes on the other core (read_ahead.py), so it gained less: find_tracks on a 10 s 720p video
0.64-0.71 s -> 0.60 s, and the detector's CPU time per frame is what 4 clients gain.

What the graph does around the network, done here in numpy and OpenCV (mediapipe's calculators
have no Python API outside the graph, so this is written out; the steps and constants are those
of mediapipe's ``face_detection_full_range`` graph):

1. ``ImageToTensorCalculator``: the whole frame, padded to a square around its centre
   (``keep_aspect_ratio``), warped bilinearly onto 192 x 192 with the square's corners on the
   tensor's corners, zero border, then scaled to [-1, 1];
2. ``SsdAnchorsCalculator``: one anchor per cell of a 48 x 48 grid (stride 4), fixed size 1;
3. ``TensorsToDetectionsCalculator``: x, y, w, h and six keypoints per anchor, scaled by 192 and
   offset by the anchor; score = sigmoid of the clipped logit, kept from 0.6 (the graph's);
4. ``NonMaxSuppressionCalculator`` (``WEIGHTED``, IoU > 0.3): each kept face is the score-weighted
   mean of the boxes and keypoints it suppresses, with the best score;
5. ``DetectionProjectionCalculator``: back from the tensor to the frame's pixels.

tests/service/test_blazeface.py holds this to mediapipe's own output on real video frames.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from service.pipeline.failures import DfsFailure
from service.pipeline.tracks import box_iou

TENSOR_SIDE = 192  # the full-range model's input
GRID = TENSOR_SIDE // 4  # SsdAnchors: one layer, stride 4
KEYPOINTS = 6  # eyes, nose tip, mouth centre, ear tragions
SCORE_CLIP = 100.0
# The graph's own decoder threshold: mediapipe's Python min_detection_confidence does not lower it
# (with 0.5 in the decoder, the weighted boxes moved by up to 2.5 px from mediapipe's; with 0.6, 0.2 px),
# so faces are decoded from 0.6 and a higher min_score filters the result.
DECODER_MIN_SCORE = 0.6
NMS_IOU = 0.3
MODEL_FILE = "face_detection_full_range_sparse.tflite"


def litert_available() -> bool:
    return importlib.util.find_spec("ai_edge_litert") is not None


def packaged_model() -> Path:
    """The full-range model inside the installed mediapipe wheel, found without importing mediapipe
    (its import loads protobuf and OpenCV graphs this path never uses)."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise DfsFailure("mediapipe is not installed: its wheel carries the BlazeFace model")
    path = Path(next(iter(spec.submodule_search_locations))) / "modules" / "face_detection" / MODEL_FILE
    if not path.is_file():
        raise DfsFailure(f"{path} is missing from the mediapipe wheel")
    return path


def _anchors() -> np.ndarray:
    """(2304, 2) anchor centres in tensor units, row-major over the grid."""
    centres = (np.arange(GRID, dtype=np.float32) + 0.5) / GRID
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


ANCHORS = _anchors()


@dataclass(frozen=True)
class Square:
    """The frame's square region the tensor shows: its top-left corner and side, in frame pixels."""

    left: float
    top: float
    side: float

    @classmethod
    def around(cls, width: int, height: int) -> Square:
        side = float(max(width, height))
        return cls((width - side) / 2, (height - side) / 2, side)


def to_tensor(frame: np.ndarray) -> tuple[np.ndarray, Square]:
    """Step 1: the (192, 192, 3) float32 input in [-1, 1] and the square it shows."""
    height, width = frame.shape[:2]
    square = Square.around(width, height)
    scale = TENSOR_SIDE / square.side
    # the square's corners land on the tensor's corners (0 and 192), as mediapipe's perspective warp
    matrix = np.array([[scale, 0, -square.left * scale], [0, scale, -square.top * scale]], dtype=np.float64)
    warped = cv2.warpAffine(
        frame, matrix, (TENSOR_SIDE, TENSOR_SIDE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    return warped.astype(np.float32) * (2.0 / 255.0) - 1.0, square


@dataclass(frozen=True)
class Detections:
    """Faces of one frame in tensor units (0..1 of the tensor side), best score first."""

    boxes: np.ndarray  # (N, 4) x1, y1, x2, y2
    keypoints: np.ndarray  # (N, 6, 2)
    scores: np.ndarray  # (N,)


def decode(regressors: np.ndarray, logits: np.ndarray, min_score: float) -> Detections:
    """Steps 3-4 for one frame: ``regressors`` (2304, 16), ``logits`` (2304,) or (2304, 1); faces scoring
    below ``min_score`` are dropped after the suppression (which, as mediapipe's, sees every face from
    :data:`DECODER_MIN_SCORE`)."""
    clipped = np.clip(logits.reshape(-1).astype(np.float64), -SCORE_CLIP, SCORE_CLIP)
    scores = 1.0 / (1.0 + np.exp(-clipped))
    found = _suppressed(regressors, scores, np.flatnonzero(scores >= DECODER_MIN_SCORE))
    keep = found.scores >= min_score
    return Detections(found.boxes[keep], found.keypoints[keep], found.scores[keep])


def _suppressed(regressors: np.ndarray, scores: np.ndarray, keep: np.ndarray) -> Detections:
    """The anchors ``keep`` decoded (step 3) and suppressed (step 4)."""
    if keep.size == 0:
        return Detections(
            np.zeros((0, 4), np.float32), np.zeros((0, KEYPOINTS, 2), np.float32), np.zeros(0, np.float32)
        )
    raw = regressors[keep].astype(np.float32) / TENSOR_SIDE
    anchor = ANCHORS[keep]
    centre = raw[:, 0:2] + anchor
    half = raw[:, 2:4] / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    keypoints = raw[:, 4 : 4 + 2 * KEYPOINTS].reshape(-1, KEYPOINTS, 2) + anchor[:, None, :]
    sizes_ok = (half > 0).all(axis=1)  # mediapipe drops boxes of negative width or height
    return weighted_nms(boxes[sizes_ok], keypoints[sizes_ok], scores[keep][sizes_ok].astype(np.float32))


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray) -> Detections:
    """Step 4: take the best remaining face, average it with every face overlapping it by IoU > 0.3
    (weights: their scores), drop those, repeat."""
    order = np.argsort(-scores, kind="stable")
    out_boxes, out_points, out_scores = [], [], []
    while order.size:
        best = order[0]
        overlap = box_iou(boxes[best][None], boxes[order])[0] > NMS_IOU
        group = order[overlap]
        weights = scores[group][:, None]
        total = float(weights.sum())
        out_boxes.append((boxes[group] * weights).sum(axis=0) / total)
        out_points.append((keypoints[group] * weights[:, :, None]).sum(axis=0) / total)
        out_scores.append(scores[best])
        order = order[~overlap]
    return Detections(
        np.asarray(out_boxes, np.float32).reshape(-1, 4),
        np.asarray(out_points, np.float32).reshape(-1, KEYPOINTS, 2),
        np.asarray(out_scores, np.float32),
    )


def to_frame(detections: Detections, square: Square) -> Detections:
    """Step 5: tensor units to frame pixels."""
    origin = np.array([square.left, square.top], np.float32)
    return Detections(
        detections.boxes * square.side + np.tile(origin, 2),
        detections.keypoints * square.side + origin,
        detections.scores,
    )


class LiteRtBlazeFace:
    """The network on LiteRT, one interpreter per calling thread (an interpreter is not thread-safe),
    each on ``threads`` XNNPACK threads (0 = every core)."""

    def __init__(self, model: Path | None = None, threads: int = 0) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter_class = Interpreter
        self.model = model or packaged_model()
        self.threads = threads or (os.cpu_count() or 1)
        self._local = threading.local()
        self._interpreter()  # load now: a broken install fails at start-up, not on the first request

    def _interpreter(self):  # noqa: ANN202 - LiteRT type
        state = getattr(self._local, "state", None)
        if state is None:
            interpreter = self._interpreter_class(model_path=str(self.model), num_threads=self.threads)
            interpreter.allocate_tensors()
            outputs = sorted(interpreter.get_output_details(), key=lambda d: -int(d["shape"][-1]))
            state = (interpreter, interpreter.get_input_details()[0]["index"], [o["index"] for o in outputs])
            self._local.state = state
        return state

    def detect(self, frame: np.ndarray, min_score: float) -> Detections:
        """Faces in one RGB uint8 frame, in its pixels."""
        tensor, square = to_tensor(frame)
        interpreter, input_index, (regressors_index, logits_index) = self._interpreter()
        interpreter.set_tensor(input_index, tensor[None])
        interpreter.invoke()
        regressors = interpreter.get_tensor(regressors_index)[0]
        logits = interpreter.get_tensor(logits_index)[0]
        return to_frame(decode(regressors, logits, min_score), square)
