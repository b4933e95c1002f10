"""The TensorRT path: runs where `tensorrt` imports and a GPU is visible, skips with the reason elsewhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.__main__ import main as export_main


def test_export_cli_explains_how_to_get_tensorrt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        code = export_main(["--model", "ftcn", "--random-init", "--out", str(tmp_path), "--tensorrt"])
        assert code == 2
        assert "pypi.nvidia.com" in capsys.readouterr().err
        assert not any(tmp_path.iterdir()), "nothing is exported when TensorRT is missing"
    else:
        pytest.skip("tensorrt is installed here; the GPU test below covers it")


@pytest.mark.tensorrt
def test_tensorrt_engine_matches_onnxruntime(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is served only by NVIDIA's package index")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    from export.__main__ import export_model
    from export.manifest import Manifest
    from export.tensorrt import build_engine
    from service.pipeline.tensorrt_engine import (
        PlanMismatch,
        TensorRTEngine,
        check_compatible,
        gpu_identity,
        plan_for_machine,
    )

    onnx_folder = export_model("ftcn", tmp_path, random_init=True)
    plan_path = build_engine(onnx_folder, fp16=False, max_batch=4, samples=2)
    assert plan_path.parent == onnx_folder, "the plan lies beside its ONNX file, in the same version"
    manifest = Manifest.read(onnx_folder)
    assert manifest.format == "onnx" and len(manifest.plans) == 1
    plan = plan_for_machine(manifest, onnx_folder, gpu_identity())
    assert plan is not None and plan.file == plan_path.name
    assert plan.parity.max_abs_diff_prob <= plan.parity.tolerance_prob
    engine = TensorRTEngine(plan_path.read_bytes(), max_batch=4)
    out = engine.run(np.zeros((3, 3, 32, 224, 224), np.float32))
    assert out.shape == (3,) and np.isfinite(out).all()
    older = manifest.model_copy(update={"format": "tensorrt", "tensorrt": {"gpu": "another GPU", "tensorrt": "0.0"}})
    with pytest.raises(PlanMismatch, match="rebuild"):
        check_compatible(older)
