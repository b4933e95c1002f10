"""A run stopped and resumed ends with the very weights of the run that never stopped.

That is what "resume from the last checkpoint" has to mean for a user whose job is preempted:
the stop falls mid-epoch (``--max-steps``), the epoch holds an odd number of micro-batches so a
partial accumulation window sits at its end, and the run crosses into the next epoch, where
order and augmentations are drawn anew.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.train import main as train_main

pytestmark = pytest.mark.slow


def micro_batches_per_epoch(crops: Path, tmp_path: Path, batch_size: int) -> int:
    from training.data import load_index
    from training.methods import method_class
    from training.train import parse_args

    args = parse_args(
        ["--method", "pcl_i2g", "--data", str(crops), "--output", str(tmp_path / "probe"), "--fakes", "data"]
    )
    dataset = method_class("pcl_i2g")(args).datasets(load_index(crops), [])[0]
    return len(dataset) // batch_size  # drop_last


def test_stopped_and_resumed_run_matches_the_uninterrupted_run(crops_copy: Path, tmp_path: Path) -> None:
    batch = next(b for b in range(6, 16) if micro_batches_per_epoch(crops_copy, tmp_path, b) % 2 == 1)
    per_epoch = micro_batches_per_epoch(crops_copy, tmp_path, batch)
    steps = per_epoch // 2 + 2  # into the second epoch
    common = [
        "--method",
        "pcl_i2g",
        "--data",
        str(crops_copy),
        "--fakes",
        "data",
        "--batch-size",
        str(batch),
        "--accumulate",
        "2",
        "--workers",
        "0",
        "--val-fraction",
        "0",
        "--no-tensorboard",
        "--lr",
        "1e-3",
    ]

    straight = tmp_path / "straight"
    assert train_main([*common, "--output", str(straight), "--max-steps", str(steps)]) == 0
    interrupted = tmp_path / "interrupted"
    assert train_main([*common, "--output", str(interrupted), "--max-steps", "2"]) == 0
    stopped = torch.load(interrupted / "last.pt", map_location="cpu", weights_only=False)
    assert (stopped["epoch"], stopped["batches_done"]) == (0, 4), "stopped mid-epoch, 4 micro-batches in"
    assert train_main([*common, "--output", str(interrupted), "--max-steps", str(steps), "--resume", "auto"]) == 0

    records = [json.loads(line) for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, steps + 1)), "each step logged once"
    assert max(r["epoch"] for r in records) == 1
    final = torch.load(interrupted / "last.pt", map_location="cpu", weights_only=False)
    reference = torch.load(straight / "last.pt", map_location="cpu", weights_only=False)
    assert final["step"] == reference["step"] == steps
    for name, tensor in reference["state_dict"].items():
        assert torch.equal(final["state_dict"][name], tensor), f"{name} differs after resume"
