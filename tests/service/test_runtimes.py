"""Runtime choice: the exported ONNX engine and eager torch (the reference) agree on the same crops."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import torch

from export.__main__ import export_model
from export.manifest import Manifest
from models import create_model, get_spec
from service.config import Settings
from service.pipeline.engines import normalize
from service.serving import Serving


def test_onnx_and_torch_runtimes_agree(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("advgame", variant="b0")
    checkpoint = tmp_path / "advgame.pt"
    torch.save({"model": "advgame", "model_kwargs": {"variant": "b0"}, "state_dict": model.state_dict()}, checkpoint)
    repository = tmp_path / "repo"
    export_model("advgame", repository, checkpoint=checkpoint, parity_batches=[1, 2])
    crops = np.random.default_rng(0).integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)

    results = {}
    for runtime in ("onnxruntime", "torch"):
        state = Serving(Settings(model_repository=repository, runtime=runtime, device="cpu", face_detector="blazeface"))
        asyncio.run(state.load())
        assert state.ready, state.reason
        loaded = state.models["advgame"]
        results[runtime] = loaded.batcher.engine.run(normalize(loaded.spec, crops))
        assert loaded.runtime.startswith(
            "onnxruntime:CPUExecutionProvider" if runtime == "onnxruntime" else "torch:cpu:fp32"
        )
    np.testing.assert_allclose(results["onnxruntime"], results["torch"], atol=1e-4)


def test_torch_runtime_without_a_checkpoint_keeps_the_service_unhealthy(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    folder = export_model("pcl_i2g", repository, random_init=True, parity_batches=[1])
    assert Manifest.read(folder).untrained and Manifest.read(folder).source.path is None
    state = Serving(Settings(model_repository=repository, runtime="torch", device="cpu", face_detector="blazeface"))
    asyncio.run(state.load())
    assert not state.ready and "DFS_RUNTIME=torch needs the source checkpoint" in state.reason


def test_batch_buckets_are_powers_of_two_up_to_the_cap() -> None:
    from service.pipeline.engines import batch_bucket

    assert [batch_bucket(n, 64) for n in (1, 2, 3, 5, 8, 9, 33, 64)] == [1, 2, 4, 8, 8, 16, 64, 64]
    assert batch_bucket(6, 6) == 6 and batch_bucket(7, 6) == 7  # a cap that is no power of two, an oversize batch


def test_compiled_torch_engine_pads_to_buckets_and_matches_eager(tmp_path: Path) -> None:
    """torch.compile wiring and bucket padding, on the CPU with dynamo's eager backend (inductor and CUDA
    graphs are the GPU path; the padded rows must not leak into the results)."""
    from service.pipeline.engines import TorchEngine

    torch.manual_seed(0)
    model = create_model("advgame", variant="b0")
    checkpoint = tmp_path / "advgame.pt"
    torch.save({"model": "advgame", "model_kwargs": {"variant": "b0"}, "state_dict": model.state_dict()}, checkpoint)
    crops = np.random.default_rng(1).integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    batch = normalize(get_spec("advgame"), crops)
    eager = TorchEngine("advgame", checkpoint, device="cpu")
    compiled = TorchEngine(
        "advgame", checkpoint, device="cpu", compile_mode="default", compile_backend="eager", max_batch=8
    )
    assert compiled.runtime == "torch:cpu:fp32:compiled-default"
    compiled.warmup(batch.shape)  # buckets 1, 2, 4, 8
    expected = eager.run(batch)
    got = compiled.run(batch)  # 3 items run as a batch of 4
    assert got.shape == (3,)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(compiled.run(batch[:1]), expected[:1], atol=1e-5)


def test_onnx_cuda_provider_gets_a_bounded_arena() -> None:
    from service.pipeline.engines import onnx_providers

    available = {"CUDAExecutionProvider", "CPUExecutionProvider"}
    providers = onnx_providers("auto", gpu_memory_limit_mb=2048, available=available)
    assert providers[0] == (
        "CUDAExecutionProvider",
        {"gpu_mem_limit": 2048 << 20, "arena_extend_strategy": "kSameAsRequested"},
    )
    assert providers[-1] == "CPUExecutionProvider"
    assert onnx_providers("cpu", gpu_memory_limit_mb=2048, available=available) == ["CPUExecutionProvider"]
    assert onnx_providers("auto", available=available)[0] == ("CUDAExecutionProvider", {})
