"""torch -> ONNX with a dynamic batch axis, and the parity measurement that guards it.

Every registered model already returns the fake logit ``(N,)``, so the exported graph has one input
``input`` and one output ``logit`` for all five detectors; the service needs no per-model code.
A model with a patch map (PCL-I2G's ``forward_with_heatmap``) may add a second output
:data:`~models.spec.HEATMAP_OUTPUT` on request (``heatmap=True``); ``logit`` stays first, so the
engine serves as before and the service draws the map only where it is present.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.errors import ExportError, ExportInputError
from models.spec import HEATMAP_OUTPUT, ModelSpec

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logit"
DEFAULT_OPSET = 18


class _WithHeatmap(nn.Module):
    """The model's ``forward_with_heatmap`` as its forward: (logit, patch map) from one pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_with_heatmap(images)


def export_onnx(
    model: nn.Module, spec: ModelSpec, path: Path, *, opset: int = DEFAULT_OPSET, heatmap: bool = False
) -> str:
    """Write ``model`` to ``path`` with a dynamic batch axis; returns the exporter used.

    The dynamo exporter is tried first (it is torch's maintained path); the TorchScript exporter is
    the fallback for graphs dynamo cannot trace. Weights stay inside the file (all our models are
    far below ONNX's 2 GB limit), so a version folder is one engine file and its manifest.
    ``heatmap`` adds the model's patch map as the second output (the model must have
    ``forward_with_heatmap``).
    """
    model = model.eval()
    output_names = [OUTPUT_NAME]
    if heatmap:
        if not hasattr(model, "forward_with_heatmap"):
            raise ExportInputError(f"{spec.name} has no patch map to export (no forward_with_heatmap)")
        model, output_names = _WithHeatmap(model).eval(), [OUTPUT_NAME, HEATMAP_OUTPUT]
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
                output_names=output_names,
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
            output_names=output_names,
            dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *output_names]},
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
            raise ExportError(f"onnxruntime returned shape {got.shape}, torch {expected.shape} (batch {batch})")
        worst_logit = max(worst_logit, float(np.abs(got - expected).max()))
        worst_prob = max(worst_prob, float(np.abs(_sigmoid(got) - _sigmoid(expected)).max()))
    return ParityResult(worst_logit, worst_prob, list(batch_sizes), sum(batch_sizes))


def heatmap_parity(
    model: nn.Module, spec: ModelSpec, onnx_path: Path, *, batch: int = 2, seed: int = 0
) -> tuple[list[int], float]:
    """The exported patch map's shape without the batch axis, and max |P_torch - P_onnx| over its cells."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs = random_inputs(spec, batch, torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        _, expected = model.forward_with_heatmap(inputs)
    (got,) = session.run([HEATMAP_OUTPUT], {INPUT_NAME: inputs.numpy()})
    expected = expected.float().numpy()
    if got.shape != expected.shape:
        raise ExportError(f"onnxruntime returned a {got.shape} patch map, torch {expected.shape}")
    return list(expected.shape[1:]), float(np.abs(_sigmoid(got) - _sigmoid(expected)).max())


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
