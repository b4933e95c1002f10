"""RetinaFace (Deng et al., 2019) in the public Pytorch_Retinaface weight layouts.

The production face detector: the one FTCN's own pipeline used, giving five landmarks that the
alignment needs. Both public weight files load as they are: ``mobilenet0.25_Final.pth`` (a
MobileNet-V1 x0.25 body, keys ``body.stage{1,2,3}.*``) and ``Resnet50_Final.pth`` (a torchvision
ResNet-50 body, keys ``body.layer{1..4}.*``); the backbone is told apart by its keys.

Written here rather than taken from the ``retinaface-pytorch`` package, which pins torch 1.9 and
downloads weights at run time. :meth:`RetinaFace.detect` works on a batch of equally sized images on
any device, so the GPU path detects many frames in one forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.models._utils import IntermediateLayerGetter

from models.registry import load_state_dict_strict, read_checkpoint, strip_prefix


@dataclass(frozen=True)
class RetinaFaceConfig:
    name: str
    in_channel: int
    out_channel: int
    min_sizes: tuple[tuple[int, int], ...] = ((16, 32), (64, 128), (256, 512))
    steps: tuple[int, int, int] = (8, 16, 32)
    variance: tuple[float, float] = (0.1, 0.2)


CONFIGS = {
    "mobilenet0.25": RetinaFaceConfig("mobilenet0.25", in_channel=32, out_channel=64),
    "resnet50": RetinaFaceConfig("resnet50", in_channel=256, out_channel=256),
}

# Pytorch_Retinaface subtracts these from BGR pixels and does not scale them.
_BGR_MEAN = (104.0, 117.0, 123.0)


def _conv_bn(c_in: int, c_out: int, stride: int = 1, leaky: float | None = 0.0, kernel: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if leaky is not None:
        layers.append(nn.LeakyReLU(negative_slope=leaky, inplace=True))
    return nn.Sequential(*layers)


def _conv_dw(c_in: int, c_out: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    """Depthwise 3x3 + pointwise 1x1, each with BN and leaky ReLU (keys .0/.1 and .3/.4)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
        nn.BatchNorm2d(c_in),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


class MobileNetV1Body(nn.Module):
    """MobileNet-V1 x0.25 returning the stride-8/16/32 features."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_bn(3, 8, 2, leaky=0.1),
            _conv_dw(8, 16, 1),
            _conv_dw(16, 32, 2),
            _conv_dw(32, 32, 1),
            _conv_dw(32, 64, 2),
            _conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(_conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        return [c3, c4, self.stage3(c4)]


class ResNet50Body(nn.Module):
    """torchvision ResNet-50 up to layer4, keys ``body.conv1``, ``body.layer1``... as in the release."""

    def __init__(self) -> None:
        super().__init__()
        backbone = torchvision.models.resnet50(weights=None)
        self.body = IntermediateLayerGetter(backbone, {"layer2": "c3", "layer3": "c4", "layer4": "c5"})

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x).values())


class FPN(nn.Module):
    def __init__(self, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        leaky = 0.1 if out_channels <= 64 else 0.0
        self.output1 = _conv_bn(in_channels[0], out_channels, leaky=leaky, kernel=1)
        self.output2 = _conv_bn(in_channels[1], out_channels, leaky=leaky, kernel=1)
        self.output3 = _conv_bn(in_channels[2], out_channels, leaky=leaky, kernel=1)
        self.merge1 = _conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = _conv_bn(out_channels, out_channels, leaky=leaky)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        out1, out2, out3 = self.output1(features[0]), self.output2(features[1]), self.output3(features[2])
        out2 = self.merge2(out2 + F.interpolate(out3, size=out2.shape[-2:], mode="nearest"))
        out1 = self.merge1(out1 + F.interpolate(out2, size=out1.shape[-2:], mode="nearest"))
        return [out1, out2, out3]


class SSH(nn.Module):
    """Single-stage context module: 3x3, 5x5 (two 3x3) and 7x7 (three 3x3) branches."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        leaky = 0.1 if channels <= 64 else 0.0
        self.conv3X3 = _conv_bn(channels, channels // 2, leaky=None)
        self.conv5X5_1 = _conv_bn(channels, channels // 4, leaky=leaky)
        self.conv5X5_2 = _conv_bn(channels // 4, channels // 4, leaky=None)
        self.conv7X7_2 = _conv_bn(channels // 4, channels // 4, leaky=leaky)
        self.conv7x7_3 = _conv_bn(channels // 4, channels // 4, leaky=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5 = self.conv5X5_1(x)
        branch7 = self.conv7X7_2(branch5)
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(branch5), self.conv7x7_3(branch7)], dim=1))


class _Head(nn.Module):
    def __init__(self, channels: int, values_per_anchor: int, anchors: int = 2) -> None:
        super().__init__()
        self.values = values_per_anchor
        self.conv1x1 = nn.Conv2d(channels, anchors * values_per_anchor, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1x1(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.values)


@dataclass(frozen=True)
class Detections:
    """Faces in one image: boxes (K,4) x1,y1,x2,y2; scores (K,); landmarks (K,5,2), image-left eye first."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray


class RetinaFace(nn.Module):
    def __init__(self, config: RetinaFaceConfig) -> None:
        super().__init__()
        self.config = config
        if config.name == "mobilenet0.25":
            self.body: nn.Module = MobileNetV1Body()
        else:
            self.body = ResNet50Body().body  # keys body.conv1..., body.layer1... as released
        channels = [config.in_channel * 2, config.in_channel * 4, config.in_channel * 8]
        self.fpn = FPN(channels, config.out_channel)
        self.ssh1, self.ssh2, self.ssh3 = (SSH(config.out_channel) for _ in range(3))
        self.ClassHead = nn.ModuleList(_Head(config.out_channel, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(config.out_channel, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(config.out_channel, 10) for _ in range(3))
        self._priors: dict[tuple[int, int, str], torch.Tensor] = {}

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.body(x)
        return list(out.values()) if isinstance(out, dict) else out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """BGR-minus-mean images (N,3,H,W) -> box deltas (N,A,4), class logits (N,A,2), landmark deltas (N,A,10)."""
        fpn = self.fpn(self._features(x))
        features = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        boxes = torch.cat([head(f) for head, f in zip(self.BboxHead, features, strict=True)], dim=1)
        classes = torch.cat([head(f) for head, f in zip(self.ClassHead, features, strict=True)], dim=1)
        marks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features, strict=True)], dim=1)
        return boxes, classes, marks

    def priors(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Anchor centres and sizes (A, 4) as fractions of the image: cx, cy, w, h."""
        key = (height, width, str(device))
        if key not in self._priors:
            anchors = []
            for step, sizes in zip(self.config.steps, self.config.min_sizes, strict=True):
                rows, cols = -(-height // step), -(-width // step)
                ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
                cx = ((xs + 0.5) * step / width).reshape(-1, 1)
                cy = ((ys + 0.5) * step / height).reshape(-1, 1)
                for_size = [torch.cat([cx, cy, torch.full_like(cx, s / width), torch.full_like(cy, s / height)], 1) for s in sizes]
                anchors.append(torch.stack(for_size, dim=1).reshape(-1, 4))  # sizes vary fastest, as released
            self._priors[key] = torch.cat(anchors).to(device)
        return self._priors[key]

    @torch.inference_mode()
    def detect(self, images: torch.Tensor, score_threshold: float = 0.5, nms_iou: float = 0.4,
               max_faces: int = 50) -> list[Detections]:
        """Faces in a batch of RGB images (N,3,H,W), float 0..255, any device."""
        height, width = images.shape[-2:]
        mean = torch.tensor(_BGR_MEAN, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
        deltas, logits, mark_deltas = self(images.float().flip(1) - mean)  # RGB -> BGR, minus the mean
        priors = self.priors(height, width, images.device)
        var_centre, var_size = self.config.variance
        centres = priors[:, :2] + deltas[..., :2] * var_centre * priors[:, 2:]
        sizes = priors[:, 2:] * torch.exp(deltas[..., 2:] * var_size)
        scale = torch.tensor([width, height], device=images.device, dtype=torch.float32)
        boxes = torch.cat([(centres - sizes / 2) * scale, (centres + sizes / 2) * scale], dim=-1)
        marks = (priors[:, None, :2] + mark_deltas.view(*mark_deltas.shape[:2], 5, 2) * var_centre * priors[:, None, 2:]) * scale
        scores = torch.softmax(logits, dim=-1)[..., 1]
        results = []
        for b in range(images.shape[0]):
            keep = scores[b] >= score_threshold
            box, score, mark = boxes[b][keep], scores[b][keep], marks[b][keep]
            chosen = torchvision.ops.nms(box, score, nms_iou)[:max_faces]
            results.append(Detections(box[chosen].cpu().numpy(), score[chosen].cpu().numpy(), mark[chosen].cpu().numpy()))
        return results


def detect_numpy(net: RetinaFace, image_rgb: np.ndarray, **kwargs: float) -> Detections:
    """Faces in one RGB uint8 image (H, W, 3)."""
    device = next(net.parameters()).device
    tensor = torch.from_numpy(np.ascontiguousarray(image_rgb)).to(device).permute(2, 0, 1)[None].float()
    return net.detect(tensor, **kwargs)[0]


def build_retinaface(name: str = "mobilenet0.25") -> RetinaFace:
    """A random-initialised network of either public layout (no download)."""
    return RetinaFace(CONFIGS[name]).eval()


def load_retinaface(path: str | Path, device: str | torch.device = "cpu") -> RetinaFace:
    """Load public Pytorch_Retinaface weights; the backbone is inferred from the keys."""
    state = strip_prefix(read_checkpoint(path)["state_dict"])
    if any(k.startswith("body.stage1.") for k in state):
        name = "mobilenet0.25"
    elif any(k.startswith("body.layer1.") for k in state):
        name = "resnet50"
    else:
        raise ValueError(f"{path}: neither the MobileNet-0.25 nor the ResNet-50 RetinaFace layout (keys {list(state)[:3]})")
    net = build_retinaface(name)
    load_state_dict_strict(net, state, str(path))
    return net.to(device).eval()
