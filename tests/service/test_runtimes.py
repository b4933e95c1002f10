"""Runtime choice: the exported ONNX engine and eager torch (the reference) agree on the same crops."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import torch

from export.__main__ import export_model
from export.manifest import Manifest
from models import create_model
from service.config import Settings
from service.pipeline.engines import normalize
from service.runtime import Runtime


def test_onnx_and_torch_runtimes_agree(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("advgame", variant="b0")
    checkpoint = tmp_path / "advgame.pt"
    torch.save({"model": "advgame", "model_kwargs": {"variant": "b0"}, "state_dict": model.state_dict()}, checkpoint)
    repository = tmp_path / "repo"
    export_model("advgame", repository, checkpoint=checkpoint, parity_batches=[1, 2])
    crops = np.random.default_rng(0).integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)

    results = {}
    for runtime in ("auto", "torch"):
        state = Runtime(Settings(model_repository=repository, runtime=runtime, device="cpu", face_detector="blazeface"))
        asyncio.run(state.load())
        assert state.ready, state.reason
        loaded = state.models["advgame"]
        results[runtime] = loaded.batcher.engine.run(normalize(loaded.spec, crops))
        assert loaded.runtime.startswith("onnxruntime:CPUExecutionProvider" if runtime == "auto" else "torch:cpu:fp32")
    np.testing.assert_allclose(results["auto"], results["torch"], atol=1e-4)


def test_torch_runtime_without_a_checkpoint_keeps_the_service_unhealthy(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    folder = export_model("pcl_i2g", repository, random_init=True, parity_batches=[1])
    assert Manifest.read(folder).untrained and Manifest.read(folder).source.path is None
    state = Runtime(Settings(model_repository=repository, runtime="torch", device="cpu", face_detector="blazeface"))
    asyncio.run(state.load())
    assert not state.ready and "DFS_RUNTIME=torch needs the source checkpoint" in state.reason
