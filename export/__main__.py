"""``python -m export``: checkpoint -> ONNX (-> TensorRT) + manifest in a model repository.

    python -m export --model ftcn --checkpoint ftcn_tt.pth --out model_repository/
    python -m export --model ftcn --random-init --out model_repository/   # untrained demo engine
    python -m export --model advgame --checkpoint adv_b3.pth --option variant=b3

A reference checkpoint does not say which variant of the architecture it holds; export reads it
from the tensors (``--option key=value`` fixes it, or any other constructor option, instead).

The engine is written to a temporary folder, compared with the torch model on random inputs, and
moved into ``<out>/<model>/<version>/`` only when the parity error is within tolerance.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from export.errors import ExportError
from export.fp16_weights import store_weights_fp16
from export.manifest import (
    ENGINE_FILES,
    Calibration,
    Manifest,
    Parity,
    SourceCheckpoint,
    TensorInfo,
)
from export.onnx_export import (
    DEFAULT_OPSET,
    INPUT_NAME,
    OUTPUT_NAME,
    export_onnx,
    heatmap_parity,
    measure_parity,
)
from export.options import parse_model_options
from export.triton_config import write_model_config
from models.checkpoint import TrainingCheckpoint
from models.registry import (
    KwargsInferenceError,
    ModelKwargs,
    create_model,
    file_sha256,
    get_spec,
    list_models,
    read_checkpoint,
    resolve_model_kwargs,
)
from models.spec import HEATMAP_OUTPUT

log = logging.getLogger("export")

#: Parity bound of the patch map (heat map) per cell. Looser than the score's: the score averages
#: 64 cells, so fp16 weights move a single cell more (1.8e-3 seen for PCL-I2G), and the map is only
#: drawn, where one colour step is 1/255 = 3.9e-3.
HEATMAP_TOLERANCE = 1e-2


def next_version(model_dir: Path) -> int:
    existing = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(existing, default=0) + 1


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def export_model(
    name: str,
    out: Path,
    *,
    checkpoint: Path | None = None,
    random_init: bool = False,
    seed: int = 0,
    version: int | None = None,
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-3,
    parity_batches: list[int] | None = None,
    command: str | None = None,
    fp16_weights: bool = False,
    model_options: dict[str, Any] | None = None,
    heatmap: bool = False,
) -> Path:
    """Export one model; returns the version folder. Raises :class:`ExportError` on parity failure.

    ``model_options`` are constructor options (``--option``); they win over those read from the
    checkpoint. The options the network is built with go into the manifest's ``source.model_kwargs``.
    ``heatmap`` adds the model's patch map as a second output (``--heatmap``), held to the same
    parity tolerance.
    """
    if (checkpoint is None) == (not random_init):
        raise ExportError("give exactly one of --checkpoint PATH or --random-init")
    torch.manual_seed(seed)
    ckpt = read_checkpoint(checkpoint) if checkpoint else None
    chosen = _model_kwargs(name, ckpt, model_options)
    log.info("%s: building with %s", name, chosen.describe())
    model = create_model(name, checkpoint=ckpt, **chosen.kwargs)
    model.eval()
    # The built network's own spec: constructor options (e.g. DCL's backbone) can change its input.
    spec = getattr(model, "spec", None) or get_spec(name)
    if ckpt is not None and ckpt.get("spec") and ckpt["spec"] != spec.to_dict():
        log.warning("checkpoint spec differs from the network's spec; exporting with the network's")

    model_dir = out / name
    version = version or next_version(model_dir)
    final = model_dir / str(version)
    if final.exists():
        raise ExportError(f"{final} exists already; choose another --version")
    batches = parity_batches or ([1, 2] if spec.kind == "clip" else [1, 7])

    with tempfile.TemporaryDirectory(prefix=f"export-{name}-") as tmp:
        staging = Path(tmp) / str(version)
        staging.mkdir()
        engine_path = staging / ENGINE_FILES["onnx"]
        started = time.perf_counter()
        if heatmap and not hasattr(model, "forward_with_heatmap"):
            raise ExportError(f"{name} has no patch map to export as a heat map (only pcl_i2g has)")
        exporter = export_onnx(model, spec, engine_path, opset=opset, heatmap=heatmap)
        log.info("%s: exported with %s in %.1f s", name, exporter, time.perf_counter() - started)
        if fp16_weights:
            size_before, size_after = store_weights_fp16(engine_path)
            log.info("%s: weights stored as float16: %.1f MB -> %.1f MB", name, size_before / 1e6, size_after / 1e6)
        parity = measure_parity(model, spec, engine_path, batch_sizes=batches, seed=seed + 1)
        log.info(
            "%s: parity max|dP| = %.2e (logit %.2e), tolerance %.1e",
            name,
            parity.max_abs_diff_prob,
            parity.max_abs_diff_logit,
            tolerance,
        )
        if parity.max_abs_diff_prob > tolerance:
            raise ExportError(
                f"{name}: onnxruntime differs from torch by {parity.max_abs_diff_prob:.3e} in P(fake) "
                f"(tolerance {tolerance:.1e}); nothing was written"
            )
        batch_dim: int | str = "batch"
        outputs = [TensorInfo(name=OUTPUT_NAME, shape=[batch_dim])]
        if heatmap:
            map_shape, map_diff = heatmap_parity(model, spec, engine_path, seed=seed + 2)
            map_tolerance = max(tolerance, HEATMAP_TOLERANCE)
            log.info("%s: patch map parity max|dP| = %.2e, tolerance %.1e", name, map_diff, map_tolerance)
            if map_diff > map_tolerance:
                raise ExportError(
                    f"{name}: the exported patch map differs from torch by {map_diff:.3e} in P(fake) "
                    f"(tolerance {map_tolerance:.1e}); nothing was written"
                )
            outputs.append(TensorInfo(name=HEATMAP_OUTPUT, shape=[batch_dim, *map_shape]))
        manifest = Manifest(
            name=name,
            version=version,
            format="onnx",
            file=ENGINE_FILES["onnx"],
            spec=spec.to_dict(),
            inputs=[TensorInfo(name=INPUT_NAME, shape=[batch_dim, *spec.input_shape(1)[1:]])],
            outputs=outputs,
            dynamic_batch=True,
            opset=opset,
            weights_dtype="float16" if fp16_weights else "float32",
            source=SourceCheckpoint(
                path=str(checkpoint) if checkpoint else None,
                sha256=file_sha256(checkpoint) if checkpoint else None,
                layout=("ours" if ckpt and ckpt.get("model") == name else "reference") if ckpt else "random-init",
                model_kwargs=chosen.kwargs,
            ),
            untrained=random_init,
            parity=Parity(
                runtime="onnxruntime CPUExecutionProvider",
                max_abs_diff_logit=parity.max_abs_diff_logit,
                max_abs_diff_prob=parity.max_abs_diff_prob,
                tolerance_prob=tolerance,
                batch_sizes=parity.batch_sizes,
                samples=parity.samples,
            ),
            calibration=Calibration(**(ckpt.get("calibration") or {})) if ckpt else Calibration(),
            metrics=_measured(ckpt),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            exporter={**_versions(), "exporter": exporter},
            command=command,
        )
        manifest.write(staging)
        model_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), final)
    config = write_model_config(model_dir)  # Triton's config.pbtxt for the model's latest version
    log.info("%s: wrote %s and %s", name, final, config)
    return final


def _model_kwargs(name: str, ckpt: dict[str, Any] | None, options: dict[str, Any] | None) -> ModelKwargs:
    """The constructor options for ``ckpt``, with the option to pass when the tensors do not tell."""
    try:
        return resolve_model_kwargs(name, ckpt, options)
    except KwargsInferenceError as error:
        example = error.choices[0] if error.choices else "VALUE"
        allowed = f" (one of {', '.join(error.choices)})" if error.choices else ""
        raise ExportError(f"{error}; pass --option {error.option}={example}{allowed}") from error


def _measured(ckpt: dict[str, Any] | None) -> dict[str, Any]:
    """What the checkpoint says was measured: how it was trained, plus each ``training.evaluate --write``."""
    if not TrainingCheckpoint.is_training_checkpoint(ckpt):
        return {}  # a reference checkpoint or a bare state dict measured nothing we know of
    ours = TrainingCheckpoint.from_dict(ckpt)
    evaluations = {k: v for k, v in ours.metrics.items() if k.startswith("evaluate_")}
    training = {
        **ours.summary(),
        "last_validation": {k: v for k, v in ours.metrics.items() if k not in evaluations},
    }
    return {"training": {k: v for k, v in training.items() if v is not None}, **evaluations}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description=(
            "Export a detector to ONNX (dynamic batch) in a Triton-style model repository, after checking "
            "that onnxruntime reproduces the torch model on random inputs. Checkpoints may be our training "
            "checkpoints or the reference implementations' layouts (e.g. FTCN's official ftcn_tt.pth)."
        ),
    )
    parser.add_argument("--model", required=True, choices=list_models(), help="detector to export")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="weights file (ours or the reference layout)")
    source.add_argument(
        "--random-init",
        action="store_true",
        help="export untrained random weights (for tests and demos; marked untrained in the manifest)",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="constructor option of the model (repeatable), e.g. variant=b3 for advgame or backbone=resnet18 "
        "for pcl_i2g; wins over what is read from the checkpoint (a reference checkpoint's variant is "
        "inferred from its tensors). Values are typed by the constructor's signature.",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("model_repository"), help="model repository (default: %(default)s)"
    )
    parser.add_argument("--version", type=int, help="version folder number (default: next free)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="largest |P_torch - P_onnx| accepted on random inputs (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for random init and parity inputs")
    parser.add_argument(
        "--tensorrt", action="store_true", help="also build a TensorRT engine (needs the tensorrt package and a GPU)"
    )
    parser.add_argument("--fp16", action="store_true", help="with --tensorrt: allow fp16 kernels")
    parser.add_argument(
        "--heatmap",
        action="store_true",
        help="also output the model's patch map (pcl_i2g), which the service draws as a heat map; "
        "logit stays the first output, so serving is unchanged (not with --tensorrt)",
    )
    parser.add_argument(
        "--fp16-weights",
        action="store_true",
        help="store large ONNX weights as float16 (half the file; compute stays float32; "
        "the parity check then measures the rounding)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.tensorrt:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            print(
                "error: --tensorrt needs NVIDIA's TensorRT Python package, which PyPI does not serve: "
                "pip install --extra-index-url https://pypi.nvidia.com tensorrt-cu13",
                file=sys.stderr,
            )
            return 2
    if args.tensorrt and args.heatmap:
        print(
            "error: --heatmap adds an output the TensorRT runner does not bind; export without --tensorrt",
            file=sys.stderr,
        )
        return 2
    command = "python -m export " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        options = parse_model_options(args.model, args.option)
        folder = export_model(
            args.model,
            args.out,
            checkpoint=args.checkpoint,
            random_init=args.random_init,
            seed=args.seed,
            version=args.version,
            opset=args.opset,
            tolerance=args.tolerance,
            command=command,
            fp16_weights=args.fp16_weights,
            model_options=options,
            heatmap=args.heatmap,
        )
    except (ExportError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.tensorrt:
        from export.tensorrt import TensorRTParityError, build_engine
        from service.pipeline.tensorrt_engine import TensorRTUnavailable

        try:  # the plan goes beside the ONNX file; Triton's config keeps serving the ONNX file
            plan = build_engine(folder, fp16=args.fp16)
        except (TensorRTParityError, TensorRTUnavailable) as exc:
            print(f"error: {exc} (the ONNX export in {folder} stands)", file=sys.stderr)
            return 1
        print(plan)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
