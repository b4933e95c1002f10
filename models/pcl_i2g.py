"""PCL-I2G (Zhao et al., ICCV 2021): patch-wise consistency learning on I2G blended fakes.

A ResNet-34 truncated after ``layer4`` with a 1x1 convolution ``convout`` gives 2-class logits per
patch (8x8 patches at 256 px); the PCL head compares every pair of ``layer3`` positions (16x16) and
predicts the 4D consistency volume, which training supervises with the blending mask. Inference
needs only the patch logits: P(fake) is the mean over patches of the fake softmax.

Reference checkpoints (jtchen0528/PCL-I2G, from patch-forensics) hold two state dicts, ``net_D``
(torchvision ResNet keys ``conv1``, ``layer1``... plus ``convout``) and ``net_PCL`` (``theta``,
``phi``); their class order is 0 = fake, 1 = real. We keep the reference's ``convout`` order and
convert in :meth:`PCLI2G.forward`.
"""

from __future__ import annotations

import math

import timm
import torch
from torch import nn

from models.registry import CheckpointError, StateDict, register_model
from models.spec import IMAGENET_MEAN, IMAGENET_STD, CropRule, ModelSpec

PCL_I2G_SPEC = ModelSpec(
    name="pcl_i2g",
    kind="frame",
    input_size=256,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    # The reference crops a CelebA-HQ-style quad whose half-width is max(2 x eye distance,
    # 1.8 x eye-to-mouth): about 1.6-1.8 x a detector's face box. 1.7 x the box's longer side
    # approximates it without 68-point landmarks.
    crop=CropRule(method="box", scale=1.7),
    output="logit of mean-over-patches P(fake)",
    description="PCL-I2G (ICCV 2021): ResNet-34 patch classifier (8x8 at 256) + 4D patch-consistency head.",
)

FAKE_CHANNEL = 0  # reference label order: 0 = fake, 1 = real
_PROB_EPS = 1e-6


class ConsistencyHead(nn.Module):
    """theta/phi 1x1 convolutions; sigmoid of scaled dot products between all position pairs."""

    def __init__(self, channels: int = 256) -> None:
        super().__init__()
        self.channels = channels
        self.theta = nn.Conv2d(channels, channels, 1)
        self.phi = nn.Conv2d(channels, channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = features.shape
        theta = self.theta(features).flatten(2).transpose(1, 2)  # (N, HW, C)
        phi = self.phi(features).flatten(2)  # (N, C, HW)
        volume = torch.sigmoid(torch.bmm(theta, phi) / math.sqrt(self.channels))
        return volume.view(batch, height, width, height, width)


class PCLI2G(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.spec = PCL_I2G_SPEC
        self.backbone = timm.create_model("resnet34", pretrained=False, num_classes=0, global_pool="")
        self.convout = nn.Conv2d(512, 2, 1)
        self.pcl = ConsistencyHead(256)

    def _features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.backbone
        x = net.maxpool(net.act1(net.bn1(net.conv1(images))))
        layer3 = net.layer3(net.layer2(net.layer1(x)))
        return layer3, net.layer4(layer3)

    def forward_train(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch logits (N, 2, 8, 8) in reference order (0 = fake) and the volume (N, 16, 16, 16, 16)."""
        layer3, layer4 = self._features(images)
        return self.convout(layer4), self.pcl(layer3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        layer3, layer4 = self._features(images)
        p_fake = torch.softmax(self.convout(layer4), dim=1)[:, FAKE_CHANNEL].mean(dim=(1, 2))
        p_fake = p_fake.clamp(_PROB_EPS, 1 - _PROB_EPS)
        return torch.log(p_fake) - torch.log1p(-p_fake)


def filter_reference_checkpoint(state_dict: StateDict, model: nn.Module) -> StateDict:
    """``{"net_D": ..., "net_PCL": ...}`` (or flat ``net_D.*``/``net_PCL.*`` keys) -> our keys.

    A bare ``net_D`` state dict (the reference saves the two nets in separate files) is accepted
    too; the consistency head then keeps its initial weights, which inference does not use.
    """
    flat: StateDict = {}
    for key, value in state_dict.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    if not any(k.startswith(("net_D.", "net_PCL.")) for k in flat):
        flat = {f"net_D.{k}": v for k, v in flat.items()}
    out: StateDict = {}
    for key, value in flat.items():
        if key.startswith("net_D.convout."):
            out[key.replace("net_D.", "", 1)] = value
        elif key.startswith("net_D."):
            out["backbone." + key[len("net_D."):]] = value
        elif key.startswith("net_PCL."):
            out["pcl." + key[len("net_PCL."):]] = value
        else:
            raise CheckpointError(f"unexpected key {key!r} in a PCL-I2G reference checkpoint")
    if not any(k.startswith("pcl.") for k in out):
        out.update({k: v for k, v in model.state_dict().items() if k.startswith("pcl.")})
    return out


@register_model(PCL_I2G_SPEC, checkpoint_filter=filter_reference_checkpoint)
def pcl_i2g() -> PCLI2G:
    return PCLI2G()
