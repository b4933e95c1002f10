"""Each frame method through training.train: two steps, finite losses, reload, resume, export, serve."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from training.train import main as train_main

pytestmark = pytest.mark.slow

SMALL = {
    "pcl_i2g": [],
    "dcl": ["--backbone", "tf_efficientnet_b0", "--queue-size", "64"],
    "lib": ["--backbone", "mobilenet"],
    "advgame": ["--variant", "b0", "--g-per-d", "1"],
}


@pytest.mark.parametrize("method", list(SMALL))
def test_two_steps_resume_export_serve(method: str, crops_copy: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["--method", method, "--data", str(crops_copy), "--output", str(run), "--batch-size", "4",
            "--max-steps", "2", "--workers", "0", "--val-fraction", "0", "--no-tensorboard", *SMALL[method]]
    assert train_main(args) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(v) for r in records for k, v in r.items() if k.startswith("loss"))
    checkpoint = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    assert checkpoint["model"] == method and checkpoint["step"] == 2 and checkpoint["spec"]["name"] == method

    resumed = [*args, "--resume", "auto"]
    resumed[resumed.index("--max-steps") + 1] = "3"
    assert train_main(resumed) == 0
    assert torch.load(run / "last.pt", map_location="cpu", weights_only=False)["step"] == 3

    from export.__main__ import export_model
    from service.pipeline.engines import OnnxEngine

    folder = export_model(method, tmp_path / "repo", checkpoint=run / "last.pt", parity_batches=[1, 2])
    engine = OnnxEngine(folder / "model.onnx", device="cpu")
    size = checkpoint["spec"]["input_size"]
    logits = engine.run(np.zeros((3, 3, size, size), np.float32))
    assert logits.shape == (3,) and np.isfinite(logits).all()
