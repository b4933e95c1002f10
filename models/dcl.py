"""DCL, Dual Contrastive Learning (Sun et al., AAAI 2022): EfficientNet-B4 at 299 px.

The query encoder is what serves: timm ``tf_efficientnet_b4`` features (N, 1792, 10, 10) ->
global average -> dropout 0.2 -> Linear(1792, 2). ``feature_squeeze`` (a 1x1 conv to one
channel) gives the 100-d embedding the inter-instance contrastive loss uses; training builds the
EMA key encoder, queues and prototypes around this module (``training/methods/dcl.py``).

Reference checkpoints (Tencent/TFace, ``DCL(BinaryClassifier("tf_efficientnet_b4_ns"))``) wrap
the weights under ``state_dict`` and hold the MoCo pair ``encoder_q.*`` / ``encoder_k.*`` plus the
prototype and hard-sample queues. Each encoder is a ``BinaryClassifier`` whose attribute names we
share (``encoder`` = the timm network, ``feature_squeeze``, ``fc``), so the filter only keeps the
query encoder and drops the rest, including timm's 1000-class ``encoder.classifier`` that the
reference builds but never calls. Class order there and here: 0 = real, 1 = fake (the reference
scores P(fake) = 1 - softmax[:, 0]), so ``fc`` loads untouched.
"""

from __future__ import annotations

from dataclasses import replace

import timm
import torch
from torch import nn

from models.registry import StateDict, infer_choice, register_model
from models.spec import HALF_MEAN_STD, CropRule, ModelSpec

DCL_SPEC = ModelSpec(
    name="dcl",
    kind="frame",
    input_size=299,
    mean=HALF_MEAN_STD,
    std=HALF_MEAN_STD,
    # DSFD boxes with a margin the reference does not state (neither the paper nor Tencent/TFace's DCL code states it); 1.3 x the
    # box is the common FF++ preprocessing margin and keeps the whole face with some context.
    crop=CropRule(method="box", scale=1.3),
    output="logit of P(fake) = l_fake - l_real",
    description="DCL (AAAI 2022): EfficientNet-B4 query encoder at 299, mean = std = 0.5.",
)


PAPER_BACKBONE = "tf_efficientnet_b4"
#: timm encoders a bare state_dict is matched against (the option takes any timm name, but a bare
#: file cannot be matched against all of timm): the paper's, the shipped bundle's and the light
#: encoders whose ImageNet weights ship offline (models.backbones.PACKAGED_WEIGHTS)
KNOWN_BACKBONES: tuple[str, ...] = (
    PAPER_BACKBONE,
    "mobilenetv2_100",
    "tf_efficientnet_lite0",
    "tf_efficientnet_lite1",
    "tf_efficientnet_lite2",
)


def dcl_spec(backbone: str = PAPER_BACKBONE, **_: object) -> ModelSpec:
    """The paper's spec for its backbone; another backbone keeps the crop rule but takes the
    input size and normalisation its ImageNet weights were trained with (timm's pretrained config),
    because fine-tuning from ImageNet works best with the statistics the weights expect.
    """
    if backbone == PAPER_BACKBONE:
        return DCL_SPEC
    cfg = timm.get_pretrained_cfg(backbone)
    if cfg is None:
        return DCL_SPEC
    return replace(
        DCL_SPEC,
        input_size=int(cfg.input_size[-1]),
        mean=tuple(float(v) for v in cfg.mean),
        std=tuple(float(v) for v in cfg.std),
        description=f"DCL (AAAI 2022) losses with a timm {backbone} encoder at {cfg.input_size[-1]} px, its ImageNet mean/std.",
    )


class DCL(nn.Module):
    """The query encoder: timm EfficientNet features -> GAP -> dropout -> Linear(C, 2)."""

    def __init__(self, backbone: str = PAPER_BACKBONE, drop_rate: float = 0.2) -> None:
        super().__init__()
        self.spec = dcl_spec(backbone)
        self.encoder = timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="")
        features = self.encoder.num_features
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.feature_squeeze = nn.Conv2d(features, 1, 1)
        self.fc = nn.Linear(features, 2)

    def forward_train(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """2-class logits (0 = real, 1 = fake) and the feature map (N, C, h, w)."""
        feature_map = self.encoder.forward_features(images)
        logits = self.fc(self.dropout(self.global_pool(feature_map).flatten(1)))
        return logits, feature_map

    def embedding(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The L2-normalised squeezed map (N, h*w): 100-d at 299 px."""
        return nn.functional.normalize(self.feature_squeeze(feature_map).flatten(1), dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Fake logit (N,): ``l_fake - l_real``, whose sigmoid is the reference's 1 - softmax[:, 0]."""
        logits, _ = self.forward_train(images)
        return logits[:, 1] - logits[:, 0]


def filter_reference_checkpoint(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Keep ``encoder_q.*``; drop the key encoder, the queues and timm's unused classifier.

    A bare ``BinaryClassifier`` state dict (no ``encoder_q.`` prefix) is accepted as it is.
    """
    if any(k.startswith("encoder_q.") for k in state_dict):
        state_dict = {k[len("encoder_q.") :]: v for k, v in state_dict.items() if k.startswith("encoder_q.")}
    return {k: v for k, v in state_dict.items() if not k.startswith("encoder.classifier.")}


def infer_kwargs(state_dict: StateDict, given: dict[str, object]) -> dict[str, object]:
    """The timm encoder of a bare (reference or our) state_dict, among :data:`KNOWN_BACKBONES`.

    Our training checkpoints name their backbone in ``model_kwargs``, so any timm encoder exports;
    a bare file of another encoder needs ``backbone=`` given explicitly.
    """
    return infer_choice("dcl", state_dict, "backbone", KNOWN_BACKBONES, given)


@register_model(DCL_SPEC, checkpoint_filter=filter_reference_checkpoint, spec_for=dcl_spec, infer_kwargs=infer_kwargs)
def dcl(backbone: str = PAPER_BACKBONE, drop_rate: float = 0.2) -> DCL:
    return DCL(backbone=backbone, drop_rate=drop_rate)
