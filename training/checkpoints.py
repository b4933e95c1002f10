"""What a training checkpoint holds, and how a run resumes from one exactly where it stopped.

A checkpoint (:class:`models.checkpoint.TrainingCheckpoint`) is one file that serves two readers:
``python -m export`` (model name, constructor options, spec, weights, calibration) and ``--resume``
(optimisers, schedulers, loss scalers, the method's own state, the position in the epoch and the
random generators), so a resumed run goes on as the uninterrupted run would have.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.checkpoint import TrainingCheckpoint
from training.distributed import unwrap
from training.errors import TrainingInputError
from training.methods.base import Method
from training.options import TrainingOptions

log = logging.getLogger("training")

Optimizers = dict[str, tuple[torch.optim.Optimizer, Any]]
Scalers = dict[str, torch.amp.GradScaler]


@dataclass
class Progress:
    """Where a run is: ``epoch`` counts finished epochs unless ``batches_done`` > 0 (stopped mid-epoch)."""

    epoch: int = 0
    step: int = 0
    batches_done: int = 0  # micro-batches of ``epoch`` already trained (a --max-steps stop mid-epoch)
    best: float = -math.inf  # best validation AUC so far


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_checkpoint(
    method: Method,
    model: nn.Module,
    optimizers: Optimizers,
    scalers: Scalers,
    progress: Progress,
    metrics: dict,
    options: TrainingOptions,
) -> TrainingCheckpoint:
    """Everything ``python -m export`` and ``--resume`` need, in one file."""
    return TrainingCheckpoint(
        model=method.name,
        model_kwargs=method.model_kwargs(),
        spec=method.spec,
        state_dict=unwrap(model).state_dict(),
        config=options.config(),
        epoch=progress.epoch,
        step=progress.step,
        batches_done=progress.batches_done,
        best_val_auc=progress.best,
        metrics=metrics,
        optimizers={n: o.state_dict() for n, (o, _) in optimizers.items()},
        schedulers={n: s.state_dict() for n, (_, s) in optimizers.items() if s is not None},
        scalers={n: s.state_dict() for n, s in scalers.items()},
        extra=method.extra_state(),
        rng=rng_state(),
        command=options.command,
    )


def resume(
    path: Path, method: Method, model: nn.Module, optimizers: Optimizers, scalers: Scalers, single_process: bool
) -> Progress:
    """Load ``path`` into the run's objects; returns where to go on from.

    The random generators are restored only in a single process: DDP ranks are seeded apart
    (seed + rank) and rank 0's file cannot restore the others.
    """
    state = TrainingCheckpoint.load(path)
    model.load_state_dict(state.state_dict)
    for name, (optimizer, scheduler) in optimizers.items():
        try:
            optimizer.load_state_dict(state.optimizers[name])
        except (KeyError, ValueError) as exc:
            raise TrainingInputError(
                f"{path}: optimiser {name!r} does not match this run's trainable parameters ({exc}); "
                "resume with the same method options (e.g. --freeze-backbone) as the original run"
            ) from exc
        if scheduler is not None and name in state.schedulers:
            scheduler.load_state_dict(state.schedulers[name])
    for name, scaler in scalers.items():
        saved = state.scaler_state(name)
        if saved:
            scaler.load_state_dict(saved)
    method.load_extra_state(state.extra)
    if single_process and state.rng is not None:
        restore_rng_state(state.rng)
    progress = Progress(epoch=state.epoch, step=state.step, batches_done=state.batches_done, best=state.best_val_auc)
    log.info(
        "resumed from %s at epoch %d (%d batches into it), step %d",
        path,
        progress.epoch,
        progress.batches_done,
        progress.step,
    )
    return progress


def truncate_history(history: Path, step: int) -> None:
    """Drop logged steps after ``step``: a resumed run logs them again, and must not log them twice."""
    if not history.is_file():
        return
    kept = [line for line in history.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    history.write_text("".join(line + "\n" for line in kept))
