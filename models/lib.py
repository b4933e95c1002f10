"""LIB, "Exposing the Deception" (Ba et al., AAAI 2024): local information blocks + bottleneck.

Four independent backbones each see the whole 224 px face; their pooled features ``f_1..f_4``
are concatenated into ``f_all``. Heads: ``baseline_linear`` on ``f_all``; ``bottleneck`` (an MLP)
compresses ``f_all`` to ``z`` and ``linear`` predicts from ``z`` — p(y|z), the prediction used at
inference; ``local_linear{i}`` predicts from all features but ``f_i``. The information losses
that tie them together live in ``training/methods/lib.py``.

Module names equal the reference's (QingyuLiu/Exposing-the-Deception): ``region_model1..4`` with
torchvision ResNet keys, ``local_linear1..4``, ``bottleneck.model.*``, ``baseline_linear``,
``linear.1`` — so its checkpoints load as they are. Label 1 = fake there and here.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from models.registry import register_model
from models.spec import IMAGENET_MEAN, IMAGENET_STD, CropRule, ModelSpec

LIB_SPEC = ModelSpec(
    name="lib",
    kind="frame",
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    # The reference resizes dataset face crops (FF++ style, about 1.3 x the face box) to 224.
    crop=CropRule(method="box", scale=1.3),
    output="logit of p(y=fake | z)",
    description="LIB (AAAI 2024): 4 x ResNet-34 local information blocks + information bottleneck, at 224.",
)

#: backbone option -> timm model name; "resnet34" is the reference's default
BACKBONES = {"resnet34": "resnet34", "mobilenet": "mobilenetv2_100"}


class ChannelCompress(nn.Module):
    """f_all -> 1000 -> 500 -> z, with BN, ReLU and dropout 0.5 (reference ``ChannelCompress``)."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(in_features, 1000), nn.BatchNorm1d(1000), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(1000, 500), nn.BatchNorm1d(500), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(500, out_features),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model(features)


class LIB(nn.Module):
    def __init__(self, backbone: str = "resnet34", num_regions: int = 4, dropout: float = 0.5) -> None:
        super().__init__()
        self.spec = LIB_SPEC
        self.num_regions = num_regions
        for i in range(1, num_regions + 1):
            self.add_module(f"region_model{i}", timm.create_model(BACKBONES[backbone], pretrained=False, num_classes=0))
        width = self.region_model1.num_features
        for i in range(1, num_regions + 1):
            self.add_module(f"local_linear{i}", nn.Linear(width * (num_regions - 1), 2))
        self.bottleneck = ChannelCompress(width * num_regions, width)
        self.baseline_linear = nn.Linear(width * num_regions, 2)
        self.linear = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, 2))

    def forward_train(self, images: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Everything the LIB losses need (2-class logits, 1 = fake)."""
        features = [getattr(self, f"region_model{i}")(images) for i in range(1, self.num_regions + 1)]
        f_all = torch.cat(features, dim=1)
        z = self.bottleneck(f_all)
        local = []
        for i in range(self.num_regions):
            others = torch.cat(features[:i] + features[i + 1:], dim=1)
            local.append(getattr(self, f"local_linear{i + 1}")(others))
        return {"p_y_given_z": self.linear(z), "p_y_given_f_all": self.baseline_linear(f_all),
                "p_y_given_f_except_i": local, "z": z}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = torch.cat([getattr(self, f"region_model{i}")(images) for i in range(1, self.num_regions + 1)], 1)
        logits = self.linear(self.bottleneck(features))
        return logits[:, 1] - logits[:, 0]


@register_model(LIB_SPEC)
def lib(backbone: str = "resnet34", num_regions: int = 4, dropout: float = 0.5) -> LIB:
    return LIB(backbone=backbone, num_regions=num_regions, dropout=dropout)
