"""An exported ONNX model run by OpenVINO's CPU plugin (``DFS_RUNTIME=openvino``, or chosen by ``auto``).

OpenVINO reads the ONNX file as is (``Core.read_model``; no conversion step, no IR files to keep in
step with the ONNX), so every model in the repository, fp32 or its INT8 variant, runs on either CPU
runtime. Measured on the 2-core development CPU (AVX2, no AVX-512), it is the faster runtime for
FTCN's 3D convolutions (fp32 ~25 ms per clip against ONNX Runtime's ~30; INT8 12 ms where ONNX
Runtime's INT8 3D convolutions are slower than its fp32), and not for every 2D frame model, which
is why ``auto`` times both (:mod:`service.pipeline.engine_choice`) rather than preferring one.

Only the runtime is used, and it is imported without the model-conversion API: ``import openvino``
imports ``openvino.tools.ovc``, whose own import sends a Google Analytics event
(``openvino-telemetry``; opt-out only by a consent file in the user's home), which the offline test
(``tests/test_offline.py``) caught as DNS lookups. :func:`import_openvino` makes that one import fail
the way ``openvino/__init__.py`` already tolerates (``except ImportError``), for this process only.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

from service.pipeline.failures import DfsInputError


def import_openvino() -> ModuleType:
    """``openvino`` without ``openvino.tools.ovc`` (whose import phones home; see the module docstring).

    Every use of OpenVINO in the project goes through here. If something else imported openvino
    first, its event is already sent; this changes nothing then.
    """
    sys.modules.setdefault(CONVERSION_API, None)  # None: `import` raises ImportError, which openvino catches
    import openvino

    return openvino


CONVERSION_API = "openvino.tools.ovc"


def openvino_available() -> bool:
    """Whether the ``openvino`` package can be imported (it is in the ``cpu`` extra)."""
    try:
        import_openvino()
    except ImportError:
        return False
    return True


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes in bfloat16 natively here (AVX-512 BF16 or AMX).

    Asked of the plugin (``OPTIMIZATION_CAPABILITIES`` lists ``BF16``) rather than read from
    /proc/cpuinfo: it is the plugin's kernels that must exist. Where it is absent, a bf16 hint would
    be emulated or ignored, so the service never offers bf16 there.
    """
    if not openvino_available():
        return False
    capabilities = import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in capabilities


# What OpenVINO's INFERENCE_PRECISION_HINT is called for each of the service's precisions. fp32 is set
# explicitly too: on CPUs with AMX the plugin's own default is bf16, which must never happen unasked.
PRECISION_HINTS = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}


class OpenVinoEngine:
    """A model compiled for OpenVINO's CPU device with one infer request, called from one thread.

    The batcher runs one batch at a time per model (its single worker thread), so one request and
    the ``LATENCY`` hint (one stream, every inference thread on that batch) fit; ``threads`` caps
    the inference threads as ``DFS_ONNX_INTRA_OP_THREADS`` does for ONNX Runtime. The batch
    dimension stays dynamic, as exported.
    """

    def __init__(
        self,
        path: Path,
        *,
        threads: int = 0,
        output_name: str = "logit",
        release_memory: bool = False,
        precision: str = "fp32",
    ) -> None:
        """``release_memory``: hand the intermediate buffers back after every batch
        (``CompiledModel.release_memory``) rather than keep them sized for the largest batch seen, the
        counterpart of turning ONNX Runtime's arena off (``DFS_CPU_MEMORY_ARENA=false``).
        ``precision``: the compute precision of the file's float layers (:data:`PRECISION_HINTS`); an
        INT8 file's quantized layers are INT8 either way."""
        if precision not in PRECISION_HINTS:
            raise DfsInputError(f"OpenVINO precision {precision!r}: expected one of {sorted(PRECISION_HINTS)}")
        self.release_memory = release_memory
        self._release_lock = threading.Lock()
        core = import_openvino().Core()
        config: dict[str, object] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        names = {name for output in self.compiled.outputs for name in output.get_names()}
        self.output = self.compiled.output(output_name if output_name in names else 0)
        self.request = self.compiled.create_infer_request()
        self._names = names
        self.runtime = "openvino:CPU"

    @property
    def inference_precision(self) -> str:
        """What the compiled model computes its float layers in, as OpenVINO reports it ("f32", "bf16")."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def heatmap_runner(self, output_name: str) -> Callable[[np.ndarray], np.ndarray] | None:
        """The ``output_name`` output (PCL-I2G's patch map) as a callable, or None when the model has none.

        It gets an infer request of its own behind a lock: evidence is drawn outside the batcher's thread.
        """
        if output_name not in self._names:
            return None
        output = self.compiled.output(output_name)
        request = self.compiled.create_infer_request()
        # With release_memory, no inference may run while the compiled model frees its buffers: the
        # heat map's request then shares the batches' lock.
        lock = self._release_lock if self.release_memory else threading.Lock()

        def run(batch: np.ndarray) -> np.ndarray:
            with lock:
                return np.array(request.infer({0: batch})[output], dtype=np.float32)

        return run

    def run(self, batch: np.ndarray) -> np.ndarray:
        if not self.release_memory:
            return self._infer(batch)
        with self._release_lock:
            scores = self._infer(batch)
            self.compiled.release_memory()
        return scores

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: batch})
        # a copy: the request's output tensor is reused by the next inference
        return np.array(result[self.output], dtype=np.float32).reshape(-1)
