"""Heat maps: where on the face a model saw forgery, for models whose engine gives a spatial map.

PCL-I2G classifies every patch of its crop (8x8 at 256 px) before averaging them into its score;
that patch map is the model's own account of where the evidence lies. The served engine returns
the map as its optional second output :data:`models.spec.HEATMAP_OUTPUT` when it was exported with
``python -m export --heatmap``; engines without it (older exports, TensorRT plans, models with no
map) give no heat map, and nothing else changes. The map is computed on one crop per track (the
frame the detector was surest of), outside the batcher: one extra forward per track.

This module draws the map; asking an engine for it is :mod:`service.pipeline.heatmap_runner`'s
(the engines' layer).
"""

from __future__ import annotations

import cv2
import numpy as np

from service.pipeline.failures import DfsFailure

#: side of the heat map PNG in pixels
HEATMAP_SIZE = 112
_OVERLAY_ALPHA = 0.45  # weight of the colour map over the face


def heatmap_png(crop: np.ndarray, patch_logits: np.ndarray, size: int = HEATMAP_SIZE) -> bytes:
    """The patch map's P(fake) (0 blue .. 1 red, JET) laid over the model's own crop, as a PNG.

    Patches are drawn as the cells they are (nearest-neighbour), not smoothed into detail the
    model never resolved.
    """
    probability = 1.0 / (1.0 + np.exp(-np.asarray(patch_logits, dtype=np.float64)))
    face = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    cells = cv2.resize((probability * 255).round().astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    colours = cv2.cvtColor(cv2.applyColorMap(cells, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blended = cv2.addWeighted(face, 1.0 - _OVERLAY_ALPHA, colours, _OVERLAY_ALPHA, 0.0)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))
    if not ok:
        raise DfsFailure("OpenCV could not encode the heat map as PNG")
    return encoded.tobytes()
