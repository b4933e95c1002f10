"""torch -> ONNX with a dynamic batch axis, and the parity measurement that guards it.

Every registered model already returns the fake logit ``(N,)``, so the exported graph has one input
``input`` and one output ``logit`` for all five detectors; the service needs no per-model code.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.spec import ModelSpec

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logit"
DEFAULT_OPSET = 18


def export_onnx(model: nn.Module, spec: ModelSpec, path: Path, *, opset: int = DEFAULT_OPSET) -> str:
    """Write ``model`` to ``path`` with a dynamic batch axis; returns the exporter used.

    The dynamo exporter is tried first (it is torch's maintained path); the TorchScript exporter is
    the fallback for graphs dynamo cannot trace. Weights stay inside the file (all our models are
    far below ONNX's 2 GB limit), so a version folder is one engine file and its manifest.
    """
    model = model.eval()
    sample = torch.zeros(spec.input_shape(2))
    try:
        batch = torch.export.Dim("batch", min=1, max=1024)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (sample,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
        program.save(str(path), external_data=False)
        return "torch.onnx dynamo"
    except Exception as exc:  # noqa: BLE001 - any dynamo failure falls back to the TorchScript exporter
        log.warning("dynamo export failed (%s: %s); using the TorchScript exporter", type(exc).__name__, exc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (sample,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=min(opset, 17),
        )
    return "torch.onnx torchscript"


@dataclass(frozen=True)
class ParityResult:
    max_abs_diff_logit: float
    max_abs_diff_prob: float
    batch_sizes: list[int]
    samples: int


def random_inputs(spec: ModelSpec, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Random uint8 images normalised as the service normalises crops (realistic value range)."""
    pixels = torch.randint(0, 256, spec.input_shape(batch), generator=generator, dtype=torch.uint8).float()
    mean = torch.tensor(spec.mean).view(1, 3, *([1] * (pixels.dim() - 2))) * 255
    std = torch.tensor(spec.std).view(1, 3, *([1] * (pixels.dim() - 2))) * 255
    return (pixels - mean) / std


def measure_parity(
    model: nn.Module, spec: ModelSpec, onnx_path: Path, *, batch_sizes: list[int], seed: int = 0
) -> ParityResult:
    """max |torch - onnxruntime| on fresh random inputs, in logit and in probability, on CPU fp32."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    worst_logit = worst_prob = 0.0
    for batch in batch_sizes:
        inputs = random_inputs(spec, batch, generator)
        with torch.inference_mode():
            expected = model(inputs).float().numpy()
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy()})
        got = np.asarray(got).reshape(-1)
        if got.shape != expected.shape:
            raise RuntimeError(f"onnxruntime returned shape {got.shape}, torch {expected.shape} (batch {batch})")
        worst_logit = max(worst_logit, float(np.abs(got - expected).max()))
        worst_prob = max(worst_prob, float(np.abs(_sigmoid(got) - _sigmoid(expected)).max()))
    return ParityResult(worst_logit, worst_prob, list(batch_sizes), sum(batch_sizes))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
