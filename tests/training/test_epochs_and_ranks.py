"""Randomness across epochs and worker processes, and agreement of DDP ranks on everything they train.

Two ways a training run silently loses its augmentation or its replicas' agreement, both invisible
in a loss curve: data-loader workers that keep epoch 0's copy of the dataset (so every epoch repeats
the same blends and crops), and state trained beside the DDP module (generators, loss weights,
queues) that drifts apart per rank.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT
from training.data import load_index
from training.loop import start_epoch, train_loader
from training.methods import method_class
from training.train import parse_args


def method_datasets(method: str, crops: Path, tmp_path: Path, *extra: str):  # noqa: ANN201 - the method's datasets
    args = parse_args(
        ["--method", method, "--data", str(crops), "--output", str(tmp_path), "--fakes", "blended", *extra]
    )
    return method_class(method)(args).datasets(load_index(crops), [])[0]


def fingerprints(images: torch.Tensor) -> set[float]:
    return {round(float(image.double().sum()), 3) for image in images}


@pytest.mark.parametrize(("method", "extra"), [("pcl_i2g", []), ("dcl", ["--backbone", "tf_efficientnet_b0"])])
def test_each_epoch_draws_new_samples_in_worker_processes(
    method: str, extra: list[str], crops_dataset: Path, tmp_path: Path
) -> None:
    dataset = method_datasets(method, crops_dataset, tmp_path, *extra)
    loader = train_loader(dataset, batch_size=4, workers=2, rank=0, world=1, seed=0)

    def expected(epoch: int) -> set[float]:  # what the main process draws for every index at this epoch
        dataset.set_epoch(epoch)
        return fingerprints(torch.stack([dataset[i].image for i in range(len(dataset))]))

    def through_workers(epoch: int) -> set[float]:
        start_epoch(loader, epoch)
        return set().union(*(fingerprints(batch["image"]) for batch in loader))

    epoch0, epoch1 = expected(0), expected(1)
    assert len(epoch0 & epoch1) < len(epoch0) // 2, "set_epoch must change the augmentations"
    seen0, seen1 = through_workers(0), through_workers(1)
    assert seen0 and seen0 <= epoch0
    assert seen1 <= epoch1, "the workers drew epoch 1 with an older copy of the dataset"
    assert through_workers(0) == seen0, "an epoch is reproducible from (seed, epoch)"


def test_blended_clips_forward_the_epoch(crops_dataset: Path, tmp_path: Path) -> None:
    dataset = method_datasets("ftcn", crops_dataset, tmp_path)
    dataset.set_epoch(3)
    assert dataset.epoch == dataset.clips.epoch == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("pcl_i2g", []),
        ("advgame", ["--variant", "b0", "--g-per-d", "1"]),  # generators trained beside the detector
        ("lib", ["--backbone", "mobilenet"]),  # automatic loss weights
        ("dcl", ["--backbone", "tf_efficientnet_b0", "--queue-size", "16"]),  # key encoder, prototypes, queues
    ],
)
def test_ddp_ranks_agree_on_model_and_method_state(
    method: str, extra: list[str], crops_copy: Path, tmp_path: Path
) -> None:
    run = tmp_path / "ddp"
    port = 29533 + ["pcl_i2g", "advgame", "lib", "dcl"].index(method)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(port),
        "-m",
        "training.train",
        "--method",
        method,
        "--data",
        str(crops_copy),
        "--output",
        str(run),
        "--fakes",
        "blended",
        "--batch-size",
        "2",
        "--max-steps",
        "2",
        "--workers",
        "0",
        "--val-fraction",
        "0",
        "--no-tensorboard",
        *extra,
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    digests = [(run / f"params_rank{r}.txt").read_text() for r in (0, 1)]
    assert digests[0] == digests[1], f"ranks disagree: {digests}"
    if method != "pcl_i2g":  # the method's own trained state is part of what must agree
        assert "method 0.0000000000e+00" not in digests[0]
    assert (run / "last.pt").is_file()
