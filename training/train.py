"""``python -m training.train``: train or fine-tune one of the five detectors.

    python -m training.preprocess --input videos/ --output crops/
    python -m training.train --method ftcn --data crops/ --output runs/ftcn --init ftcn_tt.pth --freeze-backbone
    python -m export --model ftcn --checkpoint runs/ftcn/best.pt --out model_repository/

Multi-GPU / multi-node: ``torchrun --nproc-per-node 8 -m training.train ...`` (DDP; each rank
reads its shard; rank 0 validates and writes checkpoints).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from training.methods import METHOD_NAMES, method_class
from training.options import TrainingOptions


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``ArgumentDefaultsHelpFormatter`` without the defaults that mislead.

    The stock formatter appends "(default: X)" to every option with help text, which printed
    "(default: None)" for options whose default is decided later (the method's epochs, batch size,
    learning rate: their help says so), "(default: True)" for ``--no-tensorboard`` (the value of the
    ``tensorboard`` destination, i.e. the opposite of what the flag does) and "(default: False)" for
    every on/off flag. Real defaults (``--workers 2``) are still shown.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        is_flag = action.nargs == 0 and isinstance(action.const, bool)  # store_true / store_false
        if action.default is None or is_flag or "default" in text:
            return action.help
        return super()._get_help_string(action)


def build_parser(method: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description=(
            "Train a detector on crops made by `python -m training.preprocess`. Each method trains with its own "
            "losses (see training/methods/<method>.py, which cites the paper and reference implementation it "
            "follows). Checkpoints (last.pt, best.pt by validation "
            "video AUC) carry the model spec and this configuration, so `python -m export --checkpoint` needs "
            "nothing else. Run under torchrun for DDP on many GPUs or nodes."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--method", required=True, choices=METHOD_NAMES, help="which detector to train")
    parser.add_argument("--data", required=True, type=Path, help="output folder of training.preprocess (has index.csv)")
    parser.add_argument(
        "--output", required=True, type=Path, help="run folder: checkpoints, metrics.jsonl, tensorboard/"
    )
    parser.add_argument(
        "--init", type=Path, help="initial weights: our checkpoint or the reference layout (fine-tuning)"
    )
    parser.add_argument("--resume", help="checkpoint to resume, or 'auto' for OUTPUT/last.pt when present")
    parser.add_argument("--freeze-backbone", action="store_true", help="train only the head (fine-tuning)")
    parser.add_argument(
        "--fakes",
        choices=["data", "blended", "both"],
        default=None,
        help="fake class: the dataset's fakes, I2G blends made from its real faces on the fly, or "
        "both (default: blended for pcl_i2g, which needs the blend masks; data for the others)",
    )
    parser.add_argument("--epochs", type=int, help="epochs (default: the method's reference setting)")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (smoke runs)")
    parser.add_argument("--batch-size", type=int, help="per-process batch size (default: the method's)")
    parser.add_argument("--lr", type=float, help="learning rate (default: the method's)")
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimiser step")
    parser.add_argument(
        "--amp",
        choices=["auto", "none", "bf16", "fp16"],
        default="auto",
        help="autocast dtype: auto = bf16 on CUDA and on a CPU with bf16 units (AVX-512 BF16 / AMX: 1.1-1.9x "
        "the samples/s there, bench/train.py), fp32 on other CPUs; none = fp32 everywhere",
    )
    parser.add_argument("--grad-clip", type=float, default=None, help="clip gradient norm to this value")
    parser.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of initialisation, data order, augmentation and blends"
    )
    parser.add_argument(
        "--init-seed",
        type=int,
        metavar="SEED",
        help="seed the network's random initialisation (heads, anything not loaded from ImageNet) on its own, "
        "so runs of different --seed start from the same weights, as runs averaged by training.soup must",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="identities held out for validation when the data has no val split",
    )
    parser.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", help="skip TensorBoard logs")
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="channels_last memory format for frame models (faster with cuDNN and with oneDNN on a CPU)",
    )
    if method:
        method_class(method).add_arguments(parser)
    return parser


def parse_args(argv: list[str]) -> TrainingOptions:
    """The command line as typed options, with the method's defaults filled in where none was given."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--method", choices=METHOD_NAMES)
    known, _ = probe.parse_known_args(argv)
    args = build_parser(known.method).parse_args(argv)
    cls = method_class(args.method)
    args.epochs = args.epochs or cls.default_epochs
    args.batch_size = args.batch_size or cls.default_batch_size
    args.lr = args.lr or cls.default_lr
    args.fakes = args.fakes or cls.default_fakes
    args.amp = None if args.amp == "none" else args.amp
    args.command = "python -m training.train " + shlex.join(argv)
    return TrainingOptions.from_namespace(args, cls.options_type)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from training.loop import train

    final = train(method_class(options.method)(options), options)
    print(final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
