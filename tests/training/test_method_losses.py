"""Loss details of single methods that a loss curve would not reveal."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.train import parse_args


@pytest.mark.parametrize(("method", "fakes"), [("pcl_i2g", "blended"), ("dcl", "data"), ("ftcn", "data")])
def test_fake_class_defaults_per_method(method: str, fakes: str, tmp_path: Path) -> None:
    args = parse_args(["--method", method, "--data", str(tmp_path), "--output", str(tmp_path)])
    assert args.fakes == fakes
    explicit = parse_args(["--method", method, "--data", str(tmp_path), "--output", str(tmp_path), "--fakes", "both"])
    assert explicit.fakes == "both"


def test_pcl_volume_loss_keeps_a_gradient_where_the_sigmoid_saturates() -> None:
    from models.pcl_i2g import PCLI2G
    from training.methods.pcl_i2g import PclTrainForward, consistency_target

    model = PCLI2G().eval()
    images = torch.randn(1, 3, 256, 256)
    _, probabilities = model.forward_train(images)
    _, logits = PclTrainForward(model)(images)
    torch.testing.assert_close(torch.sigmoid(logits), probabilities)

    # a confidently wrong pair: the sigmoid rounds to 1 in bf16, the target says "inconsistent"
    wrong = torch.full((1, 16, 16, 16, 16), 12.0, requires_grad=True)
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1.0  # half forged: pairs across the border have target 0
    target = consistency_target(mask)
    saturated = torch.sigmoid(wrong.bfloat16()).float()
    assert saturated.max() == 1.0
    torch.nn.functional.binary_cross_entropy_with_logits(wrong, target).backward()
    assert wrong.grad is not None and wrong.grad.abs().max() > 1e-5


def test_dcl_intra_loss_counts_only_pixels_above_the_reference_threshold_as_forged() -> None:
    from training.methods.dcl import MASK_THRESHOLD, intra_loss

    feature_map = torch.randn(1, 8, 10, 10, requires_grad=True)
    fake = torch.ones(1, dtype=torch.long)
    soft_edge = torch.full((1, 80, 80), MASK_THRESHOLD * 0.9)  # an I2G blend's faint halo only
    assert float(intra_loss(feature_map, soft_edge, fake).detach()) == 0.0, "no forged positions: the fake is skipped"
    half = torch.zeros(1, 80, 80)
    half[:, :40] = 1.0
    loss = intra_loss(feature_map, half, fake)
    loss.backward()
    assert float(loss.detach()) != 0.0 and feature_map.grad is not None and feature_map.grad.abs().sum() > 0


def test_ftcn_both_fakes_trains_on_dataset_fakes_and_blends(crops_dataset: Path, tmp_path: Path) -> None:
    from training.data import load_index
    from training.methods import method_class

    def train_set(fakes: str):  # noqa: ANN202 - the method's training dataset
        args = parse_args(
            [
                "--method",
                "ftcn",
                "--data",
                str(crops_dataset),
                "--output",
                str(tmp_path),
                "--fakes",
                fakes,
                "--clips-per-track",
                "1",
            ]
        )
        return method_class("ftcn")(args).datasets(load_index(crops_dataset), [])[0]

    data, blended, both = train_set("data"), train_set("blended"), train_set("both")
    assert len(both) == len(data) + len(blended)
    both.set_epoch(2)
    assert all(part.epoch == 2 for part in both.datasets)
