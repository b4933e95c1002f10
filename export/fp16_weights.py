"""Store an ONNX graph's large float32 weights as float16, computing in float32 as before.

Why not a float16 graph: ONNX Runtime's CPU provider lacks float16 kernels for most operators,
so an fp16 graph would be slower on a CPU or not run at all. Here every large initializer is
stored as float16 and followed by a ``Cast`` to float32; ONNX Runtime folds those casts into
float32 constants when the session is created, so the file is half the size and inference is the
same float32 graph with weights rounded to float16 (which the export's parity check measures).
TensorRT builds from the same file and may still choose fp16 kernels with ``--fp16``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: tensors smaller than this stay float32 (biases, norms: negligible size, precision matters)
MIN_ELEMENTS = 1024


def store_weights_fp16(path: Path, min_elements: int = MIN_ELEMENTS) -> tuple[int, int]:
    """Rewrite ``path`` in place; returns (bytes before, bytes after)."""
    before = path.stat().st_size
    model = onnx.load(str(path))
    graph = model.graph
    keep, casts = [], []
    for init in graph.initializer:
        count = int(np.prod(init.dims)) if init.dims else 1
        if init.data_type != TensorProto.FLOAT or count < min_elements:
            keep.append(init)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), name=f"{init.name}__fp16")
        keep.append(half)
        casts.append(
            helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT, name=f"{init.name}__to_fp32")
        )
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return before, path.stat().st_size


def weights_as_fp32(model: onnx.ModelProto) -> onnx.ModelProto:
    """The inverse of :func:`store_weights_fp16` on a loaded model: float32 initializers, no casts.

    Quantization (``export.quantize``) must see a Conv's weight as an initializer to quantize it
    per channel; behind a ``Cast`` it would be taken for an activation. The values are the float16
    ones widened, i.e. exactly what the fp32 graph computes with.
    """
    graph = model.graph
    halves = {init.name: init for init in graph.initializer if init.name.endswith("__fp16")}
    widened, kept_nodes, dropped = [], [], set()
    for node in graph.node:
        if node.op_type == "Cast" and len(node.input) == 1 and node.input[0] in halves:
            array = numpy_helper.to_array(halves[node.input[0]]).astype(np.float32)
            widened.append(numpy_helper.from_array(array, name=node.output[0]))
            dropped.add(node.input[0])
        else:
            kept_nodes.append(node)
    keep = [init for init in graph.initializer if init.name not in dropped] + widened
    del graph.initializer[:]
    graph.initializer.extend(keep)
    del graph.node[:]
    graph.node.extend(kept_nodes)
    return model
