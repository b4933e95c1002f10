"""PCL-I2G (Zhao et al., ICCV 2021): patch-wise consistency learning on I2G blended fakes.

A ResNet-34 truncated after ``layer4`` with a 1x1 convolution ``convout`` gives 2-class logits per
patch (8x8 patches at 256 px); the PCL head compares every pair of ``layer3`` positions (16x16) and
predicts the 4D consistency volume, which training supervises with the blending mask. Inference
needs only the patch logits: P(fake) is the mean over patches of the fake softmax.

Reference checkpoints (jtchen0528/PCL-I2G, forked from patch-forensics) are two files per epoch,
``{epoch}_net_D.pth`` and ``{epoch}_net_PCL.pth``, each ``{"state_dict": ..., "optimizer": ...}``.
``net_D`` holds the ``CustomResNet`` keys (``conv1``, ``bn1``, ``layer1``..``layer4`` — torchvision
names, which timm's ResNet shares — plus ``convout``); ``net_PCL`` holds ``theta`` and ``phi``.
The class order there is 0 = fake, 1 = real; we keep the reference's ``convout`` order, so its
weights load untouched, and convert once in :meth:`PCLI2G.forward`.
"""

from __future__ import annotations

import math
from typing import Any

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
    # The reference crops a CelebA-HQ-style quad from 68 landmarks: half-width = max(2 x eye
    # distance, 1.8 x eye-to-mouth), i.e. a side of about 4 x the eye distance. A detector box
    # spans about 2.3-2.5 x the eye distance, so the quad is roughly 1.6-1.8 x the box; 1.7 x
    # the box's longer side approximates it without 68-point landmarks (unverified against the
    # reference's crops; the centre shift of 0.1 x eye-to-mouth is not reproduced).
    crop=CropRule(method="box", scale=1.7),
    output="logit of mean-over-patches P(fake), P clamped to [1e-6, 1 - 1e-6]",
    description="PCL-I2G (ICCV 2021): ResNet-34 patch classifier (8x8 at 256) + 4D patch-consistency head.",
)

FAKE_CHANNEL = 0  # reference label order: 0 = fake, 1 = real
_PROB_EPS = 1e-6
#: ResNets the reference's ``resnet{depth}_layer4_extra3`` option accepts with these head widths
BACKBONES = ("resnet34", "resnet18")


class ConsistencyHead(nn.Module):
    """theta/phi 1x1 convolutions; sigmoid of scaled dot products between all position pairs.

    Orientation follows the reference (``PCL.NLBlockND``, which transposes the product before the
    sigmoid): ``volume[n, i, j, k, l] = sigmoid(theta(x)[n, :, k, l] . phi(x)[n, :, i, j] / sqrt(C))``.
    The ground-truth volume is symmetric, but the prediction is not, so loading a reference
    ``net_PCL`` needs the same orientation.
    """

    def __init__(self, channels: int = 256) -> None:
        super().__init__()
        self.channels = channels
        self.theta = nn.Conv2d(channels, channels, 1)
        self.phi = nn.Conv2d(channels, channels, 1)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The volume before its sigmoid: training takes its BCE from these, so pairs the sigmoid
        saturates (at 1.0 in bf16 above ~0.998) still get a gradient."""
        batch, _, height, width = features.shape
        theta = self.theta(features).flatten(2)  # (N, C, HW)
        phi = self.phi(features).flatten(2).transpose(1, 2)  # (N, HW, C)
        scores = torch.bmm(phi, theta) / math.sqrt(self.channels)  # [p, q] = phi_p . theta_q
        return scores.view(batch, height, width, height, width)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(features))


class PCLI2G(nn.Module):
    """ResNet up to ``layer4`` + ``convout`` patch classifier + PCL head on ``layer3``."""

    def __init__(self, backbone: str = "resnet34") -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        self.spec = PCL_I2G_SPEC
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="")
        self.convout = nn.Conv2d(self.backbone.num_features, 2, 1)
        self.pcl = ConsistencyHead(self.backbone.layer3[-1].conv2.out_channels)

    def _features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.backbone
        x = net.maxpool(net.act1(net.bn1(net.conv1(images))))
        layer3 = net.layer3(net.layer2(net.layer1(x)))
        return layer3, net.layer4(layer3)

    def forward_train(self, images: torch.Tensor, volume_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch logits (N, 2, 8, 8) in reference order (0 = fake) and the volume (N, 16, 16, 16, 16),
        as probabilities or, with ``volume_logits``, before the sigmoid."""
        layer3, layer4 = self._features(images)
        volume = self.pcl.logits(layer3) if volume_logits else self.pcl(layer3)
        return self.convout(layer4), volume

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Fake logit (N,) of the reference's score, the patch mean of softmax P(fake).

        The mean of patch probabilities is not the sigmoid of any one logit, so we invert it:
        ``log(p_fake) - log(p_real)`` with both patch means taken from the softmax (they sum to
        one, so this is ``log(p) - log(1 - p)``; taking ``p_real`` directly keeps float32
        precision when ``p`` is close to 1). Each mean is clamped to at least 1e-6 — ``p`` lies in
        [1e-6, 1 - 1e-6] — so a saturated patch map gives a finite logit (|logit| <= 13.82)
        instead of inf; sigmoid of the output is the reference's score inside that range.
        """
        _, layer4 = self._features(images)
        patch_means = torch.softmax(self.convout(layer4), dim=1).mean(dim=(2, 3)).clamp_min(_PROB_EPS)
        return torch.log(patch_means[:, FAKE_CHANNEL]) - torch.log(patch_means[:, 1 - FAKE_CHANNEL])


def _unwrap(value: Any) -> StateDict:
    """A nested net's weights: a state dict, or a reference file's ``{"state_dict": ...}``."""
    if isinstance(value, dict) and isinstance(value.get("state_dict"), dict):
        value = value["state_dict"]
    return {k.removeprefix("module."): v for k, v in value.items()}


def filter_reference_checkpoint(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Reference PCL-I2G weights -> our keys.

    Accepted forms (``read_checkpoint`` has already unwrapped a top-level ``state_dict``):

    * ``{"net_D": ..., "net_PCL": ...}`` — both reference files loaded into one dict (each value a
      state dict or the reference's whole ``{"state_dict": ...}`` file), or the same flattened as
      ``net_D.*`` / ``net_PCL.*`` keys;
    * a bare ``net_D`` state dict (``conv1.*`` ... ``convout.*``): the reference saves the two nets
      in separate files and inference needs only ``net_D``. The consistency head then keeps the
      model's own initial weights; every ``net_D`` key is still required.
    * our own layout (``backbone.*``, ``convout.*``, ``pcl.*``), passed through.
    """
    if any(k.startswith(("backbone.", "pcl.")) for k in state_dict):
        return state_dict
    flat: StateDict = {}
    for key, value in state_dict.items():
        if isinstance(value, dict):
            if key not in ("net_D", "net_PCL"):
                raise CheckpointError(f"unexpected sub-dict {key!r} in a PCL-I2G checkpoint "
                                      "(expected net_D / net_PCL)")
            flat.update({f"{key}.{k}": v for k, v in _unwrap(value).items()})
        else:
            flat[key] = value
    if not any(k.startswith(("net_D.", "net_PCL.")) for k in flat):
        flat = {f"net_D.{k}": v for k, v in flat.items()}
    out: StateDict = {}
    for key, value in flat.items():
        net, _, rest = key.partition(".")
        rest = rest.removeprefix("module.")
        if net == "net_D":
            out[rest if rest.startswith("convout.") else f"backbone.{rest}"] = value
        elif net == "net_PCL":
            out[f"pcl.{rest}"] = value
        else:
            raise CheckpointError(f"unexpected key {key!r} beside net_D / net_PCL in a PCL-I2G checkpoint")
    if not any(k.startswith("pcl.") for k in out):
        out.update({k: v for k, v in model.state_dict().items() if k.startswith("pcl.")})
    return out


@register_model(PCL_I2G_SPEC, checkpoint_filter=filter_reference_checkpoint)
def pcl_i2g(backbone: str = "resnet34") -> PCLI2G:
    return PCLI2G(backbone=backbone)
