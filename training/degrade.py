"""Resolution loss and JPEG re-compression, shared by the frame and clip datasets.

Sources differ in compression and sharpness (FaceForensics++ c40 is blocky, talking-head demos are
clean), which a detector can learn instead of forgery; degrading any sample, either class, makes
"compressed" or "soft" carry no label. A frame model's sample draws its own degradation; a clip
draws one for all its frames (:class:`Degradation`), as a re-encoded video is degraded throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

Image = np.ndarray  # (H, W, 3) uint8 RGB

DEGRADE_SCALE = (0.3, 0.9)
DEGRADE_QUALITY = (30, 90)  # inclusive


def jpeg(image: Image, quality: int) -> Image:
    """Re-compress as JPEG; OpenCV encodes BGR, so the channels are swapped around the codec
    (chroma subsampling would otherwise treat red as blue)."""
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1] if ok else image


@dataclass(frozen=True)
class Degradation:
    """Area-downscale by ``factor``, back up bilinearly, then JPEG at ``quality``."""

    factor: float
    quality: int

    @classmethod
    def draw(
        cls,
        rng: np.random.Generator,
        scale: tuple[float, float] = DEGRADE_SCALE,
        quality: tuple[int, int] = DEGRADE_QUALITY,
    ) -> Degradation:
        factor = float(rng.uniform(*scale))
        return cls(factor, int(rng.integers(quality[0], quality[1] + 1)))

    def __call__(self, image: Image) -> Image:
        height, width = image.shape[:2]
        small = cv2.resize(
            np.ascontiguousarray(image),
            (max(8, round(width * self.factor)), max(8, round(height * self.factor))),
            interpolation=cv2.INTER_AREA,
        )
        restored = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
        return jpeg(restored, self.quality)


def degrade(
    image: Image,
    rng: np.random.Generator,
    scale: tuple[float, float] = DEGRADE_SCALE,
    quality: tuple[int, int] = DEGRADE_QUALITY,
) -> Image:
    """One image, its degradation drawn from ``rng``."""
    return Degradation.draw(rng, scale, quality)(image)
