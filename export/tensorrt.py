"""ONNX -> TensorRT engine (``model.plan``), and the native TensorRT runtime that runs it.

A TensorRT engine is tied to the GPU model and the TensorRT version that built it, so every plan
carries both in its manifest and :func:`check_compatible` refuses a plan built elsewhere with a
message saying how to rebuild, instead of letting TensorRT fail obscurely (or run wrong kernels).

``tensorrt`` is imported lazily: NVIDIA serves it only from its own package index
(``pip install --extra-index-url https://pypi.nvidia.com tensorrt-cu13``), so everything else in
the project works without it and its tests skip where it cannot be imported.
"""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from export.manifest import ENGINE_FILES, Manifest, Parity
from export.onnx_export import INPUT_NAME, OUTPUT_NAME

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install --extra-index-url https://pypi.nvidia.com tensorrt-cu13"


class TensorRTUnavailable(RuntimeError):
    pass


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


def build_serialized_engine(onnx_path: Path, input_shape: tuple[int, ...], max_batch: int, *, fp16: bool) -> bytes:
    """Build a plan with one optimisation profile covering batch 1..max_batch."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    per_item = tuple(input_shape[1:])
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, *per_item), (max(1, max_batch // 2), *per_item), (max_batch, *per_item))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    return bytes(serialized)


def check_compatible(manifest: Manifest) -> None:
    """Refuse a plan built for another GPU or TensorRT version, saying how to rebuild it."""
    built = manifest.tensorrt or {}
    here = gpu_identity()
    mismatched = [k for k in ("gpu", "tensorrt") if built.get(k) != here[k]]
    if mismatched:
        raise RuntimeError(
            f"{manifest.name} v{manifest.version}: engine built for {built.get('gpu')} with TensorRT "
            f"{built.get('tensorrt')}, this machine has {here['gpu']} with TensorRT {here['tensorrt']}; "
            f"rebuild it here with `python -m export --tensorrt` (or serve the ONNX version)"
        )


class TensorRTEngine:
    """Runs a plan with CUDA buffers owned by torch (no pycuda needed)."""

    def __init__(self, plan: bytes, max_batch: int) -> None:
        import torch

        trt = import_tensorrt()
        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(plan)
        if self._engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine")
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
                    raise RuntimeError("TensorRT execution failed")
            self._stream.synchronize()
            outputs.append(result.cpu().numpy())
        return np.concatenate(outputs)


def build_engine(
    onnx_folder: Path, *, fp16: bool, max_batch: int = 64, samples: int = 4, tolerance: float = 1e-2
) -> Path:
    """Build a plan from an exported ONNX version; write it as the next version with its manifest.

    Parity is measured against onnxruntime (CPU, fp32) on random inputs and recorded; a plan whose
    error exceeds ``tolerance`` in P(fake) is not written.
    """
    import onnxruntime as ort
    import torch

    from export.onnx_export import random_inputs

    source = Manifest.read(onnx_folder)
    spec = source.model_spec()
    identity = gpu_identity()
    plan = build_serialized_engine(onnx_folder / ENGINE_FILES["onnx"], spec.input_shape(1), max_batch, fp16=fp16)
    engine = TensorRTEngine(plan, max_batch)
    inputs = random_inputs(spec, samples, torch.Generator().manual_seed(7)).numpy()
    session = ort.InferenceSession(str(onnx_folder / ENGINE_FILES["onnx"]), providers=["CPUExecutionProvider"])
    (expected,) = session.run([OUTPUT_NAME], {INPUT_NAME: inputs})
    got = engine.run(inputs)
    expected = np.asarray(expected).reshape(-1)
    diff_logit = float(np.abs(got - expected).max())
    diff_prob = float(np.abs(1 / (1 + np.exp(-got)) - 1 / (1 + np.exp(-expected))).max())
    log.info("%s: TensorRT (%s) vs onnxruntime max|dP| = %.2e", source.name, "fp16" if fp16 else "fp32", diff_prob)
    if diff_prob > tolerance:
        raise RuntimeError(f"TensorRT engine differs from onnxruntime by {diff_prob:.3e} in P(fake) (> {tolerance})")
    target = onnx_folder.parent / str(max(int(p.name) for p in onnx_folder.parent.iterdir() if p.name.isdigit()) + 1)
    target.mkdir()
    try:
        (target / ENGINE_FILES["tensorrt"]).write_bytes(plan)
        manifest = source.model_copy(
            update={
                "version": int(target.name),
                "format": "tensorrt",
                "file": ENGINE_FILES["tensorrt"],
                "max_batch": max_batch,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "tensorrt": {**identity, "fp16": fp16, "built_from_version": source.version},
                "parity": Parity(
                    reference="onnxruntime CPU fp32",
                    runtime=f"tensorrt {identity['tensorrt']} on {identity['gpu']}",
                    precision="fp16" if fp16 else "fp32 (TF32 allowed)",
                    max_abs_diff_logit=diff_logit,
                    max_abs_diff_prob=diff_prob,
                    tolerance_prob=tolerance,
                    batch_sizes=[samples],
                    samples=samples,
                ),
            }
        )
        manifest.write(target)
    except Exception:
        shutil.rmtree(target, ignore_errors=True)
        raise
    log.info("%s: wrote TensorRT engine %s", source.name, target)
    return target
