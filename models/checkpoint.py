"""The training checkpoint as a typed object: what ``python -m training.train`` writes and
``--resume``, ``training.evaluate`` and ``python -m export`` read.

The file stays what it always was, a ``torch.save`` of a plain dict (older runs and the tests'
files load unchanged), but nobody indexes that dict by hand any more: :meth:`TrainingCheckpoint.load`
checks it holds one of our checkpoints and gives typed fields, :meth:`TrainingCheckpoint.save`
writes it atomically, so a run killed while saving keeps its previous ``last.pt``. Reference
checkpoints (bare state dicts, other layouts) are not this type; :func:`models.registry.read_checkpoint`
reads those.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from models.errors import ModelInputError
from models.spec import ModelSpec

#: Key of the one scaler that checkpoints older than per-optimiser scalers saved for every optimiser.
SHARED_SCALER = "*"


class NotATrainingCheckpoint(ModelInputError):
    """The file is a checkpoint, but not one ``python -m training.train`` wrote."""


@dataclass
class TrainingCheckpoint:
    """One training run's state after an epoch: the network, how to rebuild it, and how to go on.

    ``model``, ``model_kwargs``, ``spec`` and ``state_dict`` rebuild the network (export, evaluate);
    ``epoch``, ``step``, ``batches_done``, the optimiser, scheduler and scaler states, the method's
    ``extra`` state and the random generators (``rng``) resume the run; ``config`` and ``command``
    say how it was started; ``metrics`` holds the last validation and each ``training.evaluate
    --write``, which also sets ``calibration``.
    """

    model: str
    state_dict: dict[str, Any]
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    spec: ModelSpec | None = None
    config: dict[str, Any] = field(default_factory=dict)
    command: str | None = None
    epoch: int = 0
    step: int = 0
    batches_done: int = 0
    best_val_auc: float = -math.inf
    metrics: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, float] | None = None
    optimizers: dict[str, Any] = field(default_factory=dict)
    schedulers: dict[str, Any] = field(default_factory=dict)
    scalers: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] | None = None

    # ---- the file format -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The dict the file holds (the spec as a plain dict, no ``None`` calibration or rng)."""
        raw = {f.name: getattr(self, f.name) for f in fields(self)}
        raw["spec"] = self.spec.to_dict() if self.spec is not None else None
        return {k: v for k, v in raw.items() if not (k in ("calibration", "rng") and v is None)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "checkpoint") -> TrainingCheckpoint:
        """Read one of our checkpoints' dicts; :class:`NotATrainingCheckpoint` for anything else."""
        if (
            not isinstance(raw, dict)
            or not isinstance(raw.get("model"), str)
            or not isinstance(raw.get("state_dict"), dict)
        ):
            raise NotATrainingCheckpoint(
                f"{source} is not a checkpoint of `python -m training.train` (it has no model name and state_dict)"
            )
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known and v is not None}
        if raw.get("spec"):
            values["spec"] = ModelSpec.from_dict(raw["spec"])
        if "scaler" in raw and "scalers" not in raw:  # older runs kept one scaler for all optimisers
            values["scalers"] = {SHARED_SCALER: raw["scaler"]}
        return cls(**values)

    @staticmethod
    def is_training_checkpoint(raw: Any) -> bool:
        return isinstance(raw, dict) and isinstance(raw.get("model"), str) and isinstance(raw.get("state_dict"), dict)

    # ---- files ----------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> TrainingCheckpoint:
        import torch  # kept out of import time: models.spec users need no torch

        raw = torch.load(path, map_location="cpu", weights_only=False)
        return cls.from_dict(raw, str(path))

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` through a temporary file renamed over it (never a half-written checkpoint)."""
        import torch

        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        torch.save(self.to_dict(), partial)
        os.replace(partial, path)
        return path

    def scaler_state(self, name: str) -> Any:
        """The saved state of optimiser ``name``'s loss scaler (an older run's shared one if that is all)."""
        return self.scalers.get(name, self.scalers.get(SHARED_SCALER))

    def summary(self) -> dict[str, Any]:
        """What a manifest records of how this was trained (no tensors)."""
        return {"command": self.command, "epoch": self.epoch, "step": self.step, "best_val_auc": self.best_val_auc}
