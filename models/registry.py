"""Model registry: the only door to build a detector by name (timm's ``create_model`` pattern).

A model module declares its spec once and registers a factory::

    @register_model(SPEC, checkpoint_filter=filter_reference_checkpoint)
    def ftcn(**kwargs) -> nn.Module: ...

Every registered network's ``forward`` returns the fake logit ``(N,)`` described by
:class:`models.spec.ModelSpec`; ``create_model`` loads weights from our own training checkpoints or
from the reference implementation's layout through the module's ``checkpoint_filter``.

A reference checkpoint is a bare state_dict: it does not say which architecture variant it was
saved from (advgame's B3 or B7, LIB's ResNet or MobileNet). A module's ``infer_kwargs`` hook reads
that from the tensors, so export builds the network the weights fit instead of the default one;
:func:`resolve_model_kwargs` combines it with the checkpoint's own ``model_kwargs`` and the
caller's explicit options.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.checkpoint import TrainingCheckpoint
from models.errors import ModelInputError
from models.spec import ModelSpec

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
CheckpointFilter = Callable[[StateDict, nn.Module], StateDict]
#: the spec for given constructor kwargs, for models whose preprocessing follows an option
SpecForKwargs = Callable[..., ModelSpec]
#: ``(state_dict, given) -> kwargs``: the constructor options a bare state_dict was saved with,
#: other than those the caller fixed in ``given`` (which it must respect when building candidates)
KwargsInference = Callable[[StateDict, dict[str, Any]], dict[str, Any]]


class CheckpointError(ModelInputError):
    """A checkpoint does not fit the network; the message names the offending keys."""


class KwargsInferenceError(CheckpointError):
    """The tensors do not tell a constructor option; ``option`` and ``choices`` say what to pass."""

    def __init__(self, message: str, option: str, choices: Iterable[object] = ()) -> None:
        super().__init__(message)
        self.option = option
        self.choices = [str(c) for c in choices]


@dataclass(frozen=True)
class RegisteredModel:
    spec: ModelSpec
    factory: Callable[..., nn.Module]
    checkpoint_filter: CheckpointFilter | None
    spec_for: SpecForKwargs | None = None
    infer_kwargs: KwargsInference | None = None


_REGISTRY: dict[str, RegisteredModel] = {}


def register_model(
    spec: ModelSpec,
    checkpoint_filter: CheckpointFilter | None = None,
    spec_for: SpecForKwargs | None = None,
    infer_kwargs: KwargsInference | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a factory under ``spec.name``.

    ``spec`` is the reference configuration's spec. ``spec_for(**kwargs)`` gives the spec of other
    constructor options when they change the input (e.g. a backbone with other ImageNet
    statistics), so training and export agree with the network they build. ``infer_kwargs`` reads
    the architecture options from a bare state_dict (see :func:`infer_choice` for the usual way).
    """

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if spec.name in _REGISTRY:
            raise ModelInputError(f"model {spec.name!r} registered twice")
        _REGISTRY[spec.name] = RegisteredModel(spec, factory, checkpoint_filter, spec_for, infer_kwargs)
        return factory

    return decorator


def _ensure_loaded() -> None:
    # Each detector module registers itself when imported (see models/__init__.py).
    from models import import_detectors

    import_detectors()


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
    checkpoint: str | Path | dict[str, Any] | TrainingCheckpoint | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model, optionally loading weights.

    ``checkpoint`` is a path, an already-read checkpoint dict or a :class:`TrainingCheckpoint`. Our own checkpoints (written by
    ``training.train``) load directly and may carry the constructor ``model_kwargs``; anything
    else goes through the model's reference-layout filter first.
    """
    entry = get_entry(name)
    ckpt: dict[str, Any] | None = None
    source = "checkpoint"
    if checkpoint is not None:
        if isinstance(checkpoint, TrainingCheckpoint):
            ckpt = checkpoint.to_dict()
        elif isinstance(checkpoint, dict):
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


# ---- constructor options of a checkpoint ---------------------------------------------------------


def constructor_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The keyword options ``name``'s factory takes: what ``--option key=value`` may set."""
    parameters = inspect.signature(get_entry(name).factory).parameters
    return {k: p for k, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_model_options(name: str, options: dict[str, Any]) -> None:
    """Refuse options the constructor does not take, listing those it does (a typo must not be
    silently dropped, nor reach the factory as a bare ``TypeError``)."""
    allowed = constructor_parameters(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ModelInputError(
            f"{name} takes no option {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed) or '(none)'}"
        )


@dataclass(frozen=True)
class ModelKwargs:
    """The constructor options to build a checkpoint's network, and where each came from."""

    kwargs: dict[str, Any]
    #: option -> "option" (given by the caller), "checkpoint" (our own file's) or "inferred"
    origin: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        return ", ".join(f"{k}={v!r} ({self.origin.get(k, '?')})" for k, v in self.kwargs.items()) or "defaults"


def resolve_model_kwargs(name: str, ckpt: dict[str, Any] | None, options: dict[str, Any] | None = None) -> ModelKwargs:
    """Options to build ``name`` for ``ckpt``: the caller's ``options`` win, then the checkpoint's
    own ``model_kwargs`` (our training checkpoints carry them), else what the model's
    ``infer_kwargs`` hook reads from the tensors of a bare (reference) state_dict.

    Raises :class:`KwargsInferenceError` when the tensors fit no known configuration.
    """
    options = dict(options or {})
    check_model_options(name, options)
    found: dict[str, Any] = {}
    origin = "checkpoint"
    if ckpt is not None and "model_kwargs" in ckpt:
        found = dict(ckpt["model_kwargs"] or {})
    elif ckpt is not None and get_entry(name).infer_kwargs is not None:
        found = get_entry(name).infer_kwargs(strip_prefix(ckpt["state_dict"]), options)
        origin = "inferred"
    kwargs = {**found, **options}
    return ModelKwargs(kwargs, {k: "option" if k in options else origin for k in kwargs})


@dataclass(frozen=True)
class Fit:
    """How a state_dict differs from one configuration's network (no differences: it loads)."""

    differences: list[str]
    #: the model's filter refused the layout for this configuration: it fits not at all
    refused: bool = False

    def __bool__(self) -> bool:
        return not self.differences

    def distance(self) -> tuple[bool, int]:
        return self.refused, len(self.differences)


@functools.lru_cache(maxsize=32)
def _meta_model(name: str, kwargs: tuple[tuple[str, Any], ...]) -> nn.Module:
    """``name`` built on the meta device (shapes, no storage); cached, since every export of a
    reference checkpoint tries the same candidates. Filters only read the model."""
    with torch.device("meta"):
        return get_entry(name).factory(**dict(kwargs))


def state_dict_fit(name: str, state_dict: StateDict, kwargs: dict[str, Any]) -> Fit:
    """How ``state_dict`` (any layout the model's filter reads) differs from the network that
    ``kwargs`` build: missing, unexpected and mis-shaped keys after the filter.

    The network is built on the meta device, so trying every variant of a 64M-parameter model
    costs a fraction of a second and no memory.
    """
    entry = get_entry(name)
    key = tuple(sorted(kwargs.items()))
    try:
        hash(key)
    except TypeError:  # an unhashable option value (a list): build it uncached
        model = _meta_model.__wrapped__(name, key)
    else:
        model = _meta_model(name, key)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        mapped = entry.checkpoint_filter(state_dict, model) if entry.checkpoint_filter else state_dict
    except CheckpointError as error:
        return Fit([str(error)], refused=True)
    theirs = {k: tuple(v.shape) for k, v in mapped.items() if torch.is_tensor(v)}
    return Fit(
        [f"missing {k}" for k in sorted(set(own) - set(theirs))]
        + [f"unexpected {k}" for k in sorted(set(theirs) - set(own))]
        + [f"{k}: {theirs[k]} vs {own[k]}" for k in sorted(set(own) & set(theirs)) if own[k] != theirs[k]]
    )


def infer_choice(
    name: str,
    state_dict: StateDict,
    option: str,
    choices: Iterable[Any],
    given: dict[str, Any],
    fixed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``{option: choice}`` for the first of ``choices`` whose network the tensors fit exactly.

    Each candidate is built with ``given`` and ``fixed`` (options already known), so a new variant
    needs no signature of its own: it is tried as soon as it is among ``choices``. Nothing is
    inferred when the caller gave ``option``. Choices that build the same tensor shapes (e.g. two
    paddings of one EfficientNet) cannot be told apart: the first wins, and the log says so.
    """
    if option in given:
        return {}
    choices = list(choices)
    if not choices:
        raise KwargsInferenceError(f"{name}: no {option} to choose from", option)
    base = {**(fixed or {}), **given}
    fits = {choice: state_dict_fit(name, state_dict, {**base, option: choice}) for choice in choices}
    fitting = [c for c in choices if fits[c]]
    if fitting:
        if len(fitting) > 1:
            log.warning(
                "%s: the checkpoint fits %s=%s and also %s; taking %r",
                name,
                option,
                fitting[0],
                ", ".join(map(str, fitting[1:])),
                fitting[0],
            )
        return {option: fitting[0]}
    closest = min(choices, key=lambda c: fits[c].distance())
    detail = fits[closest].differences
    raise KwargsInferenceError(
        f"cannot tell {name}'s {option} from the checkpoint: its tensors fit none of "
        f"{', '.join(map(str, choices))} (closest {closest}: {len(detail)} difference{'s' * (len(detail) != 1)}, "
        f"e.g. {'; '.join(detail[:3])})",
        option,
        choices,
    )
