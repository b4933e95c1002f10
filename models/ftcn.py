"""FTCN + Temporal Transformer (Zheng et al., ICCV 2021): a clip classifier for aligned face videos.

The backbone is SlowFast's "i3d" ResNet-50 cut after stage 4, with every 3D convolution reduced to
spatial kernel 1 while keeping its temporal kernel ("fully temporal convolution"): no layer can read
spatial texture, so the network must judge temporal coherence. The reference gets there by building
the standard network and rewriting its convolutions afterwards; here the module tree is built with
those shapes directly. Where the original convolution had spatial stride 2 the reference keeps
stride 1 and puts ``MaxPool3d((1, 2, 2))`` right after that convolution's batch norm, turning the
norm into ``Sequential(bn, pool)``; that is why some checkpoint keys end in ``.0.weight``. We keep
the same nesting so ``state_dict()`` keys are exactly those of the official ``ftcn_tt.pth``:

- ``resnet.s1.pathway0_stem.{conv, bn.0}``: the stem (conv 5x1x1, BN, pool);
- ``resnet.s{2,3,4}.pathway0_res{i}.{branch1, branch1_bn, branch2.{a,b,c}, branch2.{a,b,c}_bn}``;
  ``branch1_bn`` and ``branch2.b_bn`` are ``Sequential`` in the first block of s3 and s4;
- ``resnet.head.time_T.*``: the one-layer transformer over the 16 temporal tokens.

The reference ends with a sigmoid; ``forward`` stops one step earlier and returns the logit, because
the service applies the sigmoid once for every model.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from models.errors import ModelInputError
from models.ftcn_mobilenet import BACKBONE as MOBILENET
from models.ftcn_mobilenet import FEATURE_CHANNELS as MOBILENET_FEATURES
from models.ftcn_mobilenet import TemporalMobileNetV2
from models.registry import StateDict, register_model
from models.spec import FACE_TEMPLATE_256, IMAGENET_MEAN, IMAGENET_STD, CropRule, ModelSpec

# The reference's five-point alignment template, at 256 px; scaled to 224 by the crop.
FTCN_TEMPLATE_256 = FACE_TEMPLATE_256

FTCN_SPEC = ModelSpec(
    name="ftcn",
    kind="clip",
    num_frames=32,
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    crop=CropRule(method="align", template=FTCN_TEMPLATE_256, template_size=256),
    output="logit of P(fake) (the reference applies a sigmoid to this logit)",
    description=(
        "FTCN + Temporal Transformer (ICCV 2021): temporal-only 3D ResNet-50 and a one-layer "
        "transformer over 32-frame face clips aligned jointly per clip, 224 px, ImageNet mean/std."
    ),
)

# SlowFast's ResBlock/stem defaults (eps 1e-5, PyTorch momentum 0.1); the config never overrides them.
BN_EPS = 1e-5
BN_MOMENTUM = 0.1

# (stage name, input channels, output channels, bottleneck width, temporal kernel of each block's
# conv "a", spatial down-sampling in the first block). The kernels are SlowFast's i3d basis [3],
# [3, 1], [3, 1] repeated over NUM_BLOCK_TEMP_KERNEL = 3, 4, 6 blocks.
STAGES: tuple[tuple[str, int, int, int, tuple[int, ...], bool], ...] = (
    ("s2", 64, 256, 64, (3, 3, 3), False),
    ("s3", 256, 512, 128, (3, 1, 3, 1), True),
    ("s4", 512, 1024, 256, (3, 1, 3, 1, 3, 1), True),
)
FEATURE_CHANNELS = 1024  # s4 output; s5 is cut (the reference's stop_point = 5)
TEMPORAL_TOKENS = 16  # 32 frames halved by the temporal pool after s2
SIDE_DIVISOR = 16  # stem pool, stem max-pool, s3 and s4 each halve the side: 224 -> 14
#: sides the light variants may take: multiples of 16 (the four halvings) from 64 px up.
MIN_INPUT_SIZE = 64
#: the temporal networks: the paper's ResNet-50 (``width`` scales it) or MobileNetV2 (models.ftcn_mobilenet)
RESNET = "resnet50"
BACKBONES = (RESNET, MOBILENET)


def ftcn_spec(width: float = 1.0, input_size: int = 224, backbone: str = RESNET, **_: object) -> ModelSpec:
    """The spec of a configuration: only the input side follows an option (``input_size``).

    ``width`` and ``backbone`` change the network and leave the input alone; the crop rule (one
    similarity per clip, the reference's five-point template) and the ImageNet statistics stay the paper's.
    """
    if input_size == FTCN_SPEC.input_size and backbone == RESNET:
        return FTCN_SPEC
    # the ResNet variant's wording is what the bundle's manifest records: keep it as it is
    network = (
        f"at {width:g}x channel width"
        if backbone == RESNET
        else "with MobileNetV2's ImageNet weights inflated into spatial kernels of 1,"
    )
    return replace(
        FTCN_SPEC,
        input_size=input_size,
        description=(
            f"FTCN + Temporal Transformer (ICCV 2021), light variant: the same temporal-only design {network} "
            f"on {input_size} px clips of 32 frames."
        ),
    )


def _scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded to a multiple of 8 (at least 8), as width multipliers usually are."""
    return max(8, int(round(channels * width / 8)) * 8)


def batch_norm(channels: int, downsample: bool = False) -> nn.Module:
    """BatchNorm3d; with ``downsample`` followed by the max-pool that replaced a stride-2 conv.

    The ``Sequential`` wrapper is what the reference's surgery produced, so it fixes key names
    (``….0.weight``) rather than behaviour.
    """
    norm = nn.BatchNorm3d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
    if not downsample:
        return norm
    return nn.Sequential(norm, nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2)))


def temporal_conv(dim_in: int, dim_out: int, temporal_kernel: int = 1) -> nn.Conv3d:
    """Conv3d with kernel (t, 1, 1), 'same' temporal padding, no bias (BN follows every conv)."""
    return nn.Conv3d(
        dim_in, dim_out, kernel_size=(temporal_kernel, 1, 1), padding=(temporal_kernel // 2, 0, 0), bias=False
    )


class Stem(nn.Module):
    """conv 5x1x1 (3 -> 64) -> BN + pool (1,2,2) -> ReLU -> max-pool 1x3x3 stride (1,2,2): 224 -> 56."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        self.conv = temporal_conv(3, channels, temporal_kernel=5)
        self.bn = batch_norm(channels, downsample=True)
        self.relu = nn.ReLU(inplace=True)
        self.pool_layer = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_layer(self.relu(self.bn(self.conv(x))))


class BottleneckTransform(nn.Module):
    """Branch 2 of a block: a (t x1x1) -> b (1x1x1, carries the down-sampling) -> c (1x1x1 expand).

    SlowFast puts the stride on the 3x3 conv "b" (STRIDE_1X1 = False), so after the rewrite the
    pool sits behind ``b_bn``.
    """

    def __init__(self, dim_in: int, dim_out: int, dim_inner: int, temporal_kernel: int, downsample: bool) -> None:
        super().__init__()
        self.a = temporal_conv(dim_in, dim_inner, temporal_kernel)
        self.a_bn = batch_norm(dim_inner)
        self.a_relu = nn.ReLU(inplace=True)
        self.b = temporal_conv(dim_inner, dim_inner)
        self.b_bn = batch_norm(dim_inner, downsample)
        self.b_relu = nn.ReLU(inplace=True)
        self.c = temporal_conv(dim_inner, dim_out)
        self.c_bn = batch_norm(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a_relu(self.a_bn(self.a(x)))
        x = self.b_relu(self.b_bn(self.b(x)))
        return self.c_bn(self.c(x))


class ResBlock(nn.Module):
    """Bottleneck residual block; a projection shortcut (``branch1``) where shape or size changes."""

    def __init__(self, dim_in: int, dim_out: int, dim_inner: int, temporal_kernel: int, downsample: bool) -> None:
        super().__init__()
        self.has_projection = dim_in != dim_out or downsample
        if self.has_projection:
            self.branch1 = temporal_conv(dim_in, dim_out)
            self.branch1_bn = batch_norm(dim_out, downsample)
        self.branch2 = BottleneckTransform(dim_in, dim_out, dim_inner, temporal_kernel, downsample)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.branch1_bn(self.branch1(x)) if self.has_projection else x
        return self.relu(shortcut + self.branch2(x))


class ResStage(nn.Module):
    """Blocks registered as ``pathway0_res{i}`` (SlowFast's single-pathway naming)."""

    def __init__(
        self, dim_in: int, dim_out: int, dim_inner: int, temporal_kernels: tuple[int, ...], downsample: bool
    ) -> None:
        super().__init__()
        self.block_names = [f"pathway0_res{i}" for i in range(len(temporal_kernels))]
        for i, (name, kernel) in enumerate(zip(self.block_names, temporal_kernels, strict=True)):
            block_in = dim_in if i == 0 else dim_out
            self.add_module(name, ResBlock(block_in, dim_out, dim_inner, kernel, downsample and i == 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.block_names:
            x = getattr(self, name)(x)
        return x


class StemStage(nn.Module):
    """Holds the stem as ``pathway0_stem`` so its keys read ``s1.pathway0_stem.*``."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        self.pathway0_stem = Stem(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pathway0_stem(x)


class Residual(nn.Module):
    """``x + fn(x)``; a module of its own only to reproduce the reference's ``layers.0.0.fn`` keys."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


class PreNorm(nn.Module):
    """LayerNorm before ``fn`` (pre-norm transformer); keys ``norm.*`` and ``fn.*``."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class Attention(nn.Module):
    """Multi-head self-attention with one bias-free qkv projection laid out as [q | k | v] x (heads, dim)."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        # (N, T, 3*H*D) -> 3 x (N, H, T, D); only the batch size is dynamic, so this exports cleanly.
        qkv = self.to_qkv(x).reshape(batch, tokens, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        query, key, value = qkv[0], qkv[1], qkv[2]
        weights = torch.softmax(torch.matmul(query, key.transpose(-1, -2)) * self.scale, dim=-1)
        mixed = torch.matmul(weights, value).transpose(1, 2).reshape(batch, tokens, self.heads * self.dim_head)
        return self.to_out(mixed)


class FeedForward(nn.Module):
    """Linear -> GELU -> Dropout -> Linear -> Dropout (``net.0`` and ``net.3`` hold the weights)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Transformer(nn.Module):
    """``depth`` pre-norm layers, each ``[Residual(PreNorm(attention)), Residual(PreNorm(mlp))]``."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    Residual(PreNorm(dim, Attention(dim, heads, dim_head, dropout))),
                    Residual(PreNorm(dim, FeedForward(dim, mlp_dim, dropout))),
                ]
            )
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attention, feed_forward in self.layers:
            x = feed_forward(attention(x))
        return x


class TimeTransformer(nn.Module):
    """Class token + learned positions over the temporal tokens -> LayerNorm -> Linear: one logit."""

    def __init__(
        self,
        tokens: int = TEMPORAL_TOKENS,
        dim: int = FEATURE_CHANNELS,
        depth: int = 1,
        heads: int = 16,
        dim_head: int = 64,
        mlp_dim: int = 2048,
        dropout: float = 0.1,
        emb_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.randn(1, tokens + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout)
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        x = self.dropout(torch.cat([cls, tokens], dim=1) + self.pos_embedding)
        return self.mlp_head(self.transformer(x)[:, 0])


def time_transformer(dim: int, dropout: float, emb_dropout: float, tokens: int = TEMPORAL_TOKENS) -> TimeTransformer:
    """The reference's head shape for ``dim`` channels: heads of 64 channels each (its 16 x 64 for
    1024), the MLP twice as wide."""
    return TimeTransformer(
        tokens=tokens, dim=dim, heads=max(1, dim // 64), mlp_dim=2 * dim, dropout=dropout, emb_dropout=emb_dropout
    )


class TemporalHead(nn.Module):
    """Spatial average per time step (the reference's AvgPool3d((1, 14, 14))) -> time transformer.

    The reference's ``Sigmoid`` after the transformer is deliberately absent: this returns logits.
    """

    def __init__(self, dropout: float = 0.1, emb_dropout: float = 0.1, dim: int = FEATURE_CHANNELS) -> None:
        super().__init__()
        self.time_T = time_transformer(dim, dropout, emb_dropout)  # name fixed by the checkpoint

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = features.mean(dim=(3, 4)).transpose(1, 2)  # (N, 1024, 16, 14, 14) -> (N, 16, 1024)
        return self.time_T(tokens)


class TemporalResNet(nn.Module):
    """s1 -> s2 -> temporal max-pool (2,1,1) -> s3 -> s4 -> (s5 cut) -> head, under the reference's names."""

    def __init__(self, dropout: float = 0.1, emb_dropout: float = 0.1, width: float = 1.0) -> None:
        super().__init__()
        self.s1 = StemStage(_scaled(64, width))
        for name, dim_in, dim_out, dim_inner, kernels, downsample in STAGES:
            self.add_module(
                name,
                ResStage(
                    _scaled(dim_in, width), _scaled(dim_out, width), _scaled(dim_inner, width), kernels, downsample
                ),
            )
        self.pathway0_pool = nn.MaxPool3d(kernel_size=(2, 1, 1), stride=(2, 1, 1))
        self.s5 = nn.Identity()
        self.head = TemporalHead(dropout, emb_dropout, dim=_scaled(FEATURE_CHANNELS, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pathway0_pool(self.s2(self.s1(x)))
        return self.head(self.s5(self.s4(self.s3(x))))


class TemporalMobileNet(nn.Module):
    """The fully temporal MobileNetV2 (``models.ftcn_mobilenet``) -> time transformer over its 16 steps."""

    def __init__(self, dropout: float, emb_dropout: float, frames: int) -> None:
        super().__init__()
        self.features = TemporalMobileNetV2(frames)
        self.time_T = time_transformer(MOBILENET_FEATURES, dropout, emb_dropout, tokens=frames // 2)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.time_T(self.features(clips))


class FTCN(nn.Module):
    """Normalised RGB clips (N, 3, 32, 224, 224) -> fake logit (N,).

    ``width`` and ``input_size`` make a light variant of the same fully temporal design (every
    convolution spatial kernel 1, the time transformer over 16 tokens): ``width=0.25,
    input_size=112`` costs about 1/64 of the paper's 66.6 GMACs per clip, which a 2-core CPU can
    train from scratch. ``backbone="mobilenetv2_100"`` swaps the temporal ResNet for MobileNetV2
    rewritten the same way, so ImageNet weights can be inflated into it
    (:mod:`models.ftcn_mobilenet`). The defaults are the paper's network with the official
    checkpoint's keys.
    """

    def __init__(
        self,
        dropout: float = 0.1,
        emb_dropout: float = 0.1,
        width: float = 1.0,
        input_size: int = 224,
        backbone: str = RESNET,
    ) -> None:
        super().__init__()
        if not 0 < width <= 1:
            raise ModelInputError(f"width must be in (0, 1], got {width}")
        if input_size < MIN_INPUT_SIZE or input_size % SIDE_DIVISOR:
            raise ModelInputError(
                f"input_size must be a multiple of {SIDE_DIVISOR} >= {MIN_INPUT_SIZE}, got {input_size}"
            )
        if backbone not in BACKBONES:
            raise ModelInputError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
        self.spec = ftcn_spec(width, input_size, backbone)
        if backbone == RESNET:
            self.resnet = TemporalResNet(dropout, emb_dropout, width)
            init_like_slowfast(self.resnet)
        else:
            if width != 1.0:
                raise ModelInputError(
                    "width scales the temporal ResNet only; the MobileNetV2 variant keeps ImageNet's widths"
                )
            self.mobilenet = TemporalMobileNet(dropout, emb_dropout, self.spec.num_frames)

    def load_backbone_weights(self, path: str | Path) -> None:
        """ImageNet initialisation, inflated into spatial kernels of 1 (MobileNetV2 variant only)."""
        if not hasattr(self, "mobilenet"):
            raise ModelInputError(
                "no ImageNet ResNet-50 ships offline: --backbone-weights needs --backbone mobilenetv2_100"
            )
        self.mobilenet.features.load_imagenet(path)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        # The 17 learned positions fix the frames; the side is fixed by the spec. Anything else would
        # silently produce a wrong number of tokens or a model never trained on it, so refuse it
        # (static dims: export-safe).
        expected = self.spec.input_shape(1)[1:]
        if tuple(clips.shape[1:]) != expected:
            raise ModelInputError(f"FTCN expects clips (N, {', '.join(map(str, expected))}), got {tuple(clips.shape)}")
        network = self.resnet if hasattr(self, "resnet") else self.mobilenet
        return network(clips).reshape(-1)


def init_like_slowfast(backbone: nn.Module) -> None:
    """SlowFast's ``init_weights``: He-normal (fan_out) convs, BN 1/0, the last BN of each bottleneck 0.

    Zeroing ``c_bn`` starts every residual block as its shortcut (ZERO_INIT_FINAL_BN in the
    reference config). The transformer keeps PyTorch's defaults and randn positions/class token, as
    in the reference. (The reference's surgery re-created the rewritten convs after this init, so
    those had PyTorch's default init; we use He-normal for all, which only matters from scratch.)
    """
    for module in backbone.modules():
        if isinstance(module, nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm3d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    for module in backbone.modules():
        if isinstance(module, BottleneckTransform):
            nn.init.zeros_(module.c_bn.weight)


def filter_official_checkpoint(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Map the official ``ftcn_tt.pth`` (``module.`` already stripped) onto our model.

    The names already agree, so this only reconciles ``num_batches_tracked``: a BatchNorm counter
    that no computation here reads (momentum is fixed), present or absent depending on the PyTorch
    version that saved the file. A missing counter is taken from the model; a counter for a norm the
    model lacks is dropped. Every parameter and running statistic must still match exactly; the
    strict load in :func:`models.registry.create_model` names any key that does not.
    """
    own = model.state_dict()
    counters = {key for key in own if key.endswith(".num_batches_tracked")}
    filtered = {
        key: value for key, value in state_dict.items() if key in own or not key.endswith(".num_batches_tracked")
    }
    for key in counters - set(filtered):
        filtered[key] = own[key]
    return filtered


@register_model(FTCN_SPEC, checkpoint_filter=filter_official_checkpoint, spec_for=ftcn_spec)
def ftcn(
    dropout: float = 0.1, emb_dropout: float = 0.1, width: float = 1.0, input_size: int = 224, backbone: str = RESNET
) -> FTCN:
    """FTCN-TT as released (ftcn_tt.yaml): transformer and embedding dropout 0.1, inactive in eval;
    ``width``/``input_size``/``backbone`` pick a light variant (see :class:`FTCN`)."""
    return FTCN(dropout=dropout, emb_dropout=emb_dropout, width=width, input_size=input_size, backbone=backbone)


__all__ = ["FTCN", "FTCN_SPEC", "filter_official_checkpoint", "ftcn", "ftcn_spec"]
