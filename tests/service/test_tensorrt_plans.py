"""TensorRT plans beside their ONNX file: listed per (compute capability, TensorRT version), used
only where both match the machine, and on every other machine the ONNX file serves.

Building a real plan needs TensorRT and a GPU (tests/test_tensorrt.py, bench/gpu_check.sh). Here the
repository is a copy of the committed bundle's DCL version with two plans listed beside its real
ONNX file: one for an H200 (sm 9.0) and one whose file is missing. On this CPU machine the runtime
must serve the ONNX file through ONNX Runtime and say why the plans were not used.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import pytest

from export.manifest import Manifest, Plan, plan_file_name
from service.config import Settings
from service.pipeline.tensorrt_engine import plan_for_machine
from service.serving import Serving
from tests.conftest import REPO_ROOT

BUNDLED_DCL = REPO_ROOT / "model_repository" / "dcl" / "1"
H200 = {"gpu": "NVIDIA H200", "compute_capability": "9.0", "tensorrt": "10.13.0"}
L4 = {"gpu": "NVIDIA L4", "compute_capability": "8.9", "tensorrt": "10.13.0"}


def plan(identity: dict[str, str]) -> Plan:
    return Plan(
        file=plan_file_name(identity["compute_capability"], identity["tensorrt"]),
        compute_capability=identity["compute_capability"],
        tensorrt=identity["tensorrt"],
        gpu=identity["gpu"],
    )


@pytest.fixture()
def version_with_plans(tmp_path: Path) -> Path:
    folder = tmp_path / "repo" / "dcl" / "1"
    shutil.copytree(BUNDLED_DCL, folder)
    manifest = Manifest.read(folder).with_plan(plan(H200)).with_plan(plan(L4))
    manifest.write(folder)
    (folder / plan(H200).file).write_bytes(b"a plan only an H200 with TensorRT 10.13.0 could deserialize")
    return folder  # the L4 plan is listed, its file is not there


def test_plans_are_named_and_replaced_per_architecture_and_tensorrt_version() -> None:
    assert plan_file_name("9.0", "10.13.0") == "model.sm90.trt10.13.0.plan"
    manifest = Manifest.read(BUNDLED_DCL).with_plan(plan(H200)).with_plan(plan(L4))
    rebuilt = plan(H200).model_copy(update={"fp16": True})
    manifest = manifest.with_plan(rebuilt)
    assert [(p.compute_capability, p.fp16) for p in manifest.plans] == [("8.9", False), ("9.0", True)]
    assert manifest.plan_for("9.0", "10.13.0") == rebuilt
    assert manifest.plan_for("9.0", "10.12.0") is None, "another TensorRT version cannot load the plan"


def test_the_plan_for_this_machine_is_chosen_and_every_other_case_serves_onnx(
    version_with_plans: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = Manifest.read(version_with_plans)
    caplog.set_level(logging.INFO, logger="service.pipeline.tensorrt_engine")
    assert plan_for_machine(manifest, version_with_plans, H200) == plan(H200)
    assert plan_for_machine(manifest, version_with_plans, L4) is None
    assert "model.sm89.trt10.13.0.plan, which is missing; serving ONNX" in caplog.text
    assert plan_for_machine(manifest, version_with_plans, {**H200, "tensorrt": "10.14.0"}) is None
    assert (
        "no TensorRT plan for this machine (sm 9.0, TensorRT 10.14.0; plans: sm 9.0 / TensorRT 10.13.0" in caplog.text
    )
    assert plan_for_machine(manifest, version_with_plans, None) is None
    assert "not used (no TensorRT GPU here); serving ONNX" in caplog.text


def test_a_cpu_service_serves_the_onnx_file_beside_the_plans(
    version_with_plans: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repository = version_with_plans.parents[1]
    settings = Settings(model_repository=repository, device="cpu", face_detector="blazeface", runtime="onnxruntime")
    caplog.set_level(logging.INFO)

    async def served() -> tuple[str, Path]:
        serving = Serving(settings)
        await serving.load()
        try:
            assert serving.ready, serving.reason
            model = serving.models["dcl"]
            return model.runtime, serving._served_file(model.version)
        finally:
            await serving.close()

    engine, served_file = asyncio.run(served())
    assert engine.startswith("onnxruntime") and served_file.name == "model.onnx"
    assert "dcl: TensorRT plans for sm 9.0 / TensorRT 10.13.0, sm 8.9 / TensorRT 10.13.0 not used" in caplog.text
