"""FTCN through training.train: two optimiser steps, checkpoint reload, resume, export, serve."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from training.train import main as train_main

pytestmark = pytest.mark.slow


def test_ftcn_two_steps_resume_export_serve(crops_copy: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [
        "--method",
        "ftcn",
        "--data",
        str(crops_copy),
        "--output",
        str(run),
        "--batch-size",
        "1",
        "--max-steps",
        "2",
        "--workers",
        "0",
        "--clip-stride",
        "4",
        "--clips-per-track",
        "1",
        "--val-fraction",
        "0",
        "--no-tensorboard",
        "--freeze-backbone",
    ]
    assert train_main(args) == 0
    checkpoint = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    assert checkpoint["model"] == "ftcn" and checkpoint["step"] == 2
    assert checkpoint["spec"]["num_frames"] == 32 and "lr" in checkpoint["config"]
    losses = [line for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(math.isfinite(float(line.split('"loss": ')[1].split(",")[0])) for line in losses)
    # --freeze-backbone: the backbone keeps its (seeded) initial weights, the head moved
    from models import create_model

    torch.manual_seed(0)
    initial = create_model("ftcn").state_dict()
    trained = checkpoint["state_dict"]
    assert torch.equal(
        initial["resnet.s2.pathway0_res0.branch2.a.weight"], trained["resnet.s2.pathway0_res0.branch2.a.weight"]
    )
    assert not torch.equal(
        initial["resnet.head.time_T.mlp_head.1.weight"], trained["resnet.head.time_T.mlp_head.1.weight"]
    )

    # resume continues from step 2 up to the new limit
    resumed = [*args, "--resume", "auto"]
    resumed[resumed.index("--max-steps") + 1] = "3"
    assert train_main(resumed) == 0
    assert torch.load(run / "last.pt", map_location="cpu", weights_only=False)["step"] == 3

    from export.__main__ import export_model
    from export.manifest import Manifest
    from service.pipeline.engines import OnnxEngine
    from training.evaluate import main as evaluate_main

    assert (
        evaluate_main(["--checkpoint", str(run / "last.pt"), "--data", str(crops_copy), "--split", "train", "--write"])
        == 0
    )
    calibration = torch.load(run / "last.pt", map_location="cpu", weights_only=False)["calibration"]
    assert calibration["temperature"] > 0 and 0 < calibration["threshold"] < 1
    assert (run / "last_roc_train.png").is_file()

    folder = export_model("ftcn", tmp_path / "repo", checkpoint=run / "last.pt", parity_batches=[1])
    manifest = Manifest.read(folder)
    assert manifest.calibration.temperature == pytest.approx(calibration["temperature"])
    assert manifest.source.layout == "ours" and not manifest.untrained
    engine = OnnxEngine(folder / "model.onnx", device="cpu")
    logits = engine.run(np.zeros((1, 3, 32, 224, 224), np.float32))
    assert logits.shape == (1,) and np.isfinite(logits).all()
