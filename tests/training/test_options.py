"""Training options: every parsed option lands in one typed, frozen field, and checkpoints keep
the command line's keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from training.methods import METHOD_NAMES, method_class
from training.options import MethodOptions, TrainingOptions
from training.train import build_parser, parse_args


def _argv(method: str, tmp_path: Path, *extra: str) -> list[str]:
    return ["--method", method, "--data", str(tmp_path), "--output", str(tmp_path / "run"), *extra]


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_option_has_one_typed_field(method: str, tmp_path: Path) -> None:
    options = parse_args(_argv(method, tmp_path))
    assert isinstance(options.method_options, method_class(method).options_type)
    destinations = {a.dest for a in build_parser(method)._actions if a.dest != "help"}
    assert set(options.config()) == destinations | {"command"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.lr = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.method_options.degrade = 1.0  # type: ignore[misc]


def test_method_defaults_and_given_values(tmp_path: Path) -> None:
    options = parse_args(_argv("lib", tmp_path, "--mixup", "0.2", "--amp", "none", "--batch-size", "4"))
    assert (options.method_options.mixup, options.amp, options.batch_size) == (0.2, None, 4)
    assert options.epochs == method_class("lib").default_epochs and options.data == tmp_path
    assert options.command.endswith("--batch-size 4")
    method = method_class("lib")(options)
    assert method.options is options and method.method_options.mixup == 0.2


def test_an_option_without_a_field_is_refused(tmp_path: Path) -> None:
    """A method that declares an option its options type lacks must fail at parse time, not
    train with the option silently ignored."""
    namespace = build_parser("dcl").parse_args(_argv("dcl", tmp_path))
    namespace.command = "python -m training.train"
    with pytest.raises(TypeError, match="queue_size"):
        TrainingOptions.from_namespace(namespace, method_class("lib").options_type)


def test_a_method_refuses_another_methods_options(tmp_path: Path) -> None:
    options = parse_args(_argv("ftcn", tmp_path))
    with pytest.raises(TypeError, match="DclOptions"):
        method_class("dcl")(options)
    assert dataclasses.fields(MethodOptions) == ()
