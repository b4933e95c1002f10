"""PCL-I2G: patch classification + the 4D patch-consistency volume supervised by the blend mask.

L = CE(patch logits, the image's label on all 8x8 patches) + 10 * BCE(V_hat, V), with
V[i,j,k,l] = 1 - |M_ij - M_kl| from the manipulation mask at 16x16 (unaffected by whether the mask
marks forged or pristine pixels). Adam lr 5e-5, constant. The reference trains with batches of 512
(256 real + 256 I2G fakes); our default is 64 to fit one GPU, use --accumulate 8 to match.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from models.pcl_i2g import FAKE_CHANNEL
from training.methods.base import StepContext, TrainForward
from training.methods.frames import PCL_I2G_AUGMENT, FrameMethod

VOLUME_WEIGHT = 10.0
log = logging.getLogger("training")


def consistency_target(masks: torch.Tensor, size: int = 16) -> torch.Tensor:
    """V[n,i,j,k,l] = 1 - |M_ij - M_kl| from (N, H, W) masks downsampled to size x size."""
    small = F.interpolate(masks[:, None].float(), size=(size, size), mode="bilinear", align_corners=False).flatten(1)
    return (1 - (small[:, :, None] - small[:, None, :]).abs()).view(-1, size, size, size, size)


class PclTrainForward(TrainForward):
    """Patch logits and the consistency volume before its sigmoid (for BCE with logits)."""

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_train(images, volume_logits=True)


class PclI2GMethod(FrameMethod):
    name = "pcl_i2g"
    default_lr = 5e-5
    default_batch_size = 64
    default_epochs = 20
    # I2G from real faces is how PCL learns: dataset fakes carry no mask (all ones), which makes every
    # patch pair "consistent" and leaves the volume loss without signal
    default_fakes = "blended"
    augmentation = PCL_I2G_AUGMENT

    def training_module(self, model: nn.Module) -> nn.Module:
        if self.args.fakes == "data":
            log.warning("pcl_i2g with --fakes data: dataset fakes have no manipulation mask, so the consistency "
                        "volume learns nothing; --fakes blended (the default) or both gives it its signal")
        return PclTrainForward(model)

    def optimizers(self, model: nn.Module) -> dict[str, tuple[torch.optim.Optimizer, Any]]:
        return {"model": (torch.optim.Adam(model.parameters(), lr=self.args.lr), None)}

    def training_step(self, model: nn.Module, batch: dict[str, Any], ctx: StepContext) -> dict[str, float]:
        with ctx.autocast():
            patch_logits, volume_logits = model(batch["image"])
        patch_logits, volume_logits = patch_logits.float(), volume_logits.float()
        # reference class order: channel FAKE_CHANNEL (0) = fake, 1 = real
        target = torch.where(batch["label"] == 1, FAKE_CHANNEL, 1 - FAKE_CHANNEL)
        target = target[:, None, None].expand(-1, *patch_logits.shape[2:])
        loss_cls = F.cross_entropy(patch_logits, target)
        loss_pcl = F.binary_cross_entropy_with_logits(volume_logits, consistency_target(batch["mask"]))
        loss = loss_cls + VOLUME_WEIGHT * loss_pcl
        ctx.backward_and_step(loss, self.optimizer("model"), list(model.parameters()))
        return {"loss": loss.item(), "loss_cls": loss_cls.item(), "loss_pcl": loss_pcl.item()}
