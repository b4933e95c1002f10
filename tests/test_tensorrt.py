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
    from export.tensorrt import TensorRTEngine, build_engine, check_compatible

    onnx_folder = export_model("ftcn", tmp_path, random_init=True)
    plan_folder = build_engine(onnx_folder, fp16=False, max_batch=4, samples=2)
    manifest = Manifest.read(plan_folder)
    assert manifest.format == "tensorrt" and manifest.parity.max_abs_diff_prob <= manifest.parity.tolerance_prob
    check_compatible(manifest)
    engine = TensorRTEngine((plan_folder / "model.plan").read_bytes(), max_batch=4)
    out = engine.run(np.zeros((3, 3, 32, 224, 224), np.float32))
    assert out.shape == (3,) and np.isfinite(out).all()
    stale = manifest.model_copy(update={"tensorrt": {**manifest.tensorrt, "tensorrt": "0.0"}})
    with pytest.raises(RuntimeError, match="rebuild"):
        check_compatible(stale)
