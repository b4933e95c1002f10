"""``manifest.json``: the contract between export (writer) and the service (reader).

One manifest sits beside each engine in ``model_repository/<model>/<version>/``. It says what the
engine is (spec, I/O, precision), where it came from (checkpoint + sha256, the command), how far it
may be trusted (measured parity against torch, calibration, evaluation metrics), so serving never
guesses — the same role as Triton's ``config.pbtxt``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from models.spec import ModelSpec

MANIFEST_NAME = "manifest.json"
ENGINE_FILES = {"onnx": "model.onnx", "tensorrt": "model.plan"}


class Calibration(BaseModel):
    """Maps a model's raw fake logit onto the shared scale: ``z = (logit - logit(threshold)) / temperature``.

    After it, P(fake) = sigmoid(z) and 0.5 means "at this model's own decision threshold", so one
    service threshold means the same for every model. Identity by default.
    """

    temperature: float = Field(1.0, gt=0)
    threshold: float = Field(0.5, gt=0, lt=1)

    def apply(self, logit: float) -> float:
        return (logit - math.log(self.threshold / (1 - self.threshold))) / self.temperature


class Parity(BaseModel):
    reference: str = "torch fp32 eager (CPU)"
    runtime: str
    precision: str = "fp32"
    max_abs_diff_logit: float
    max_abs_diff_prob: float
    tolerance_prob: float
    batch_sizes: list[int]
    samples: int


class Variant(BaseModel):
    """Another precision of the same model: an INT8 post-training quantization in a file of its own,
    or bfloat16 compute of the fp32 file (``file`` is then the fp32 file, ``runtime`` the one runtime
    that computes in bf16 on a CPU, OpenVINO).

    Written by ``python -m export.quantize`` (``--precision``). ``parity`` compares it with fp32 on
    real face crops; ``auc`` / ``auc_fp32`` are the video AUC of both on held-out labelled videos
    through the serving pipeline. The service's ``DFS_PRECISION=auto`` only considers a variant whose
    ``auc_delta`` is known and within ``MAX_AUC_DELTA``.
    """

    file: str
    precision: Literal["int8", "bf16"] = "int8"
    runtime: str | None = Field(None, description="The only runtime that serves this variant (bf16: openvino).")
    method: str = Field("", description="How it was made, e.g. 'onnxruntime quantize_static QDQ, per-channel'.")
    calibration: dict[str, Any] = Field(default_factory=dict, description="What the activation ranges came from.")
    max_abs_diff_logit: float | None = Field(None, description="Against the fp32 file, on held-out real crops.")
    max_abs_diff_prob: float | None = None
    parity_samples: int = 0
    auc_fp32: float | None = None
    auc: float | None = None
    auc_data: str = Field("", description="The labelled videos both AUCs were measured on.")
    ensemble_auc_fp32: float | None = Field(
        None, description="The served ensemble's video AUC on the same videos with every model in fp32."
    )
    ensemble_auc: float | None = Field(
        None,
        description="The same with the models of ``ensemble_with`` in this precision and the rest in fp32 (older "
        "entries: every model of that run): a variant that keeps its own AUC can still reorder the "
        "ensemble's videos, whose scores sit close together.",
    )
    ensemble_with: list[str] | None = Field(
        None,
        description="The models in this precision when ``ensemble_auc`` was measured. For a model of the set "
        "export.quantize chose (every subset of it kept the ensemble within MAX_AUC_DELTA), that set; for "
        "another, the worst set it would join. None: every model of that run.",
    )
    command: str | None = None
    created_at: str = ""

    @property
    def auc_delta(self) -> float | None:
        if self.auc is None or self.auc_fp32 is None:
            return None
        return self.auc - self.auc_fp32

    @property
    def ensemble_auc_delta(self) -> float | None:
        if self.ensemble_auc is None or self.ensemble_auc_fp32 is None:
            return None
        return self.ensemble_auc - self.ensemble_auc_fp32

    def quality_kept(self) -> bool:
        """Measured, its AUC within ``MAX_AUC_DELTA`` of fp32 (the issue's bar for a default), and the
        ensemble's too where it was measured (older entries measured the model alone)."""
        ensemble = self.ensemble_auc_delta
        return within_auc_bar(self.auc_delta) and (ensemble is None or within_auc_bar(ensemble))


MAX_AUC_DELTA = 0.01


def within_auc_bar(delta: float | None) -> bool:
    """Whether an AUC change was measured and is within ``MAX_AUC_DELTA`` (float noise allowed)."""
    return delta is not None and abs(delta) <= MAX_AUC_DELTA + 1e-9


class Plan(BaseModel):
    """A TensorRT engine built from this version's ONNX file, kept beside it in the same folder.

    A plan runs only on the GPU architecture (compute capability) and the TensorRT version that
    built it, so a version may hold several, one per (compute capability, TensorRT version); the
    service uses the one that matches its machine and serves the ONNX file where none does
    (``python -m export --tensorrt`` adds one; see :func:`plan_file_name`).
    """

    file: str
    compute_capability: str = Field(description="e.g. '9.0' for an H100/H200")
    tensorrt: str = Field(description="The TensorRT version that built it, e.g. '10.13.0'")
    gpu: str = Field("", description="The GPU it was built on (for the reader; matching uses the two above)")
    fp16: bool = False
    max_batch: int = 64
    parity: Parity | None = None
    created_at: str = ""

    def matches(self, compute_capability: str, tensorrt: str) -> bool:
        return self.compute_capability == compute_capability and self.tensorrt == tensorrt


def plan_file_name(compute_capability: str, tensorrt: str) -> str:
    """``model.sm90.trt10.13.0.plan``: one file per GPU architecture and TensorRT version."""
    return f"model.sm{compute_capability.replace('.', '')}.trt{tensorrt}.plan"


class TensorInfo(BaseModel):
    name: str
    shape: list[int | str]
    dtype: str = "float32"


class SourceCheckpoint(BaseModel):
    path: str | None = None
    sha256: str | None = None
    layout: str = "random-init"
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Constructor options of the network (e.g. DCL's backbone): rebuilds the same architecture "
        "for the torch reference runtime and benchmarks even where the checkpoint file is not at hand.",
    )


class Manifest(BaseModel):
    name: str
    version: int
    format: Literal["onnx", "tensorrt"] = "onnx"
    file: str = "model.onnx"
    spec: dict[str, Any]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    dynamic_batch: bool = True
    max_batch: int | None = None
    opset: int | None = None
    weights_dtype: Literal["float32", "float16"] = Field(
        "float32", description="How the ONNX file stores its large weights; compute is float32 either way."
    )
    source: SourceCheckpoint
    untrained: bool = Field(False, description="Random-init weights: scores carry no information.")
    parity: Parity | None = None
    calibration: Calibration = Field(default_factory=Calibration)
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: str
    exporter: dict[str, str] = Field(default_factory=dict)
    command: str | None = None
    tensorrt: dict[str, Any] | None = None  # a version that is itself a plan (format "tensorrt"; older exports)
    variants: list[Variant] = Field(default_factory=list)
    plans: list[Plan] = Field(default_factory=list)

    def variant(self, precision: str) -> Variant | None:
        return next((v for v in self.variants if v.precision == precision), None)

    def plan_for(self, compute_capability: str, tensorrt: str) -> Plan | None:
        """The TensorRT plan beside the ONNX file built for this GPU architecture and TensorRT version."""
        return next((p for p in self.plans if p.matches(compute_capability, tensorrt)), None)

    def with_plan(self, plan: Plan) -> Manifest:
        """A copy listing ``plan``, replacing one built for the same architecture and TensorRT version."""
        kept = [p for p in self.plans if not p.matches(plan.compute_capability, plan.tensorrt)]
        return self.model_copy(update={"plans": [*kept, plan]})

    def model_spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.spec)

    def write(self, folder: Path) -> Path:
        path = folder / MANIFEST_NAME
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        return cls.model_validate_json((folder / MANIFEST_NAME).read_text())
