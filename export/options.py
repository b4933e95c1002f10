"""``--option key=value``: a detector's constructor options from the command line.

A reference checkpoint's architecture is normally read from its tensors (see
:func:`models.registry.resolve_model_kwargs`); an option fixes it instead (``variant=b3``), or sets
what tensors cannot show (``dropout=0.3``). Values are typed by the constructor's own signature
(its annotation, else its default), so ``num_regions=2`` arrives as an int and ``backbone=resnet18``
as a string, and a key the constructor does not take is refused with the list of those it does.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterable
from typing import Any

from export.errors import ExportInputError
from models.registry import check_model_options, constructor_parameters, get_entry

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ExportInputError(f"expected a boolean (true/false), got {text!r}")


def guess_value(text: str) -> Any:
    """An untyped option's value: bool, int, float or None when it reads as one, else the text."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _declared_type(name: str, parameter: inspect.Parameter) -> type | None:
    """The option's type: the factory's annotation when it is a plain bool/int/float/str, else the
    type of its default (``from __future__ import annotations`` leaves annotations as strings)."""
    try:
        hint = typing.get_type_hints(get_entry(name).factory).get(parameter.name)
    except (NameError, TypeError):
        hint = None
    if hint in (bool, int, float, str):
        return hint
    default = parameter.default
    if default is not inspect.Parameter.empty and type(default) in (bool, int, float, str):
        return type(default)
    return None


def convert_value(name: str, parameter: inspect.Parameter, text: str) -> Any:
    kind = _declared_type(name, parameter)
    try:
        if kind is bool:
            return parse_bool(text)
        if kind in (int, float):
            return kind(text)
    except ValueError as error:
        raise ExportInputError(
            f"--option {parameter.name}={text}: {name}'s {parameter.name} takes "
            f"{kind.__name__ if kind else 'a value'} ({error})"
        ) from None
    if kind is str:
        return text
    return guess_value(text)


def parse_model_options(name: str, pairs: Iterable[str] | None) -> dict[str, Any]:
    """``["variant=b3", "dropout=0.3"]`` -> ``{"variant": "b3", "dropout": 0.3}`` for model ``name``."""
    parameters = constructor_parameters(name)
    raw: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ExportInputError(f"--option expects KEY=VALUE, got {pair!r}")
        raw[key.strip()] = value.strip()
    check_model_options(name, raw)
    return {key: convert_value(name, parameters[key], value) for key, value in raw.items()}
