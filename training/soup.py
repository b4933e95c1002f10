"""``python -m training.soup``: average the weights of several runs of one model into one checkpoint.

    python -m training.soup runs/lib_s0/best.pt runs/lib_s1/best.pt --output runs/lib_soup/best.pt

A "model soup" (Wortsman et al., 2022): runs fine-tuned from the same ImageNet weights with
different seeds (head initialisation, data order, augmentation, blends) stay in one basin of the
loss, so the mean of their weights is a network of its own, usually at least as good as either
run and steadier on data neither saw, at the inference cost of one. On a corpus of ~100 training
videos a run's ranking of unseen videos moves a lot with its seed; averaging several seeds is the
cheapest way this project has to buy that variance down without serving more networks.

Floating-point tensors (weights, BatchNorm running statistics) are averaged; integer buffers
(BatchNorm's ``num_batches_tracked``) are taken from the first run. The runs must be of the same
model with the same constructor options and input spec, or the averaged tensors mean nothing.
The written checkpoint exports like any other (``python -m export --checkpoint OUT``): its
``command`` is this soup's and ``metrics["soup"]`` lists the runs it averaged with their own
training commands. It holds no optimiser state, so it cannot be ``--resume``d.

Written here rather than taken from a library: averaging a state dict is a few lines, and what
matters is refusing runs that do not belong together, which needs this project's checkpoint type.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

import torch

from models.checkpoint import TrainingCheckpoint
from training.errors import TrainingFileMissing, TrainingInputError

log = logging.getLogger("training.soup")


def _same_network(first: TrainingCheckpoint, other: TrainingCheckpoint, name: str) -> None:
    """Refuse ``other`` unless it rebuilds the same network as ``first`` (model, options, spec, tensors)."""
    if other.model != first.model:
        raise TrainingInputError(f"{name} is a {other.model} checkpoint, the first is {first.model}")
    if other.model_kwargs != first.model_kwargs:
        raise TrainingInputError(
            f"{name} was built with {other.model_kwargs}, the first with {first.model_kwargs}: not the same network"
        )
    if (other.spec.to_dict() if other.spec else None) != (first.spec.to_dict() if first.spec else None):
        raise TrainingInputError(f"{name} has another input spec than the first")
    if other.state_dict.keys() != first.state_dict.keys():
        missing = sorted(set(first.state_dict) ^ set(other.state_dict))[:3]
        raise TrainingInputError(f"{name} holds other tensors than the first (e.g. {missing})")
    for key, tensor in first.state_dict.items():
        if tuple(other.state_dict[key].shape) != tuple(tensor.shape):
            raise TrainingInputError(
                f"{name}: {key} is {tuple(other.state_dict[key].shape)}, the first's {tuple(tensor.shape)}"
            )


def average_state_dicts(state_dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors (in float64, cast back); other tensors from the first."""
    averaged: dict[str, torch.Tensor] = {}
    for key, tensor in state_dicts[0].items():
        if tensor.is_floating_point():
            total = sum(state[key].double() for state in state_dicts)
            averaged[key] = (total / len(state_dicts)).to(tensor.dtype)
        else:
            averaged[key] = tensor.clone()
    return averaged


def make_soup(paths: list[Path], command: str | None = None) -> TrainingCheckpoint:
    """One checkpoint whose weights are the mean of ``paths``' (at least two runs of one network)."""
    if len(paths) < 2:
        raise TrainingInputError("a soup needs at least two checkpoints")
    runs: list[TrainingCheckpoint] = []
    for path in paths:
        if not path.is_file():
            raise TrainingFileMissing(f"no checkpoint at {path}")
        runs.append(TrainingCheckpoint.load(path))
    first = runs[0]
    for path, run in zip(paths[1:], runs[1:], strict=True):
        _same_network(first, run, str(path))
    members = [
        {"checkpoint": str(path), "command": run.command, "epoch": run.epoch, "best_val_auc": run.best_val_auc}
        for path, run in zip(paths, runs, strict=True)
    ]
    return TrainingCheckpoint(
        model=first.model,
        state_dict=average_state_dicts([run.state_dict for run in runs]),
        model_kwargs=dict(first.model_kwargs),
        spec=first.spec,
        config={**first.config, "soup_of": [str(p) for p in paths]},
        command=command,
        epoch=max(run.epoch for run in runs),
        step=sum(run.step for run in runs),
        metrics={"soup": {"members": members, "command": command}},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.soup", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoints", nargs="+", type=Path, help="two or more checkpoints of one model")
    parser.add_argument("--output", required=True, type=Path, help="where to write the averaged checkpoint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = "python -m training.soup " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        soup = make_soup(args.checkpoints, command)
    except (TrainingInputError, TrainingFileMissing) as exc:
        parser.exit(2, f"python -m training.soup: error: {exc}\n")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    soup.save(args.output)
    log.info("averaged %d %s runs into %s", len(args.checkpoints), soup.model, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
