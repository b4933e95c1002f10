"""One training run's configuration as a frozen, typed object.

``python -m training.train`` parses its command line with argparse (for ``--help`` and the
errors), then turns the ``Namespace`` into a :class:`TrainingOptions`: the loop's own options as
typed fields, and the method's options (its ``--help`` group) as that method's
:class:`MethodOptions` subclass. Nothing after parsing reads a ``Namespace``, so a misspelt option
is an ``AttributeError`` at the line that misspells it, not a ``getattr`` default that silently
trains something else, and no code can change a run's configuration half-way through it.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class MethodOptions:
    """A method's own options; each method subclasses it with one field per option its
    ``add_arguments`` declares, named as argparse names the destination (``--queue-size`` ->
    ``queue_size``). Defaults live in ``add_arguments`` (``--help`` shows them); the fields here
    only give their types."""


@dataclass(frozen=True)
class TrainingOptions:
    """The options every method shares: what the loop, the data split and the checkpoints read."""

    method: str
    data: Path
    output: Path
    epochs: int
    batch_size: int
    lr: float
    fakes: str  # "data", "blended" or "both"
    init: Path | None = None
    resume: str | None = None
    freeze_backbone: bool = False
    max_steps: int | None = None
    accumulate: int = 1
    amp: str | None = None  # None = fp32; "auto", "bf16" or "fp16"
    grad_clip: float | None = None
    workers: int = 2
    seed: int = 0
    init_seed: int | None = None  # seeds only the network's random initialisation (None: --seed does)
    val_fraction: float = 0.1
    tensorboard: bool = True
    channels_last: bool = False
    command: str | None = None  # the command line that made this run, for the checkpoint and RECIPES
    method_options: MethodOptions = field(default_factory=MethodOptions)

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace, method_options_type: type[MethodOptions]) -> TrainingOptions:
        """Split a parsed command line into the shared fields and the method's own.

        Every parsed option must land in exactly one field: an option a method declares but its
        options type does not hold would otherwise be parsed and then ignored.
        """
        values = vars(namespace)
        shared = {f.name for f in fields(cls)} - {"method_options"}
        own = {f.name for f in fields(method_options_type)}
        unplaced = sorted(set(values) - shared - own)
        if unplaced:
            raise TypeError(f"{method_options_type.__name__} has no field for the parsed option(s) {unplaced}")
        return cls(
            **{name: values[name] for name in shared if name in values},
            method_options=method_options_type(**{name: values[name] for name in own}),
        )

    def config(self) -> dict[str, Any]:
        """A flat, JSON-friendly copy (paths as text) for the checkpoint: the same keys as the
        command line's destinations, so checkpoints written before this type read alike."""
        flat = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "method_options"}
        flat |= asdict(self.method_options)
        return {key: str(value) if isinstance(value, Path) else value for key, value in flat.items()}


BLEND_SOURCES = ("other", "self", "mixed")


def add_blend_source_argument(group: argparse._ArgumentGroup) -> None:
    """``--blend-source``, which the frame methods and FTCN share (both make blended fakes)."""
    group.add_argument(
        "--blend-source",
        choices=BLEND_SOURCES,
        default="other",
        help="what a blended fake (--fakes blended/both) takes its face from: other = another identity's "
        "nearest face (I2G), self = an altered copy of the same face (self-blended images), mixed = "
        "either at random (default other)",
    )
