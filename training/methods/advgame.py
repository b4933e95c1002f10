"""The adversarial game: two blur generators try to fool the detector, the detector learns from both.

Per batch (METHODS.md): ``g_per_d`` times, with the detector frozen, each generator (one for real
inputs, one for fake) predicts a per-pixel blur strength and takes one RAdam step on
L_G = -CE(D(blur(x)), y); then the detector takes one step on the mean CE over
[x_real, x_fake, blur(x_real), blur(x_fake)]. RAdam: detector lr 5e-4, generators 2e-3,
weight decay 5e-4, x0.1 every 15 epochs; 120 epochs, batch 32. Labels inside the reference
detector: 0 = fake, 1 = real (the exported logit converts).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from models.advgame import FAKE_CLASS, REAL_CLASS, BlurGenerator, per_pixel_blur
from training.methods.base import StepContext
from training.methods.frames import FrameMethod


class ClassLogits(nn.Module):
    """The detector's reference-order logits through ``forward`` (what DDP wraps)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.class_logits(images)


class AdvGameMethod(FrameMethod):
    name = "advgame"
    default_lr = 5e-4
    default_batch_size = 32
    default_epochs = 120

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("advgame")
        group.add_argument("--variant", choices=["b7", "b5", "b3", "b0"], default="b7", help="EfficientNet size")
        group.add_argument("--g-per-d", type=int, default=3, help="generator steps per detector step")
        group.add_argument("--generator-lr", type=float, default=2e-3)

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.generators = nn.ModuleDict({"real": BlurGenerator(), "fake": BlurGenerator()})

    def model_kwargs(self) -> dict[str, Any]:
        return {"variant": self.args.variant}

    def training_module(self, model: nn.Module) -> nn.Module:
        return ClassLogits(model)

    def optimizers(self, model: nn.Module) -> dict[str, tuple[torch.optim.Optimizer, Any]]:
        self.generators.to(next(model.parameters()).device)
        return {
            "detector": (torch.optim.RAdam(model.parameters(), lr=self.args.lr, weight_decay=5e-4), None),
            "gen_real": (torch.optim.RAdam(self.generators["real"].parameters(), lr=self.args.generator_lr, weight_decay=5e-4), None),
            "gen_fake": (torch.optim.RAdam(self.generators["fake"].parameters(), lr=self.args.generator_lr, weight_decay=5e-4), None),
        }

    def on_epoch_start(self, epoch: int) -> None:
        decay = 0.1 ** (epoch // 15)
        for name, (optimizer, _) in self.optims.items():
            base = self.args.lr if name == "detector" else self.args.generator_lr
            for group in optimizer.param_groups:
                group["lr"] = base * decay

    def training_step(self, model: nn.Module, batch: dict[str, Any], ctx: StepContext) -> dict[str, float]:
        images = batch["image"]
        # reference label order for the detector's classes
        targets = torch.where(batch["label"] == 1, FAKE_CLASS, REAL_CLASS)
        groups = {"real": batch["label"] == 0, "fake": batch["label"] == 1}
        detector_params = list(model.parameters())
        # Generator phase: the frozen detector runs outside DDP (no detector gradients to reduce).
        frozen = model.module if isinstance(model, DistributedDataParallel) else model
        for param in detector_params:
            param.requires_grad_(False)
        generator_losses = []
        for _ in range(self.args.g_per_d):
            for kind, selected in groups.items():
                count = int(selected.sum())
                params = list(self.generators[kind].parameters())
                if count == 0:
                    if ctx.world == 1:
                        continue
                    # Under DDP the generators (outside DDP) are averaged over ranks, a collective every
                    # rank must join: a rank without this class in its batch joins with zero weight.
                    ctx.backward_and_step(sum(p.sum() for p in params) * 0.0, self.optimizer(f"gen_{kind}"), params,
                                          average=params, weight=0)
                    continue
                x = images[selected]
                with ctx.autocast():
                    blurred = per_pixel_blur(x, self.generators[kind](x).float())
                    loss_g = -F.cross_entropy(frozen(blurred).float(), targets[selected])
                ctx.backward_and_step(loss_g, self.optimizer(f"gen_{kind}"), params, average=params, weight=count)
                generator_losses.append(loss_g.item())
        for param in detector_params:
            param.requires_grad_(True)
        with torch.no_grad():
            blurred = torch.cat([per_pixel_blur(images[sel], self.generators[k](images[sel]).float())
                                 for k, sel in groups.items() if sel.any()])
            blurred_targets = torch.cat([targets[sel] for sel in groups.values() if sel.any()])
        with ctx.autocast():
            logits = model(torch.cat([images, blurred])).float()
        loss_d = F.cross_entropy(logits, torch.cat([targets, blurred_targets]))
        ctx.backward_and_step(loss_d, self.optimizer("detector"), detector_params)
        mean_g = sum(generator_losses) / max(1, len(generator_losses))
        return {"loss": loss_d.item(), "loss_generator": mean_g}

    def replicated_state(self) -> list[torch.Tensor]:
        return list(self.generators.parameters())

    def extra_state(self) -> dict[str, Any]:
        return {"generators": self.generators.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "generators" in state:
            self.generators.load_state_dict(state["generators"])
