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
    args = [
        "--method",
        method,
        "--data",
        str(crops_copy),
        "--output",
        str(run),
        "--batch-size",
        "4",
        "--max-steps",
        "2",
        "--workers",
        "0",
        "--val-fraction",
        "0",
        "--no-tensorboard",
        *SMALL[method],
    ]
    assert train_main(args) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(v) for r in records for k, v in r.items() if k.startswith("loss"))
    # per-step wall time and sample count: what bench/train.py turns into samples/s
    assert all(r["step_s"] > 0 and 0 < r["step_samples"] <= 4 for r in records)
    checkpoint = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    assert checkpoint["model"] == method and checkpoint["step"] == 2 and checkpoint["spec"]["name"] == method

    resumed = [*args, "--resume", "auto"]
    resumed[resumed.index("--max-steps") + 1] = "3"
    assert train_main(resumed) == 0
    assert torch.load(run / "last.pt", map_location="cpu", weights_only=False)["step"] == 3

    from export.__main__ import export_model
    from service.pipeline.engines import OnnxEngine

    folder = export_model(method, tmp_path / "repo", checkpoint=run / "last.pt", parity_batches=[1, 2])
    from export.manifest import Manifest

    # the manifest can rebuild the same architecture without the checkpoint (torch runtime, benchmarks)
    assert Manifest.read(folder).source.model_kwargs == checkpoint["model_kwargs"]
    engine = OnnxEngine(folder / "model.onnx", device="cpu")
    size = checkpoint["spec"]["input_size"]
    logits = engine.run(np.zeros((3, 3, size, size), np.float32))
    assert logits.shape == (3,) and np.isfinite(logits).all()


def test_dcl_mobilenetv2_from_imagenet_file_exports_fp16_weights(crops_copy: Path, tmp_path: Path) -> None:
    """The default bundle's frame recipe: torchvision-layout ImageNet file, 224 px, fp16 ONNX weights."""
    import onnx
    import torchvision

    from export.__main__ import export_model
    from export.manifest import Manifest
    from service.pipeline.engines import OnnxEngine

    torch.manual_seed(0)
    weights = tmp_path / "mobilenet_v2.pth"
    imagenet = torchvision.models.mobilenet_v2()
    torch.save(imagenet.state_dict(), weights)
    run = tmp_path / "run"
    assert (
        train_main(
            [
                "--method",
                "dcl",
                "--backbone",
                "mobilenetv2_100",
                "--backbone-weights",
                str(weights),
                "--queue-size",
                "64",
                "--data",
                str(crops_copy),
                "--output",
                str(run),
                "--fakes",
                "blended",
                "--batch-size",
                "4",
                "--max-steps",
                "1",
                "--workers",
                "0",
                "--val-fraction",
                "0",
                "--no-tensorboard",
            ]
        )
        == 0
    )
    checkpoint = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    assert checkpoint["spec"]["input_size"] == 224 and checkpoint["model_kwargs"] == {"backbone": "mobilenetv2_100"}
    # one Adam step at lr 2e-4 moves the stem only slightly away from the file's weights
    stem = checkpoint["state_dict"]["encoder.conv_stem.weight"]
    assert (stem - imagenet.features[0][0].weight).abs().max() < 0.01

    full = export_model("dcl", tmp_path / "fp32", checkpoint=run / "last.pt", parity_batches=[1])
    half = export_model("dcl", tmp_path / "fp16", checkpoint=run / "last.pt", parity_batches=[1], fp16_weights=True)
    size_full, size_half = (full / "model.onnx").stat().st_size, (half / "model.onnx").stat().st_size
    assert size_half < 0.6 * size_full
    manifest = Manifest.read(half)
    assert manifest.weights_dtype == "float16" and manifest.spec["input_size"] == 224
    assert manifest.parity.max_abs_diff_prob <= manifest.parity.tolerance_prob
    graph = onnx.load(str(half / "model.onnx")).graph
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)
    images = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    a = OnnxEngine(full / "model.onnx", device="cpu").run(images)
    b = OnnxEngine(half / "model.onnx", device="cpu").run(images)
    assert a.dtype == b.dtype == np.float32 and np.abs(a - b).max() < 0.05
