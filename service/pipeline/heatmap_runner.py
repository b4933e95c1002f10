"""An engine's patch-map output (:data:`models.spec.HEATMAP_OUTPUT`) as a callable, per runtime.

ONNX Runtime sessions are asked for that output alone, OpenVINO engines through their own
``heatmap_runner``, the eager torch runtime through the network's ``forward_with_heatmap``.
:mod:`service.pipeline.heatmaps` draws what it returns.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from models.spec import HEATMAP_OUTPUT
from service.pipeline.engines import Engine

#: float32 engine input batch -> per-patch fake logits (N, h, w)
HeatmapRunner = Callable[[np.ndarray], np.ndarray]


def heatmap_runner(engine: Engine) -> HeatmapRunner | None:
    """The engine's patch-map output as a callable, or None when it has none.

    ONNX Runtime sessions are asked for :data:`HEATMAP_OUTPUT` alone (the graph then skips the
    score's own tail); the eager torch runtime calls the network's ``forward_with_heatmap``; an
    engine with its own ``heatmap_runner(output_name)`` (OpenVINO) is asked for it.
    """
    own_runner = getattr(engine, "heatmap_runner", None)
    if callable(own_runner):
        return own_runner(HEATMAP_OUTPUT)
    session = getattr(engine, "session", None)
    if session is not None:
        if HEATMAP_OUTPUT not in {output.name for output in session.get_outputs()}:
            return None
        input_name = session.get_inputs()[0].name

        def run_onnx(batch: np.ndarray) -> np.ndarray:
            (out,) = session.run([HEATMAP_OUTPUT], {input_name: batch})
            return np.asarray(out, dtype=np.float32)

        return run_onnx
    model = getattr(engine, "model", None)
    network = getattr(model, "_orig_mod", model)  # torch.compile wraps the module
    if network is None or not hasattr(network, "forward_with_heatmap"):
        return None
    import torch

    device = getattr(engine, "device", torch.device("cpu"))

    def run_torch(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            _, patches = network.forward_with_heatmap(torch.from_numpy(batch).to(device))
        return patches.float().cpu().numpy()

    return run_torch
