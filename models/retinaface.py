"""RetinaFace (Deng et al., 2019) in the public Pytorch_Retinaface weight layouts.

The production face detector: the one FTCN's own pipeline used, giving the five landmarks that face
alignment needs. Both public weight files load as they are: ``mobilenet0.25_Final.pth`` (a
MobileNet-V1 x0.25 body, keys ``body.stage{1,2,3}.*``) and ``Resnet50_Final.pth`` (a torchvision
ResNet-50 body cut by ``IntermediateLayerGetter``, keys ``body.conv1``, ``body.layer{1..4}.*``); the
backbone is told apart by its keys, so callers only pass a path.

Written here rather than taken from the ``retinaface-pytorch`` package, which pins an old torch and
downloads weights at run time. :meth:`RetinaFace.detect` works on a batch of equally sized images on
any device and synchronises with the host once per batch, so the GPU path detects many video frames
in one forward.
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

from models.errors import ModelInputError
from models.registry import CheckpointError, StateDict, load_state_dict_strict, read_checkpoint, strip_prefix


@dataclass(frozen=True)
class RetinaFaceConfig:
    """One public configuration (``cfg_mnet`` / ``cfg_re50`` in the reference's ``data/config.py``)."""

    name: str
    in_channel: int  # the FPN reads in_channel * (2, 4, 8) channels from the stride-8/16/32 features
    out_channel: int
    min_sizes: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
    steps: tuple[int, ...] = (8, 16, 32)
    variance: tuple[float, float] = (0.1, 0.2)


CONFIGS = {
    "mobilenet0.25": RetinaFaceConfig("mobilenet0.25", in_channel=32, out_channel=64),
    "resnet50": RetinaFaceConfig("resnet50", in_channel=256, out_channel=256),
}

# The released weights were trained on cv2 (BGR) pixels minus this mean, without scaling to 0..1.
_BGR_MEAN = (104.0, 117.0, 123.0)
# The reference keeps the 5000 best anchors before NMS; bounding the candidates keeps NMS cheap even
# with a low score threshold on a large frame.
_PRE_NMS_TOP_K = 5000
_PRIOR_CACHE_SIZE = 8


def _conv_bn(c_in: int, c_out: int, leaky: float | None, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (no bias) + BN [+ leaky ReLU]: keys ``.0`` conv, ``.1`` BN as in the release.

    ``leaky=None`` leaves out the activation (the reference's ``conv_bn_no_relu``); ``leaky=0`` is a
    plain ReLU, which the ResNet-50 variant uses in its FPN and SSH.
    """
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
    """MobileNet-V1 x0.25 returning the stride-8/16/32 features (64, 128, 256 channels).

    The reference also defines an ImageNet classifier (``avg``, ``fc``) that its layer getter drops;
    the released detector weights hold no keys for it, so it is not built here.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_bn(3, 8, leaky=0.1, stride=2),
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


def resnet50_body() -> IntermediateLayerGetter:
    """torchvision ResNet-50 up to layer4 (no download), naming its modules ``conv1``, ``layer1``...

    ``IntermediateLayerGetter`` keeps torchvision's child names, which is exactly how the release's
    ``body.*`` keys are spelled; ``avgpool``/``fc`` are dropped as in the release.
    """
    backbone = torchvision.models.resnet50(weights=None)
    return IntermediateLayerGetter(backbone, {"layer2": "c3", "layer3": "c4", "layer4": "c5"})


class FPN(nn.Module):
    """Top-down feature pyramid: 1x1 laterals, nearest upsampling, 3x3 merges (no P6)."""

    def __init__(self, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        leaky = 0.1 if out_channels <= 64 else 0.0  # the reference's rule, kept for its weights
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
    """Single-stage context module: 3x3, 5x5 (two 3x3) and 7x7 (three 3x3) branches, concatenated.

    The attribute names, including the odd ``conv7x7_3`` casing, are the release's key names.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 4:
            raise ModelInputError(f"SSH needs channels divisible by 4, got {channels}")
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
    """1x1 conv predicting ``values`` numbers per anchor, flattened to (N, H*W*anchors, values)."""

    def __init__(self, channels: int, values_per_anchor: int, anchors: int = 2) -> None:
        super().__init__()
        self.values = values_per_anchor
        self.conv1x1 = nn.Conv2d(channels, anchors * values_per_anchor, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last flattening puts the anchors of one cell next to each other, the prior order
        return self.conv1x1(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.values)


@dataclass(frozen=True)
class Detections:
    """Faces in one image, best score first.

    boxes (K,4) x1,y1,x2,y2 and landmarks (K,5,2) x,y in input pixels; scores (K,) face probability.
    Landmark order: left eye, right eye, nose, left mouth corner, right mouth corner, where "left"
    is the image's left (the subject's right), as the reference outputs them.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


class RetinaFace(nn.Module):
    """RetinaFace with the release's module names, so its state_dicts load without renaming."""

    def __init__(self, config: RetinaFaceConfig) -> None:
        super().__init__()
        self.config = config
        if config.name == "mobilenet0.25":
            self.body: nn.Module = MobileNetV1Body()
        elif config.name == "resnet50":
            self.body = resnet50_body()
        else:
            raise ModelInputError(f"unknown RetinaFace backbone {config.name!r}; known: {', '.join(CONFIGS)}")
        channels = [config.in_channel * 2, config.in_channel * 4, config.in_channel * 8]
        self.fpn = FPN(channels, config.out_channel)
        self.ssh1, self.ssh2, self.ssh3 = (SSH(config.out_channel) for _ in range(3))
        anchors = len(config.min_sizes[0])
        self.ClassHead = nn.ModuleList(_Head(config.out_channel, 2, anchors) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(config.out_channel, 4, anchors) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(config.out_channel, 10, anchors) for _ in range(3))
        self._priors: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """BGR-minus-mean images (N,3,H,W) -> box deltas (N,A,4), class logits (N,A,2), landmark deltas (N,A,10).

        Raw network outputs (logits, not the reference's test-phase softmax) so that training and
        ONNX export see the plain graph; :meth:`detect` does the rest.
        """
        features = self.body(x)
        if isinstance(features, dict):  # IntermediateLayerGetter returns an ordered dict
            features = list(features.values())
        fpn = self.fpn(features)
        heads = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        boxes = torch.cat([head(f) for head, f in zip(self.BboxHead, heads, strict=True)], dim=1)
        classes = torch.cat([head(f) for head, f in zip(self.ClassHead, heads, strict=True)], dim=1)
        marks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, heads, strict=True)], dim=1)
        return boxes, classes, marks

    def priors(self, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Anchors (A, 4) as fractions of the image: cx, cy, w, h, in the heads' output order.

        Per level: rows, then columns, then the level's sizes (fastest), with ceil(H/step) rows,
        as the reference's ``PriorBox``. Cached per size and device because a video's frames share
        one size; the cache is small so that a service fed many sizes does not grow without bound.
        """
        key = (height, width, torch.device(device))
        cached = self._priors.get(key)
        if cached is not None:
            return cached
        levels = []
        for step, sizes in zip(self.config.steps, self.config.min_sizes, strict=True):
            rows, cols = -(-height // step), -(-width // step)
            ys, xs = torch.meshgrid(
                torch.arange(rows, dtype=torch.float32), torch.arange(cols, dtype=torch.float32), indexing="ij"
            )
            cx = ((xs.reshape(-1, 1) + 0.5) * step / width).expand(-1, len(sizes))
            cy = ((ys.reshape(-1, 1) + 0.5) * step / height).expand(-1, len(sizes))
            size = torch.tensor(sizes, dtype=torch.float32)
            sw, sh = (size / width).expand_as(cx), (size / height).expand_as(cy)
            levels.append(torch.stack([cx, cy, sw, sh], dim=-1).reshape(-1, 4))
        priors = torch.cat(levels).to(key[2])
        if len(self._priors) >= _PRIOR_CACHE_SIZE:
            self._priors.pop(next(iter(self._priors)))
        self._priors[key] = priors
        return priors

    @torch.inference_mode()
    def detect(
        self,
        images: torch.Tensor,
        score_threshold: float = 0.5,
        nms_iou: float = 0.4,
        max_faces: int = 50,
    ) -> list[Detections]:
        """Faces in a batch of equally sized RGB images (N,3,H,W), float 0..255, on any device.

        The released weights expect BGR pixels minus (104, 117, 123), so the channels are flipped
        and the mean subtracted here: callers hand over ordinary RGB frames. The input is moved to
        the network's device and dtype (fp16/bf16 work); decoding and NMS run in float32. All
        images go through one forward and one ``batched_nms``, and the results reach the host in a
        single copy, so a GPU is not stalled once per image.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ModelInputError(f"expected images (N,3,H,W), got {tuple(images.shape)}")
        count, _, height, width = images.shape
        if count == 0:
            return []
        weight = next(self.parameters())
        mean = torch.tensor(_BGR_MEAN, device=weight.device).view(1, 3, 1, 1)
        bgr = images.to(device=weight.device, dtype=torch.float32).flip(1) - mean
        deltas, logits, mark_deltas = (t.float() for t in self(bgr.to(weight.dtype)))

        scores = logits.softmax(dim=-1)[..., 1]  # (N, A)
        top_scores, top_anchors = scores.topk(min(_PRE_NMS_TOP_K, scores.shape[1]), dim=1)
        image_idx, rank = (top_scores >= score_threshold).nonzero(as_tuple=True)
        anchor, candidate_scores = top_anchors[image_idx, rank], top_scores[image_idx, rank]
        priors = self.priors(height, width, weight.device)[anchor]
        boxes, marks = self._decode(deltas[image_idx, anchor], mark_deltas[image_idx, anchor], priors, height, width)
        keep = torchvision.ops.batched_nms(boxes, candidate_scores, image_idx, nms_iou)

        # one device -> host copy; batched_nms returns indices in descending score order
        owner = image_idx[keep].cpu().numpy()
        all_boxes, all_scores = boxes[keep].cpu().numpy(), candidate_scores[keep].cpu().numpy()
        all_marks = marks[keep].cpu().numpy()
        results = []
        for b in range(count):
            mine = np.flatnonzero(owner == b)[:max_faces]
            results.append(Detections(all_boxes[mine], all_scores[mine], all_marks[mine]))
        return results

    def _decode(
        self, deltas: torch.Tensor, mark_deltas: torch.Tensor, priors: torch.Tensor, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SSD-style decoding with the variances -> boxes (K,4) x1y1x2y2 and landmarks (K,5,2) in pixels."""
        var_centre, var_size = self.config.variance
        centre, size = priors[:, :2], priors[:, 2:]
        box_centre = centre + deltas[:, :2] * var_centre * size
        box_size = size * torch.exp(deltas[:, 2:] * var_size)
        scale = torch.tensor([width, height], dtype=torch.float32, device=deltas.device)
        boxes = torch.cat([box_centre - box_size / 2, box_centre + box_size / 2], dim=1) * scale.repeat(2)
        marks = (centre[:, None] + mark_deltas.view(-1, 5, 2) * var_centre * size[:, None]) * scale
        return boxes, marks


def detect_numpy(
    net: RetinaFace,
    image_rgb: np.ndarray,
    score_threshold: float = 0.5,
    nms_iou: float = 0.4,
    max_faces: int = 50,
) -> Detections:
    """Faces in one RGB uint8 image (H, W, 3); a convenience over :meth:`RetinaFace.detect`."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ModelInputError(f"expected an RGB image (H,W,3), got shape {image_rgb.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(image_rgb)).permute(2, 0, 1)[None]
    return net.detect(tensor, score_threshold=score_threshold, nms_iou=nms_iou, max_faces=max_faces)[0]


def build_retinaface(name: str = "mobilenet0.25") -> RetinaFace:
    """A randomly initialised network of either public layout, in eval mode (nothing downloaded)."""
    try:
        config = CONFIGS[name]
    except KeyError:
        raise ModelInputError(f"unknown RetinaFace backbone {name!r}; known: {', '.join(CONFIGS)}") from None
    return RetinaFace(config).eval()


def backbone_of(state_dict: StateDict) -> str:
    """Which public layout a (prefix-stripped) state_dict is in: ``mobilenet0.25`` or ``resnet50``."""
    if any(k.startswith("body.stage1.") for k in state_dict):
        return "mobilenet0.25"
    if any(k.startswith("body.layer1.") for k in state_dict):
        return "resnet50"
    raise CheckpointError(
        "neither the MobileNet-0.25 (body.stage1.*) nor the ResNet-50 (body.layer1.*) RetinaFace layout; "
        f"first keys: {', '.join(list(state_dict)[:5])}"
    )


def _add_missing_batch_counters(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Fill in BatchNorm ``num_batches_tracked`` when a checkpoint has none of them.

    Checkpoints saved before torch 0.4.1 lack these counters; torch's own BatchNorm loader fills
    them for such files and they do not affect inference. Only the all-absent case is forgiven: a
    file missing some of them is damaged and still fails the strict load.
    """
    counters = [k for k in model.state_dict() if k.endswith("num_batches_tracked")]
    if any(k in state_dict for k in counters):
        return state_dict
    return {**state_dict, **{k: torch.tensor(0, dtype=torch.long) for k in counters}}


def load_retinaface(path: str | Path, device: str | torch.device = "cpu") -> RetinaFace:
    """Load public Pytorch_Retinaface weights strictly; the backbone is inferred from the keys.

    Accepts bare state_dicts and ``{"state_dict": ...}`` wraps, with or without the ``module.``
    prefix that DataParallel training leaves. Raises :class:`CheckpointError` naming the missing,
    unexpected or mis-shaped keys when the file does not fit.
    """
    state = strip_prefix(read_checkpoint(path)["state_dict"])
    try:
        name = backbone_of(state)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    net = build_retinaface(name)
    load_state_dict_strict(net, _add_missing_batch_counters(state, net), str(path))
    return net.to(device).eval()
