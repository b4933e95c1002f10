"""The native TensorRT runner, and which plan beside a model's ONNX file this machine can run.

A TensorRT plan is tied to the GPU architecture (compute capability) and the TensorRT version that
built it. ``python -m export --tensorrt`` writes each plan into the version folder of the ONNX file
it was built from, named and listed in the manifest by both (:class:`export.manifest.Plan`); the
service runs the plan that matches its machine and the ONNX file everywhere else, so one
repository serves a CPU node, an H200 and an L4 alike (a plan published as its own version would be
"the highest version" on every machine, and unusable on all but one).

``tensorrt`` is imported lazily: NVIDIA serves it only from its own package index
(``pip install --extra-index-url https://pypi.nvidia.com tensorrt-cu13``), so everything else works
without it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from export.manifest import Manifest, Plan
from service.pipeline.failures import DfsFailure

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install --extra-index-url https://pypi.nvidia.com tensorrt-cu13"
#: The engines' tensor names (export.onnx_export writes the same).
INPUT_NAME, OUTPUT_NAME = "input", "logit"


class TensorRTUnavailable(DfsFailure):
    """TensorRT cannot run here: the package is missing or no CUDA GPU is visible."""


class PlanMismatch(DfsFailure):
    """A plan built for another GPU architecture or TensorRT version."""


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailable(f"the tensorrt package is not installed ({INSTALL_HINT})") from exc
    return tensorrt


def gpu_identity() -> dict[str, str]:
    """What a plan is tied to: GPU name, compute capability, TensorRT version."""
    import torch

    trt = import_tensorrt()
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT needs a CUDA GPU and none is visible")
    major, minor = torch.cuda.get_device_capability()
    return {"gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}", "tensorrt": trt.__version__}


def check_compatible(manifest: Manifest) -> None:
    """Refuse a version that is itself a plan (``format: tensorrt``) built for another GPU or TensorRT."""
    built = manifest.tensorrt or {}
    here = gpu_identity()
    mismatched = [k for k in ("gpu", "tensorrt") if built.get(k) != here[k]]
    if mismatched:
        raise PlanMismatch(
            f"{manifest.name} v{manifest.version}: engine built for {built.get('gpu')} with TensorRT "
            f"{built.get('tensorrt')}, this machine has {here['gpu']} with TensorRT {here['tensorrt']}; "
            f"rebuild it here with `python -m export --tensorrt` (or serve the ONNX version)"
        )


def plan_for_machine(manifest: Manifest, folder: Path, identity: dict[str, str] | None) -> Plan | None:
    """The plan beside the ONNX file that this machine runs, or None (and the log says why not).

    ``identity`` is :func:`gpu_identity`'s answer, None where TensorRT cannot run; a listed plan
    whose file is missing is skipped with a warning, never half-used.
    """
    if not manifest.plans:
        return None
    built_for = ", ".join(f"sm {p.compute_capability} / TensorRT {p.tensorrt}" for p in manifest.plans)
    if identity is None:
        log.info("%s: TensorRT plans for %s not used (no TensorRT GPU here); serving ONNX", manifest.name, built_for)
        return None
    plan = manifest.plan_for(identity["compute_capability"], identity["tensorrt"])
    if plan is None:
        log.warning(
            "%s: no TensorRT plan for this machine (sm %s, TensorRT %s; plans: %s); serving ONNX "
            "(build one here with `python -m export --tensorrt`)",
            manifest.name,
            identity["compute_capability"],
            identity["tensorrt"],
            built_for,
        )
        return None
    if not (folder / plan.file).is_file():
        log.warning("%s: manifest lists %s, which is missing; serving ONNX", manifest.name, folder / plan.file)
        return None
    return plan


def machine_identity() -> dict[str, str] | None:
    """:func:`gpu_identity`, or None where TensorRT cannot run (no package, no GPU)."""
    try:
        return gpu_identity()
    except TensorRTUnavailable as exc:
        log.debug("TensorRT unavailable: %s", exc)
        return None


class TensorRTEngine:
    """Runs a plan with CUDA buffers owned by torch (no pycuda needed)."""

    def __init__(self, plan: bytes, max_batch: int) -> None:
        import torch

        trt = import_tensorrt()
        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(plan)
        if self._engine is None:
            raise DfsFailure("TensorRT could not deserialize the engine")
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        self.max_batch = max_batch
        self.runtime = f"tensorrt:{trt.__version__}"

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        outputs = []
        for start in range(0, len(batch), self.max_batch):
            chunk = torch.from_numpy(np.ascontiguousarray(batch[start : start + self.max_batch])).cuda()
            result = torch.empty(len(chunk), dtype=torch.float32, device="cuda")
            with torch.cuda.stream(self._stream):
                self._context.set_input_shape(INPUT_NAME, tuple(chunk.shape))
                self._context.set_tensor_address(INPUT_NAME, chunk.data_ptr())
                self._context.set_tensor_address(OUTPUT_NAME, result.data_ptr())
                if not self._context.execute_async_v3(self._stream.cuda_stream):
                    raise DfsFailure("TensorRT execution failed")
            self._stream.synchronize()
            outputs.append(result.cpu().numpy())
        return np.concatenate(outputs)
