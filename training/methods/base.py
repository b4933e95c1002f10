"""What a training method provides to the shared loop in ``training.loop``.

Each method is its own class with its own losses and moving parts (PCL's consistency volume,
DCL's key encoder and queues, the adversarial game's generators, ...). The loop only owns what is
common: epochs, AMP, gradient accumulation, DDP, logging, validation, checkpoints.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from models import create_model, get_spec
from models.spec import ModelSpec
from training.data import TrackRecord
from training.distributed import average_gradients
from training.options import MethodOptions, TrainingOptions


@dataclass
class StepContext:
    """Handed to ``training_step``: how to backpropagate under AMP with accumulation.

    Each optimiser has its own loss scaler: the adversarial game steps its generators several
    times per detector step, and one shared scale changing between them would unscale the
    detector's accumulated gradients by a scale they were not computed with.
    """

    scalers: Mapping[torch.optim.Optimizer, torch.amp.GradScaler]
    accumulation: int
    micro_step: int  # 0..accumulation-1 within the current optimiser step
    device: torch.device
    autocast_dtype: torch.dtype | None
    grad_clip: float | None = None
    world: int = 1  # processes training together (DDP)

    @property
    def is_update_step(self) -> bool:
        return self.micro_step == self.accumulation - 1

    def autocast(self) -> torch.autocast:
        enabled = self.autocast_dtype is not None
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=enabled)

    def backward_and_step(
        self,
        loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        params: Sequence[torch.Tensor],
        *,
        average: Sequence[torch.Tensor] = (),
        weight: float | None = None,
    ) -> None:
        """Scale, accumulate; step the optimiser (and clip) only on the last micro-step.

        ``average``: parameters outside the DDP-wrapped module whose gradients must be averaged over
        ranks before the step (see :mod:`training.distributed`; ``weight`` weights this rank's share).
        Under DDP every rank must make the same calls, so a rank with nothing to learn from still calls
        this with a zero loss and ``weight=0``.
        """
        scaler = self.scalers[optimizer]
        scaler.scale(loss / self.accumulation).backward()
        if self.is_update_step:
            if average:
                average_gradients(average, weight)
            if self.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)


class TrainForward(nn.Module):
    """Calls ``model.forward_train`` from ``forward``, so DDP sees the training graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> Any:
        return self.model.forward_train(images)


class Method(ABC):
    """One training recipe. Subclasses set ``name`` (= the registered model name)."""

    name: str
    #: defaults the CLI uses when the user gives none (each reference's own settings)
    default_lr: float = 1e-4
    default_batch_size: int = 32
    default_epochs: int = 20
    default_fakes: str = "data"  # where the fake class comes from when --fakes is not given
    #: the type that holds the options :meth:`add_arguments` declares (one field per option)
    options_type: ClassVar[type[MethodOptions]] = MethodOptions

    def __init__(self, options: TrainingOptions) -> None:
        if not isinstance(options.method_options, self.options_type):
            raise TypeError(
                f"{type(self).__name__} takes {self.options_type.__name__}, not {type(options.method_options).__name__}"
            )
        self.options = options
        #: the method's own options (subclasses narrow the annotation to their ``options_type``)
        self.method_options = options.method_options
        self.spec: ModelSpec = get_spec(self.name, **self.model_kwargs())
        #: set by the loop from :meth:`optimizers`; ``training_step`` reads it via :meth:`optimizer`
        self.optims: dict[str, tuple[torch.optim.Optimizer, Any]] = {}

    def optimizer(self, name: str) -> torch.optim.Optimizer:
        return self.optims[name][0]

    @classmethod  # noqa: B027 - an optional hook
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Method-specific options (``--help`` lists them under the method's name)."""

    def model_kwargs(self) -> dict[str, Any]:
        return {}

    def build_model(self) -> nn.Module:
        return create_model(self.name, **self.model_kwargs()).train()

    def training_module(self, model: nn.Module) -> nn.Module:
        """The module whose forward ``training_step`` calls (and DDP wraps).

        Frame methods need more than the exported logit (patch logits, feature maps, heads), so
        they return a :class:`TrainForward` view; DDP must wrap the module actually called, or
        gradients would not be synchronised.
        """
        return model

    @abstractmethod
    def datasets(self, train: Sequence[TrackRecord], val: Sequence[TrackRecord]) -> tuple[Dataset, Dataset]:
        """Training and validation datasets (validation: real data only, no blending)."""

    @abstractmethod
    def optimizers(self, model: nn.Module) -> dict[str, tuple[torch.optim.Optimizer, Any]]:
        """Named (optimiser, per-step scheduler or None) pairs; saved and resumed by name."""

    @abstractmethod
    def training_step(self, model: nn.Module, batch: dict[str, Any], ctx: StepContext) -> dict[str, float]:
        """One micro-batch: compute the losses, call ``ctx.backward_and_step``; return numbers to log."""

    def extra_state(self) -> dict[str, Any]:
        """Method state outside the model/optimisers (EMA encoders, queues, generators) for resume."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        pass

    def replicated_state(self) -> list[torch.Tensor]:
        """Trained tensors outside the model that every DDP rank must hold alike (generators, loss
        weights, queues); the loop fingerprints them with the model so a run can show its ranks agree."""
        return []

    def on_epoch_start(self, epoch: int) -> None:  # noqa: B027 - optional hook
        pass

    @torch.no_grad()
    def predict_logits(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """Fake logits for validation: the exported inference path, so validation scores what serves."""
        return model(batch["image"]).float()
