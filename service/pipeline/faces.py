"""Stage 3, faces: find faces and five landmarks in frames.

Two detectors share one interface (:class:`FaceDetector`):
- ``retinaface``: the network in :mod:`models.retinaface` with public Pytorch_Retinaface weights
  (MobileNet-0.25 or ResNet-50) — the detector FTCN was trained with, batched, GPU-capable;
- ``blazeface``: mediapipe's BlazeFace (full-range model), whose weights ship inside the mediapipe
  wheel, so it works offline with nothing configured. It is the default when no RetinaFace weights
  are set. ``DFS_BLAZEFACE_RUNTIME=litert`` runs the same model on LiteRT
  (:mod:`service.pipeline.blazeface`): the same faces to a fraction of a pixel, 25% less CPU.

Landmarks are always five points in the order left eye, right eye, nose, left mouth corner,
right mouth corner, "left" meaning image-left, in the pixel coordinates of the frame passed in.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from models.spec import FACE_TEMPLATE_256
from service.pipeline.failures import DfsInputError
from service.pipeline.gpu_streams import thread_stream

if TYPE_CHECKING:  # torch is imported lazily: the BlazeFace-only path never needs it
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # (4,) float32 x1, y1, x2, y2
    score: float
    landmarks: np.ndarray  # (5, 2) float32

    def scaled(self, factor: float) -> Face:
        return Face(self.box * factor, self.score, self.landmarks * factor)


class FaceDetector(Protocol):
    name: str

    def detect(self, frames: list[np.ndarray]) -> list[list[Face]]:
        """Faces per frame; ``frames`` are RGB uint8 arrays of one size."""
        ...


# Mouth corners relative to the mouth centre, in units of the eye-to-eye vector, taken from the
# alignment template FTCN crops with (corner spread 76.6 px vs eye spread 83.2 px at 256 scale).
_MOUTH_HALF_SPREAD = (
    0.5 * (FACE_TEMPLATE_256[4][0] - FACE_TEMPLATE_256[3][0]) / (FACE_TEMPLATE_256[1][0] - FACE_TEMPLATE_256[0][0])
)


class BlazeFaceDetector:
    """mediapipe BlazeFace, full-range model; thread-safe through one graph per thread.

    BlazeFace gives six keypoints (two eyes, nose tip, mouth centre, two ear tragions) but no mouth
    corners. We place the corners on the line through the mouth centre parallel to the eyes, at the
    spread the alignment template has: the similarity fit then sees the mouth's true position and
    the face's roll, which is all a five-point similarity transform can use anyway.
    """

    name = "blazeface"

    def __init__(self, min_score: float = 0.5) -> None:
        import mediapipe as mp  # heavy import, kept out of module import time

        self._solution = mp.solutions.face_detection
        self._min_score = min_score
        self._local = threading.local()

    def _graph(self):  # noqa: ANN202 - mediapipe type
        graph = getattr(self._local, "graph", None)
        if graph is None:
            graph = self._solution.FaceDetection(model_selection=1, min_detection_confidence=self._min_score)
            self._local.graph = graph
        return graph

    def detect(self, frames: list[np.ndarray]) -> list[list[Face]]:
        graph = self._graph()
        return [self._detect_one(graph, frame) for frame in frames]

    @staticmethod
    def _detect_one(graph, frame: np.ndarray) -> list[Face]:  # noqa: ANN001 - mediapipe type
        height, width = frame.shape[:2]
        result = graph.process(np.ascontiguousarray(frame))
        faces: list[Face] = []
        for detection in result.detections or []:
            data = detection.location_data
            rel = data.relative_bounding_box
            box = np.array(
                [rel.xmin * width, rel.ymin * height, (rel.xmin + rel.width) * width, (rel.ymin + rel.height) * height],
                dtype=np.float32,
            )
            points = np.array([[k.x * width, k.y * height] for k in data.relative_keypoints], dtype=np.float32)
            if len(points) >= 4:
                faces.append(blazeface_face(box, float(detection.score[0]), points))
        return faces


def blazeface_face(box: np.ndarray, score: float, points: np.ndarray) -> Face:
    """A :class:`Face` from BlazeFace's box and keypoints (two eyes, nose tip, mouth centre, ...), mouth
    corners placed as :class:`BlazeFaceDetector` explains."""
    eye_a, eye_b, nose, mouth = points[0], points[1], points[2], points[3]
    left_eye, right_eye = (eye_a, eye_b) if eye_a[0] <= eye_b[0] else (eye_b, eye_a)
    offset = (right_eye - left_eye) * _MOUTH_HALF_SPREAD
    landmarks = np.stack([left_eye, right_eye, nose, mouth - offset, mouth + offset]).astype(np.float32)
    return Face(box=np.asarray(box, dtype=np.float32), score=score, landmarks=landmarks)


class LiteRtBlazeFaceDetector:
    """The same BlazeFace model and graph steps run by LiteRT (:mod:`service.pipeline.blazeface`): mediapipe's
    faces for 25% less CPU on one thread, and threads of its own. Thread-safe (one interpreter per thread)."""

    name = "blazeface"

    def __init__(self, min_score: float = 0.5, threads: int = 0) -> None:
        from service.pipeline.blazeface import LiteRtBlazeFace

        self._net = LiteRtBlazeFace(threads=threads)
        self._min_score = min_score

    def detect(self, frames: list[np.ndarray]) -> list[list[Face]]:
        out = []
        for frame in frames:
            found = self._net.detect(np.ascontiguousarray(frame), self._min_score)
            out.append(
                [
                    blazeface_face(box, float(score), points)
                    for box, score, points in zip(found.boxes, found.scores, found.keypoints, strict=True)
                ]
            )
        return out


class RetinaFaceDetector:
    """RetinaFace from :mod:`models.retinaface`; one forward per batch of frames."""

    name = "retinaface"

    def __init__(self, weights: Path, device: str = "cpu", min_score: float = 0.5) -> None:
        import torch

        from models.retinaface import load_retinaface

        self._torch = torch
        self._device = device
        self._net = load_retinaface(weights, device=device)
        self._min_score = min_score
        # torch modules are not safe to run from several threads at once on one device stream
        self._lock = threading.Lock()

    def detect(self, frames: list[np.ndarray]) -> list[list[Face]]:
        if not frames:
            return []
        return self.detect_tensor(self._torch.from_numpy(np.stack(frames)).to(self._device).permute(0, 3, 1, 2))

    def detect_tensor(self, batch: torch.Tensor) -> list[list[Face]]:
        """Faces in a batch (N, 3, H, W) of RGB frames, uint8 or float 0..255, on any device.

        The GPU frame path hands over frames already on the detector's device, so they are
        detected where they are (no host round trip); the network casts to its dtype itself.
        """
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise DfsInputError(f"expected frames (N, 3, H, W), got {tuple(batch.shape)}")
        if batch.shape[0] == 0:
            return []
        with self._lock, thread_stream(self._device), self._torch.inference_mode():
            results = self._net.detect(batch, score_threshold=self._min_score)
        return [
            [
                Face(
                    box=r.boxes[i].astype(np.float32),
                    score=float(r.scores[i]),
                    landmarks=r.landmarks[i].astype(np.float32),
                )
                for i in range(len(r.scores))
            ]
            for r in results
        ]


def detect_tensor(detector: FaceDetector, batch: torch.Tensor) -> list[list[Face]]:
    """Detect on a (N, 3, H, W) RGB tensor batch (uint8, or float 0..255) with any detector.

    RetinaFace takes the tensor where it is; BlazeFace (mediapipe) only reads host uint8 numpy
    images, so for it, and only for it, the frames are copied to the host.
    """
    import torch

    method = getattr(detector, "detect_tensor", None)
    if method is not None:
        return method(batch)
    if batch.dtype != torch.uint8:
        batch = batch.round().clamp(0, 255).to(torch.uint8)
    host = batch.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    return detector.detect(list(host))


NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")


def resolve_device(setting: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``.

    Without the NVIDIA kernel driver there is no GPU to find, and torch is not imported to learn
    that: its import alone holds ~500 MB of resident memory, which a CPU service never needs.
    """
    if setting != "auto":
        return setting
    if not NVIDIA_DRIVER.exists():
        return "cpu"
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


class DetectorSettings(Protocol):
    """What :func:`create_detector` reads (``service.config.Settings`` has it): the media layer names
    the settings it needs rather than import the app's configuration."""

    @property
    def face_detector(self) -> str: ...
    @property
    def retinaface_weights(self) -> Path | None: ...
    @property
    def device(self) -> str: ...
    @property
    def min_face_score(self) -> float: ...
    @property
    def blazeface_runtime(self) -> str: ...
    @property
    def face_detector_threads(self) -> int: ...


def create_detector(settings: DetectorSettings) -> FaceDetector:
    """Pick the detector the settings ask for (``auto``: RetinaFace when weights are configured)."""
    choice = settings.face_detector
    if choice == "auto":
        weights = settings.retinaface_weights
        choice = "retinaface" if weights and weights.is_file() else "blazeface"
        if weights and not weights.is_file():
            log.warning("RetinaFace weights %s not found; using BlazeFace", weights)
    if choice == "retinaface":
        if not settings.retinaface_weights:
            raise DfsInputError("DFS_FACE_DETECTOR=retinaface needs DFS_RETINAFACE_WEIGHTS")
        detector: FaceDetector = RetinaFaceDetector(
            settings.retinaface_weights, device=resolve_device(settings.device), min_score=settings.min_face_score
        )
    else:
        detector = blazeface(settings)
    log.info("face detector: %s", detector.name)
    return detector


def blazeface(settings: DetectorSettings) -> FaceDetector:
    """BlazeFace on the runtime ``DFS_BLAZEFACE_RUNTIME`` names (mediapipe's graph unless ``litert``)."""
    from service.pipeline.blazeface import litert_available

    if settings.blazeface_runtime != "litert":
        log.info("BlazeFace through mediapipe's graph")
        return BlazeFaceDetector(min_score=settings.min_face_score)
    if not litert_available():
        raise DfsInputError(
            "DFS_BLAZEFACE_RUNTIME=litert but ai-edge-litert is not installed (pip install ai-edge-litert)"
        )
    log.info("BlazeFace through LiteRT on %s threads", settings.face_detector_threads or "all")
    return LiteRtBlazeFaceDetector(min_score=settings.min_face_score, threads=settings.face_detector_threads)
