"""Triton's ``config.pbtxt``: generated from the manifests, valid for Triton's schema, true to the ONNX graphs.

The schema check parses every generated file with Triton's own ``ModelConfig`` protobuf
(``tritonclient.grpc.model_config_pb2``, in the Triton venv: its protobuf 6 clashes with the project's),
so a misspelt field or a wrong enum fails here, not on a GPU node.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import onnx
import pytest

from bench.triton_server import TRITON_VENV, pytriton_site
from export.manifest import Manifest
from export.triton_config import (
    CONFIG_NAME,
    TritonOptions,
    main,
    render_config,
    write_python_backend_repository,
)
from service.pipeline.triton_engine import parse_triton_url

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE = REPO_ROOT / "model_repository"
ONNX_DTYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}

_PARSE = """
import json, sys
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
out = {}
for path in sys.argv[1:]:
    config = text_format.Parse(open(path).read(), model_config_pb2.ModelConfig())
    out[path] = json_format.MessageToDict(config, preserving_proto_field_name=True)
print(json.dumps(out))
"""


def parse_with_triton_schema(paths: list[Path]) -> dict[str, dict]:
    """Each file parsed as Triton's ModelConfig message (strict: unknown fields and enum values fail)."""
    if pytriton_site() is None:
        pytest.skip(f"Triton's model_config protobuf comes with nvidia-pytriton in {TRITON_VENV} (scripts/setup.sh)")
    result = subprocess.run(
        [str(TRITON_VENV / "bin" / "python"), "-c", _PARSE, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def onnx_io(path: Path) -> tuple[list[tuple[str, str, list]], list[tuple[str, str, list]]]:
    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(values: list) -> list[tuple[str, str, list]]:
        return [
            (
                v.name,
                ONNX_DTYPES[v.type.tensor_type.elem_type],
                [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim],
            )
            for v in values
        ]

    return describe(graph.input), describe(graph.output)


def test_committed_bundle_configs_are_current_and_match_the_onnx_graphs(tmp_path: Path) -> None:
    model_dirs = sorted(p for p in BUNDLE.iterdir() if p.is_dir())
    assert [p.name for p in model_dirs] == ["advgame", "dcl", "ftcn", "lib", "pcl_i2g"]
    for model_dir in model_dirs:
        # committed text == what the generator writes now (re-run `python -m export.triton_config` if not)
        manifest = Manifest.read(model_dir / "1")
        assert (model_dir / CONFIG_NAME).read_text() == render_config(manifest), model_dir.name
    parsed = parse_with_triton_schema([d / CONFIG_NAME for d in model_dirs])
    for model_dir in model_dirs:
        config = parsed[str(model_dir / CONFIG_NAME)]
        (graph_in,), graph_outs = onnx_io(model_dir / "1" / "model.onnx")
        graph_out = graph_outs[0]  # logit first; the bundle's PCL-I2G adds its patch map (--heatmap)
        assert config["name"] == model_dir.name and config["backend"] == "onnxruntime"
        assert "platform" not in config
        assert int(config["max_batch_size"]) == (32 if model_dir.name == "ftcn" else 128)
        (inp,), out = config["input"], config["output"][0]
        assert len(config["output"]) == len(graph_outs) == (2 if model_dir.name == "pcl_i2g" else 1)
        for extra, graph_extra in zip(config["output"][1:], graph_outs[1:], strict=True):
            assert (extra["name"], extra["data_type"], [int(d) for d in extra["dims"]]) == (
                graph_extra[0],
                graph_extra[1],
                graph_extra[2][1:],
            )
            assert "reshape" not in extra
        # batch axis symbolic in the graph, left out of dims; the rest exactly the graph's
        assert isinstance(graph_in[2][0], str) and isinstance(graph_out[2][0], str)
        assert (inp["name"], inp["data_type"], [int(d) for d in inp["dims"]]) == (
            graph_in[0],
            graph_in[1],
            graph_in[2][1:],
        )
        # a [batch] output is declared [1] reshaped to [] (Triton's convention for batch-only tensors)
        assert graph_out[2][1:] == []
        assert (out["name"], out["data_type"], [int(d) for d in out["dims"]]) == (graph_out[0], graph_out[1], [1])
        assert out["reshape"] == {}  # shape: [ ] -> an empty ModelTensorReshape
        assert "reshape:" in (model_dir / CONFIG_NAME).read_text()
        assert "reshape" not in inp
        assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 2000
        assert config["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]
        assert config["default_model_filename"] == "model.onnx"


def test_options_cpu_instances_batch_size_and_tensorrt_plans(tmp_path: Path) -> None:
    manifest = Manifest.read(BUNDLE / "dcl" / "1")
    plan = manifest.model_copy(update={"format": "tensorrt", "file": "model.plan", "max_batch": 16})
    paths = {
        "cpu": TritonOptions(instance_kind="cpu", instance_count=2, max_batch_size=8, max_queue_delay_us=500),
        "plan": TritonOptions(),
    }
    (tmp_path / "cpu.pbtxt").write_text(render_config(manifest, paths["cpu"]))
    (tmp_path / "plan.pbtxt").write_text(render_config(plan, paths["plan"]))
    parsed = parse_with_triton_schema([tmp_path / "cpu.pbtxt", tmp_path / "plan.pbtxt"])
    cpu, trt = parsed[str(tmp_path / "cpu.pbtxt")], parsed[str(tmp_path / "plan.pbtxt")]
    assert cpu["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}] and int(cpu["max_batch_size"]) == 8
    assert int(cpu["dynamic_batching"]["max_queue_delay_microseconds"]) == 500
    # a plan: platform tensorrt_plan (not a backend), its profile's max batch, Triton's default file name
    assert trt["platform"] == "tensorrt_plan" and "backend" not in trt and int(trt["max_batch_size"]) == 16
    assert "default_model_filename" not in trt
    with pytest.raises(ValueError, match="exceeds the engine's limit 16"):
        render_config(plan, TritonOptions(max_batch_size=64))
    with pytest.raises(ValueError, match="python backend runs ONNX"):
        render_config(plan, TritonOptions(backend="python"))
    with pytest.raises(ValueError, match="dynamic batch"):
        render_config(manifest.model_copy(update={"dynamic_batch": False}))


def test_cli_writes_every_model_and_the_python_backend_variant(tmp_path: Path) -> None:
    import shutil

    repository = tmp_path / "repo"
    shutil.copytree(BUNDLE, repository, ignore=shutil.ignore_patterns(CONFIG_NAME))
    assert main(["--repository", str(repository), "--instance-kind", "cpu"]) == 0
    assert sorted(p.parent.name for p in repository.glob(f"*/{CONFIG_NAME}")) == [
        "advgame",
        "dcl",
        "ftcn",
        "lib",
        "pcl_i2g",
    ]
    assert "kind: KIND_CPU" in (repository / "ftcn" / CONFIG_NAME).read_text()
    variant = tmp_path / "python"
    written = write_python_backend_repository(repository, variant, TritonOptions(instance_kind="cpu", max_batch_size=4))
    assert len(written) == 5
    for config_path in written:
        folder = config_path.parent / "1"
        assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.onnx", "model.py"]
        assert (folder / "model.onnx").read_bytes() == (
            repository / config_path.parent.name / "1" / "model.onnx"
        ).read_bytes()
    parsed = parse_with_triton_schema(written)
    for config in parsed.values():
        assert config["backend"] == "python" and config["parameters"] == {"onnx_file": {"string_value": "model.onnx"}}
        assert config["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}] and int(config["max_batch_size"]) == 4
    with pytest.raises(ValueError, match="folder of its own"):
        write_python_backend_repository(repository, repository)


def test_triton_urls_http_only_and_grpc_refused_with_the_reason() -> None:
    assert parse_triton_url("http://triton:8000") == ("triton:8000", False)
    assert parse_triton_url("https://triton.example:443/") == ("triton.example:443", True)
    with pytest.raises(ValueError, match="protobuf >= 6.30.*mediapipe"):
        parse_triton_url("grpc://triton:8001")
    for bad in ("", "triton:8000", "ftp://x", "http://"):
        with pytest.raises(ValueError):
            parse_triton_url(bad)
