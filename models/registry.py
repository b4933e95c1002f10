"""Model registry: the only door to build a detector by name (timm's ``create_model`` pattern).

A model module declares its spec once and registers a factory::

    @register_model(SPEC, checkpoint_filter=filter_reference_checkpoint)
    def ftcn(**kwargs) -> nn.Module: ...

Every registered network's ``forward`` returns the fake logit ``(N,)`` described by
:class:`models.spec.ModelSpec`; ``create_model`` loads weights from our own training checkpoints or
from the reference implementation's layout through the module's ``checkpoint_filter``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.spec import ModelSpec

StateDict = dict[str, torch.Tensor]
CheckpointFilter = Callable[[StateDict, nn.Module], StateDict]
#: the spec for given constructor kwargs, for models whose preprocessing follows an option
SpecForKwargs = Callable[..., ModelSpec]


class CheckpointError(ValueError):
    """A checkpoint does not fit the network; the message names the offending keys."""


@dataclass(frozen=True)
class RegisteredModel:
    spec: ModelSpec
    factory: Callable[..., nn.Module]
    checkpoint_filter: CheckpointFilter | None
    spec_for: SpecForKwargs | None = None


_REGISTRY: dict[str, RegisteredModel] = {}


def register_model(
    spec: ModelSpec,
    checkpoint_filter: CheckpointFilter | None = None,
    spec_for: SpecForKwargs | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a factory under ``spec.name``.

    ``spec`` is the reference configuration's spec. ``spec_for(**kwargs)`` gives the spec of other
    constructor options when they change the input (e.g. a backbone with other ImageNet
    statistics), so training and export agree with the network they build.
    """

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if spec.name in _REGISTRY:
            raise ValueError(f"model {spec.name!r} registered twice")
        _REGISTRY[spec.name] = RegisteredModel(spec, factory, checkpoint_filter, spec_for)
        return factory

    return decorator


def _ensure_loaded() -> None:
    # Importing the package registers every model module (see models/__init__.py).
    import models  # noqa: F401


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_entry(name: str) -> RegisteredModel:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def get_spec(name: str, **kwargs: Any) -> ModelSpec:
    """The model's spec; with constructor ``kwargs``, the spec of that configuration."""
    entry = get_entry(name)
    if kwargs and entry.spec_for is not None:
        return entry.spec_for(**kwargs)
    return entry.spec


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file into ``{"state_dict", "model", "spec", "config", ...}``.

    Accepts our training checkpoints (a dict with ``state_dict`` and ``model``), dicts that wrap the
    weights under ``state_dict``/``model``/``net`` as the references do, and bare state_dicts.
    """
    raw = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(raw).__name__}")
    if "state_dict" in raw and isinstance(raw["state_dict"], dict):
        return dict(raw)
    for key in ("model", "net", "model_state_dict", "state"):
        if isinstance(raw.get(key), dict) and all(torch.is_tensor(v) for v in raw[key].values()):
            return {"state_dict": raw[key]}
    return {"state_dict": raw}


def strip_prefix(state_dict: StateDict, prefix: str = "module.") -> StateDict:
    """Drop a DataParallel/DDP prefix from every key that has it."""
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def load_state_dict_strict(model: nn.Module, state_dict: StateDict, source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` with an error that lists missing/unexpected/mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mis_shaped = sorted(
        f"{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or mis_shaped:

        def head(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" ... (+{len(items) - 8})" if len(items) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {head(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {head(unexpected)}")
        if mis_shaped:
            parts.append(f"wrong shape for {len(mis_shaped)} keys: {head(mis_shaped)}")
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def create_model(
    name: str,
    checkpoint: str | Path | dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model, optionally loading weights.

    ``checkpoint`` is a path or an already-read checkpoint dict. Our own checkpoints (written by
    ``training.train``) load directly and may carry the constructor ``model_kwargs``; anything
    else goes through the model's reference-layout filter first.
    """
    entry = get_entry(name)
    ckpt: dict[str, Any] | None = None
    source = "checkpoint"
    if checkpoint is not None:
        if isinstance(checkpoint, dict):
            ckpt = checkpoint
        else:
            source = str(checkpoint)
            ckpt = read_checkpoint(checkpoint)
        if ckpt.get("model") not in (None, name):
            raise CheckpointError(f"{source} holds model {ckpt['model']!r}, not {name!r}")
        kwargs = {**ckpt.get("model_kwargs", {}), **kwargs}
    model = entry.factory(**kwargs)
    if ckpt is not None:
        state_dict = strip_prefix(ckpt["state_dict"])
        is_native = ckpt.get("model") == name
        if not is_native and entry.checkpoint_filter is not None:
            state_dict = entry.checkpoint_filter(state_dict, model)
        load_state_dict_strict(model, state_dict, source)
    model.eval()
    return model
