"""``config.pbtxt`` for Triton Inference Server, written from a model's manifest.

Each model folder of the repository (``<repository>/<model>/``) gets one ``config.pbtxt`` beside its
version folders, so the same repository the service reads can be mounted into a Triton server
(``DFS_RUNTIME=triton``). The manifest already says everything Triton needs (I/O names, dtypes,
shapes with the batch axis first, engine format); the text is generated, never hand-edited.

    python -m export.triton_config --repository model_repository              # KIND_GPU, onnxruntime
    python -m export.triton_config --repository model_repository --instance-kind cpu
    python -m export.triton_config --repository model_repository --python-backend /tmp/triton_repo

``--python-backend OUT`` writes a second repository for CPU deployments and tests: same model names,
``backend: "python"`` with this project's ``model.py`` (export/triton_python_backend/), which runs the
ONNX file beside it with ONNX Runtime. Triton builds on PyPI (nvidia-pytriton) have no onnxruntime
backend; that variant lets a real Triton server batch and serve the exported graphs anyway.

Triton's conventions used (model_configuration.md of triton-inference-server/server):
``max_batch_size > 0`` means the first axis of every input and output is the batch and ``dims`` leave it
out; an output that is the batch alone (our ``logit`` of shape ``[batch]``) is declared ``dims: [ 1 ]``
with ``reshape: { shape: [ ] }``, so clients see ``[N, 1]`` while the model produces ``[N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from export.errors import ExportError, ExportFileMissing, ExportInputError
from export.manifest import MANIFEST_NAME, Manifest, TensorInfo

CONFIG_NAME = "config.pbtxt"
PYTHON_BACKEND_SOURCE = Path(__file__).resolve().parent / "triton_python_backend" / "model.py"

# manifest dtype -> Triton's DataType enum (model_config.proto)
TRITON_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "float64": "TYPE_FP64",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
}
# Largest batch Triton forms per model when the manifest gives no limit (an ONNX graph exported with a
# dynamic batch axis takes any size): the GPU overlay's batch sizes (k8s/overlays/gpu).
DEFAULT_MAX_BATCH = {"clip": 32, "frame": 128}
DEFAULT_QUEUE_DELAY_US = 2000

InstanceKind = Literal["gpu", "cpu"]
Backend = Literal["auto", "python"]


@dataclass(frozen=True)
class TritonOptions:
    """How the generated configs deploy: where instances run, how Triton batches, which backend."""

    instance_kind: InstanceKind = "gpu"
    instance_count: int = 1
    max_batch_size: int | None = None  # None: the manifest's max_batch, else DEFAULT_MAX_BATCH by kind
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    backend: Backend = "auto"  # auto: onnxruntime for ONNX, tensorrt_plan for plans; python: model.py


def latest_version(model_dir: Path) -> Path | None:
    """The highest numbered version folder with a manifest (the one Triton's default policy serves)."""
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and (p / MANIFEST_NAME).is_file()]
    return max(versions, key=lambda p: int(p.name)) if versions else None


def max_batch_size(manifest: Manifest, options: TritonOptions) -> int:
    """The batch Triton may form: an explicit option, else the engine's own limit, else the kind's default.

    A TensorRT plan's profile ends at ``manifest.max_batch``; asking Triton for more would fail at run time.
    """
    limit = manifest.max_batch
    chosen = options.max_batch_size or limit or DEFAULT_MAX_BATCH.get(manifest.model_spec().kind, 64)
    if limit and chosen > limit:
        raise ExportInputError(f"{manifest.name}: max_batch_size {chosen} exceeds the engine's limit {limit}")
    if not manifest.dynamic_batch:
        raise ExportInputError(f"{manifest.name}: exported without a dynamic batch axis; Triton cannot batch it")
    return chosen


def _dims(tensor: TensorInfo) -> tuple[list[int], bool]:
    """Dims without the batch axis (symbolic axes become -1), and whether the batch was the whole shape."""
    if not tensor.shape or not isinstance(tensor.shape[0], str):
        raise ExportInputError(f"tensor {tensor.name}: first axis {tensor.shape[:1]} is not the dynamic batch axis")
    rest = [d if isinstance(d, int) else -1 for d in tensor.shape[1:]]
    return (rest, False) if rest else ([1], True)


def _tensor_block(tensor: TensorInfo) -> str:
    if tensor.dtype not in TRITON_DTYPES:
        raise ExportInputError(f"tensor {tensor.name}: dtype {tensor.dtype} has no Triton data type here")
    dims, reshape = _dims(tensor)
    lines = [
        "  {",
        f'    name: "{tensor.name}"',
        f"    data_type: {TRITON_DTYPES[tensor.dtype]}",
        f"    dims: [ {', '.join(str(d) for d in dims)} ]",
    ]
    if reshape:
        lines.append("    reshape: { shape: [ ] }")
    lines.append("  }")
    return "\n".join(lines)


def _engine_line(manifest: Manifest, options: TritonOptions) -> str:
    if options.backend == "python":
        if manifest.format != "onnx":
            raise ExportInputError(
                f"{manifest.name} v{manifest.version}: the python backend runs ONNX files, not {manifest.format}"
            )
        return 'backend: "python"'
    if manifest.format == "tensorrt":
        return 'platform: "tensorrt_plan"'
    return 'backend: "onnxruntime"'


def render_config(manifest: Manifest, options: TritonOptions = TritonOptions()) -> str:
    """The ``config.pbtxt`` text for ``manifest`` (its model's latest version)."""
    kind = "KIND_GPU" if options.instance_kind == "gpu" else "KIND_CPU"
    sections = [
        f"# Generated by `python -m export.triton_config` from {manifest.name}/{manifest.version}/{MANIFEST_NAME}; "
        "do not edit (re-run it).",
        f'name: "{manifest.name}"',
        _engine_line(manifest, options),
        f"max_batch_size: {max_batch_size(manifest, options)}",
        "input [\n" + ",\n".join(_tensor_block(t) for t in manifest.inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor_block(t) for t in manifest.outputs) + "\n]",
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {options.max_queue_delay_us}\n}}",
        f"instance_group [\n  {{\n    count: {options.instance_count}\n    kind: {kind}\n  }}\n]",
    ]
    if manifest.format == "onnx" and options.backend != "python":
        # the onnxruntime backend's default file name, stated so a renamed file fails loudly
        sections.append(f'default_model_filename: "{manifest.file}"')
    if options.backend == "python":
        sections.append('parameters {\n  key: "onnx_file"\n  value: { string_value: "' + manifest.file + '" }\n}')
    return "\n".join(sections) + "\n"


def write_model_config(model_dir: Path, options: TritonOptions = TritonOptions()) -> Path:
    """Write ``<model_dir>/config.pbtxt`` for the model's latest version; returns its path."""
    folder = latest_version(model_dir)
    if folder is None:
        raise ExportFileMissing(f"{model_dir}: no version folder with a {MANIFEST_NAME}")
    path = model_dir / CONFIG_NAME
    path.write_text(render_config(Manifest.read(folder), options))
    return path


def model_dirs(repository: Path) -> list[Path]:
    """Every model folder of a repository (a folder holding a version with a manifest)."""
    if not repository.is_dir():
        raise ExportFileMissing(f"model repository {repository} does not exist")
    return [p for p in sorted(repository.iterdir()) if p.is_dir() and latest_version(p) is not None]


def write_repository_configs(repository: Path, options: TritonOptions = TritonOptions()) -> list[Path]:
    """A ``config.pbtxt`` for every model of ``repository``."""
    return [write_model_config(model_dir, options) for model_dir in model_dirs(repository)]


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard link (no second copy of tens of MB) where the file system allows, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_python_backend_repository(
    repository: Path, out: Path, options: TritonOptions = TritonOptions(instance_kind="cpu")
) -> list[Path]:
    """A Triton repository at ``out`` serving ``repository``'s latest ONNX versions via the python backend.

    Each model keeps its name and version number; its version folder holds this project's ``model.py``,
    the ONNX file and the manifest. ``out`` must not be ``repository`` itself (the configs differ).
    """
    if out.resolve() == repository.resolve():
        raise ExportInputError("--python-backend needs a folder of its own, not the repository it reads")
    options = TritonOptions(**{**options.__dict__, "backend": "python"})
    written = []
    for model_dir in model_dirs(repository):
        folder = latest_version(model_dir)
        if folder is None:  # model_dirs lists only models with a version folder
            raise ExportError(f"{model_dir} has no version folder with a manifest")
        manifest = Manifest.read(folder)
        target = out / model_dir.name / folder.name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        _link_or_copy(folder / manifest.file, target / manifest.file)
        shutil.copy2(folder / MANIFEST_NAME, target / MANIFEST_NAME)
        shutil.copy2(PYTHON_BACKEND_SOURCE, target / "model.py")
        config = out / model_dir.name / CONFIG_NAME
        config.write_text(render_config(manifest, options))
        written.append(config)
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.triton_config",
        description="Write Triton's config.pbtxt for every model of a repository, from the manifests.",
    )
    parser.add_argument("--repository", type=Path, default=Path("model_repository"), help="default: %(default)s")
    parser.add_argument(
        "--instance-kind",
        choices=["gpu", "cpu"],
        help="where Triton runs each model's instances (default: gpu; cpu with --python-backend)",
    )
    parser.add_argument("--instance-count", type=int, default=1, help="instances per model (default: %(default)s)")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        help="Triton's max_batch_size for every model "
        f"(default: the engine's limit, else {DEFAULT_MAX_BATCH['clip']} for clip models and "
        f"{DEFAULT_MAX_BATCH['frame']} for frame models)",
    )
    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=DEFAULT_QUEUE_DELAY_US,
        help="dynamic batching: how long Triton waits to fill a batch (default: %(default)s)",
    )
    parser.add_argument(
        "--python-backend",
        type=Path,
        metavar="OUT",
        help="instead, write a python-backend repository at OUT (CPU, ONNX Runtime inside Triton)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = TritonOptions(
        instance_kind=args.instance_kind or ("cpu" if args.python_backend else "gpu"),
        instance_count=args.instance_count,
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
    )
    try:
        if args.python_backend:
            written = write_python_backend_repository(args.repository, args.python_backend, options)
        else:
            written = write_repository_configs(args.repository, options)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
