"""Triton python-backend model: the exported ONNX graph beside this file, run with ONNX Runtime.

Written into each version folder by ``python -m export.triton_config --python-backend OUT`` (config:
``backend: "python"``, ``parameters { key: "onnx_file" ... }``). For CPU deployments and the tests:
Triton builds installable from PyPI (nvidia-pytriton) ship only the python backend, no onnxruntime
backend, so this lets a real Triton server batch and serve the same graphs the service runs itself.

Triton's dynamic batcher hands :meth:`TritonPythonModel.execute` several requests at once; they are
concatenated along the batch axis and run as one ONNX Runtime call, so one execution serves them all.

Which interpreter runs this: Triton's ``triton_python_backend_stub`` embeds the libpython it finds
through ``LD_LIBRARY_PATH`` (its standard library and site-packages come with it). The stub's interpreter
is isolated from ``PYTHONPATH``, so a launcher that wants another environment's packages names its
site-packages folders in ``PYTHON_BACKEND_SITE_PACKAGES`` (os.pathsep list), put first on ``sys.path``
here. The stub reads arrays with numpy 1's memory layout (under numpy 2 every output tensor came back
empty), so the environment must hold numpy<2 and onnxruntime: the project's launcher
(tests/triton_server.py) uses the interpreter the project's venv was made from, with the Triton venv's
packages (.venv-triton: nvidia-pytriton, numpy 1.26, onnxruntime at the project's version).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["ORT_DISABLE_TELEMETRY"] = "1"  # before onnxruntime is imported: nothing may phone home
for _folder in reversed([p for p in os.environ.get("PYTHON_BACKEND_SITE_PACKAGES", "").split(os.pathsep) if p]):
    if _folder not in sys.path:
        sys.path.insert(0, _folder)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402  (provided by the stub)


class TritonPythonModel:
    """One ONNX Runtime CPU session per model instance."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        options = ort.SessionOptions()
        threads = int(parameters.get("intra_op_threads") or 0)
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(folder / parameters.get("onnx_file", "model.onnx")), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        graph_inputs = {i.name for i in self.session.get_inputs()}
        graph_outputs = {o.name for o in self.session.get_outputs()}
        if set(self.input_names) != graph_inputs or not set(self.output_names) <= graph_outputs:
            raise ValueError(
                f"config.pbtxt names inputs {self.input_names} / outputs {self.output_names}; "
                f"the ONNX graph has {sorted(graph_inputs)} / {sorted(graph_outputs)}"
            )

    def execute(self, requests: list) -> list:
        """All waiting requests in one session run; each gets its own slice of the outputs."""
        try:
            per_input = {
                name: [pb_utils.get_input_tensor_by_name(request, name).as_numpy() for request in requests]
                for name in self.input_names
            }
            sizes = [len(array) for array in per_input[self.input_names[0]]]
            feeds = {
                name: arrays[0] if len(arrays) == 1 else np.concatenate(arrays) for name, arrays in per_input.items()
            }
            outputs = self.session.run(self.output_names, feeds)
        except Exception as exc:  # noqa: BLE001 - every request of the batch learns why
            error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        start = 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(output[start : start + size]))
                for name, output in zip(self.output_names, outputs, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
