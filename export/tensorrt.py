"""ONNX -> TensorRT plan, written beside the ONNX file it was built from.

A plan is tied to the GPU architecture and the TensorRT version that built it, so it goes into
the ONNX version's own folder as ``model.sm<cc>.trt<version>.plan`` and is listed in that
version's manifest (:class:`export.manifest.Plan`, with its parity against ONNX Runtime); the
service uses it where the machine matches and the ONNX file elsewhere
(:mod:`service.pipeline.tensorrt_engine`, which also holds the runner).

``tensorrt`` is imported lazily: NVIDIA serves it only from its own package index, so everything
else in the project works without it and its tests skip where it cannot be imported.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from export.errors import ExportError, ExportInputError
from export.manifest import ENGINE_FILES, Manifest, Parity, Plan, plan_file_name
from export.onnx_export import INPUT_NAME, OUTPUT_NAME
from service.pipeline.tensorrt_engine import TensorRTEngine, gpu_identity, import_tensorrt

log = logging.getLogger(__name__)


class TensorRTParityError(ExportError):
    """The built plan's scores differ from ONNX Runtime's by more than the tolerance: nothing is written."""


def build_serialized_engine(onnx_path: Path, input_shape: tuple[int, ...], max_batch: int, *, fp16: bool) -> bytes:
    """Build a plan with one optimisation profile covering batch 1..max_batch."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    per_item = tuple(input_shape[1:])
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, *per_item), (max(1, max_batch // 2), *per_item), (max_batch, *per_item))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path}")
    return bytes(serialized)


def build_engine(
    onnx_folder: Path, *, fp16: bool, max_batch: int = 64, samples: int = 4, tolerance: float = 1e-2
) -> Path:
    """Build a plan for this machine from an exported ONNX version and write it beside the ONNX file.

    Parity is measured against onnxruntime (CPU, fp32) on random inputs and recorded; a plan whose
    error exceeds ``tolerance`` in P(fake) is not written (:class:`TensorRTParityError`). A plan
    for the same GPU architecture and TensorRT version is replaced. Returns the plan's path.
    """
    import onnxruntime as ort
    import torch

    from export.onnx_export import random_inputs

    source = Manifest.read(onnx_folder)
    if source.format != "onnx":
        raise ExportInputError(f"{onnx_folder} holds a {source.format} engine; build plans from an ONNX version")
    spec = source.model_spec()
    identity = gpu_identity()
    plan_bytes = build_serialized_engine(onnx_folder / ENGINE_FILES["onnx"], spec.input_shape(1), max_batch, fp16=fp16)
    engine = TensorRTEngine(plan_bytes, max_batch)
    inputs = random_inputs(spec, samples, torch.Generator().manual_seed(7)).numpy()
    session = ort.InferenceSession(str(onnx_folder / ENGINE_FILES["onnx"]), providers=["CPUExecutionProvider"])
    (expected,) = session.run([OUTPUT_NAME], {INPUT_NAME: inputs})
    got = engine.run(inputs)
    expected = np.asarray(expected).reshape(-1)
    diff_logit = float(np.abs(got - expected).max())
    diff_prob = float(np.abs(1 / (1 + np.exp(-got)) - 1 / (1 + np.exp(-expected))).max())
    log.info("%s: TensorRT (%s) vs onnxruntime max|dP| = %.2e", source.name, "fp16" if fp16 else "fp32", diff_prob)
    if diff_prob > tolerance:
        raise TensorRTParityError(
            f"{source.name}: the TensorRT plan differs from onnxruntime by {diff_prob:.3e} in P(fake) "
            f"(> {tolerance}); nothing written{' (try without --fp16)' if fp16 else ''}"
        )
    name = plan_file_name(identity["compute_capability"], identity["tensorrt"])
    path = onnx_folder / name
    partial = onnx_folder / f".{name}.partial"
    partial.write_bytes(plan_bytes)
    partial.replace(path)
    plan = Plan(
        file=name,
        compute_capability=identity["compute_capability"],
        tensorrt=identity["tensorrt"],
        gpu=identity["gpu"],
        fp16=fp16,
        max_batch=max_batch,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        parity=Parity(
            reference="onnxruntime CPU fp32",
            runtime=f"tensorrt {identity['tensorrt']} on {identity['gpu']}",
            precision="fp16" if fp16 else "fp32 (TF32 allowed)",
            max_abs_diff_logit=diff_logit,
            max_abs_diff_prob=diff_prob,
            tolerance_prob=tolerance,
            batch_sizes=[samples],
            samples=samples,
        ),
    )
    source.with_plan(plan).write(onnx_folder)
    log.info("%s: wrote TensorRT plan %s", source.name, path)
    return path
