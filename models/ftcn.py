"""FTCN + Temporal Transformer (Zheng et al., ICCV 2021): a clip classifier for face videos.

A SlowFast-style ResNet-50 whose 3D convolutions keep their temporal kernels but have spatial
kernel 1 ("fully temporal convolution"): the network cannot read spatial texture directly and must
look at temporal coherence. Spatial down-sampling happens in max-pools placed after the batch norms
that followed the original strided convolutions, which is why those norms are ``Sequential(bn,
pool)`` and their checkpoint keys end in ``.0.*``. A one-layer transformer over the 16 temporal
tokens gives the clip's logit.

The module tree is built so that ``state_dict()`` keys are exactly those of the official
``ftcn_tt.pth`` (see METHODS.md), so the official weights load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn

from models.registry import StateDict, load_state_dict_strict, register_model
from models.spec import IMAGENET_MEAN, IMAGENET_STD, CropRule, ModelSpec

FTCN_TEMPLATE_256 = ((85.83, 85.78), (169.05, 84.34), (127.57, 137.00), (90.70, 174.70), (167.31, 173.37))

FTCN_SPEC = ModelSpec(
    name="ftcn",
    kind="clip",
    num_frames=32,
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    crop=CropRule(method="align", template=FTCN_TEMPLATE_256, template_size=256),
    output="logit of P(fake) (reference: sigmoid of this logit)",
    description="FTCN + Temporal Transformer (ICCV 2021): 32-frame aligned face clips at 224, temporal-only 3D ResNet-50.",
)

_BN_EPS = 1e-5
_BN_MOMENTUM = 0.1


def _norm(channels: int, downsample: bool) -> nn.Module:
    """BatchNorm3d, followed by the spatial max-pool that replaced a stride-2 convolution."""
    bn = nn.BatchNorm3d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)
    return nn.Sequential(bn, nn.MaxPool3d((1, 2, 2), (1, 2, 2))) if downsample else bn


class Stem(nn.Module):
    """conv 5x1x1 -> BN -> pool(1,2,2) -> ReLU -> max-pool 1x3x3 stride 2 (keys: conv, bn.0)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 64, (5, 1, 1), padding=(2, 0, 0), bias=False)
        self.bn = _norm(64, downsample=True)
        self.relu = nn.ReLU(inplace=True)
        self.pool_layer = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_layer(self.relu(self.bn(self.conv(x))))


class BottleneckTransform(nn.Module):
    """a: temporal conv (k x1x1) -> b: 1x1x1 (spatially strided via pool) -> c: 1x1x1 expand."""

    def __init__(self, dim_in: int, dim_out: int, dim_inner: int, temporal_kernel: int, downsample: bool) -> None:
        super().__init__()
        self.a = nn.Conv3d(dim_in, dim_inner, (temporal_kernel, 1, 1), padding=(temporal_kernel // 2, 0, 0), bias=False)
        self.a_bn = _norm(dim_inner, downsample=False)
        self.a_relu = nn.ReLU(inplace=True)
        self.b = nn.Conv3d(dim_inner, dim_inner, 1, bias=False)
        self.b_bn = _norm(dim_inner, downsample=downsample)
        self.b_relu = nn.ReLU(inplace=True)
        self.c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.c_bn = _norm(dim_out, downsample=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a_relu(self.a_bn(self.a(x)))
        x = self.b_relu(self.b_bn(self.b(x)))
        return self.c_bn(self.c(x))


class ResBlock(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, dim_inner: int, temporal_kernel: int, downsample: bool) -> None:
        super().__init__()
        if dim_in != dim_out or downsample:
            self.branch1 = nn.Conv3d(dim_in, dim_out, 1, bias=False)
            self.branch1_bn = _norm(dim_out, downsample=downsample)
        else:
            self.branch1 = None
        self.branch2 = BottleneckTransform(dim_in, dim_out, dim_inner, temporal_kernel, downsample)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.branch1 is None else self.branch1_bn(self.branch1(x))
        return self.relu(shortcut + self.branch2(x))


class Stage(nn.Module):
    """Blocks named ``pathway0_res{i}`` as in SlowFast's ResStage."""

    def __init__(self, dim_in: int, dim_out: int, dim_inner: int, temporal_kernels: list[int], downsample: bool) -> None:
        super().__init__()
        self.num_blocks = len(temporal_kernels)
        for i, kernel in enumerate(temporal_kernels):
            block = ResBlock(dim_in if i == 0 else dim_out, dim_out, dim_inner, kernel, downsample and i == 0)
            self.add_module(f"pathway0_res{i}", block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_blocks):
            x = getattr(self, f"pathway0_res{i}")(x)
        return x


class StemStage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pathway0_stem = Stem()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pathway0_stem(x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        q, k, v = self.to_qkv(x).reshape(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale, dim=-1)
        out = torch.matmul(attention, v).transpose(1, 2).reshape(batch, tokens, -1)
        return self.to_out(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class Residual(nn.Module):
    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


class Transformer(nn.Module):
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
    """Class token + learned positions over the temporal tokens; returns the class logit."""

    def __init__(self, tokens: int = 16, dim: int = 1024, depth: int = 1, heads: int = 16, dim_head: int = 64,
                 mlp_dim: int = 2048, dropout: float = 0.1, emb_dropout: float = 0.1) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.randn(1, tokens + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout)
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = self.dropout(torch.cat([cls, x], dim=1) + self.pos_embedding)
        return self.mlp_head(self.transformer(x)[:, 0])


class TemporalHead(nn.Module):
    """Average each temporal step's 14x14 map into a token, then the time transformer."""

    def __init__(self, dropout: float = 0.1, emb_dropout: float = 0.1) -> None:
        super().__init__()
        self.time_T = TimeTransformer(dropout=dropout, emb_dropout=emb_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the reference's AvgPool3d((1, 14, 14)): a spatial mean per temporal step (exports as ReduceMean)
        tokens = x.mean(dim=(3, 4)).transpose(1, 2)  # (N, 1024, 16, 14, 14) -> (N, 16, 1024)
        return self.time_T(tokens)


class TemporalResNet50(nn.Module):
    """The backbone and head, under the attribute names of the reference (``resnet.*`` keys)."""

    def __init__(self, dropout: float = 0.1, emb_dropout: float = 0.1) -> None:
        super().__init__()
        self.s1 = StemStage()
        self.s2 = Stage(64, 256, 64, [3, 3, 3], downsample=False)
        self.pathway0_pool = nn.MaxPool3d((2, 1, 1), (2, 1, 1))
        self.s3 = Stage(256, 512, 128, [3, 1, 3, 1], downsample=True)
        self.s4 = Stage(512, 1024, 256, [3, 1, 3, 1, 3, 1], downsample=True)
        self.s5 = nn.Identity()  # stop_point = 5: the reference cuts the network before stage 5
        self.head = TemporalHead(dropout, emb_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pathway0_pool(self.s2(self.s1(x)))
        return self.head(self.s5(self.s4(self.s3(x))))


class FTCN(nn.Module):
    """Input (N, 3, 32, 224, 224) normalised RGB clips -> fake logit (N,)."""

    def __init__(self, dropout: float = 0.1, emb_dropout: float = 0.1) -> None:
        super().__init__()
        self.spec = FTCN_SPEC
        self.resnet = TemporalResNet50(dropout, emb_dropout)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.resnet(clips).reshape(-1)


def filter_official_checkpoint(state_dict: StateDict, model: nn.Module) -> StateDict:
    """The official ``ftcn_tt.pth`` already has our key names; keep only tensors the model has.

    ``num_batches_tracked`` buffers are absent from some exports: fill them from the model so a
    strict load still checks every parameter and running statistic.
    """
    own = model.state_dict()
    out = dict(state_dict)
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in out:
            out[key] = value
    return out


@register_model(FTCN_SPEC, checkpoint_filter=filter_official_checkpoint)
def ftcn(dropout: float = 0.1, emb_dropout: float = 0.1) -> FTCN:
    return FTCN(dropout=dropout, emb_dropout=emb_dropout)


__all__ = ["FTCN", "FTCN_SPEC", "filter_official_checkpoint", "ftcn", "load_state_dict_strict"]
