"""How close each model stage and the decoder come to what the hardware allows.

    python bench/floor.py                                   # the default bundle, on this machine
    python bench/floor.py --repository my_repo --batches 1,8,32,128 --json floor.json
    python bench/floor.py --models ftcn,dcl,pcl_i2g,lib,advgame --random-init   # every detector

For every model: FLOPs per item (``torch.utils.flop_counter``, multiply-add = 2 FLOPs) and the
bytes a runtime must at least move per item (input, plus each convolution/linear output written
once and read once at ``--dtype``; a fused runtime cannot move less, an unfused one moves more).
The *floor* is the slower of FLOPs / measured matmul rate and bytes / measured copy bandwidth, as
items/s; then the engine the service would run (ONNX Runtime with its best provider, or eager torch
with ``--runtime torch``) is timed at each batch size and its best rate given as a share of that
floor, plus the smallest batch within 10% of the best rate (what ``DFS_BATCH_MAX_*`` needs to
reach; larger batches only add waiting). FTCN's temporal convolutions make it memory-bound (see
../shared/docs/GPU.md), which is why bytes are counted at all.

For the decoder: frames/s of a bare decode loop (PyAV, and NVDEC where available) against the
pipeline's decode (which converts to RGB and resizes).

Prints one table and writes JSON with ``--json``. CPU or GPU (``--device``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import create_model  # noqa: E402
from models.spec import ModelSpec  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def best_seconds(fn: Callable[[], object], repeat: int = 3, sync: Callable[[], None] = lambda: None) -> float:
    """Fastest of ``repeat`` timed runs after one warm-up: the floor is about capability, not noise."""
    fn()
    sync()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return min(times)


def cuda_sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype) -> float:
    """Dense square matmul rate: the compute ceiling every convolution is measured against."""
    best = 0.0
    for n in (4096, 8192) if device.type == "cuda" else (1024, 2048, 3072):  # the best size differs per machine
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        best = max(best, 2 * n**3 / best_seconds(lambda: a @ b, sync=cuda_sync(device)))  # noqa: B023
    return best


def copy_bytes_per_s(device: torch.device) -> float:
    """Memory bandwidth as a large tensor copy (bytes read + bytes written per second)."""
    numel = (1 << 28) // 4  # 256 MiB of float32
    source = torch.empty(numel, device=device)
    target = torch.empty_like(source)
    seconds = best_seconds(lambda: target.copy_(source), sync=cuda_sync(device))
    return 2 * source.numel() * source.element_size() / seconds


@dataclass
class Cost:
    gflop: float
    mbytes: float


def cost_per_item(model: nn.Module, spec: ModelSpec, dtype_bytes: int) -> Cost:
    """FLOPs and minimal memory traffic of one item (batch of 1) through ``model`` on the CPU."""
    written = [0]

    def count_output(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if isinstance(output, torch.Tensor):
            written[0] += output.numel()

    hooks = [
        m.register_forward_hook(count_output)
        for m in model.modules()
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
    ]
    x = torch.zeros(spec.input_shape(1))
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    traffic = (x.numel() + 2 * written[0]) * dtype_bytes
    return Cost(gflop=counter.get_total_flops() / 1e9, mbytes=traffic / 1e6)


@dataclass
class Row:
    stage: str
    runtime: str
    gflop_per_item: float | None
    mb_per_item: float | None
    floor_per_s: float | None
    bound: str
    best_per_s: float
    best_batch: int | None
    share_of_floor: float | None
    knee_batch: int | None = None  # smallest batch within 10% of the best rate: what the batcher needs
    kind: str | None = None


def engine_rate(
    name: str,
    spec: ModelSpec,
    model: nn.Module,
    engine_path: Path | None,
    runtime: str,
    device: torch.device,
    dtype: torch.dtype,
    batches: list[int],
) -> tuple[dict[int, float], str]:
    """Items/s per batch size for the engine the service would run (or eager torch)."""
    from service.pipeline.engines import OnnxEngine

    rates: dict[int, float] = {}
    label = runtime
    engine = None
    if runtime == "onnx":
        if engine_path is None:
            raise ValueError(f"{name}: no exported engine to time; use --runtime torch or --repository")
        engine = OnnxEngine(engine_path, device=device.type)
        label = engine.runtime
    else:
        model = model.to(device)
        label = f"torch:{device.type}:{[k for k, v in DTYPES.items() if v == dtype][0]}"
    for batch in batches:
        x = np.random.default_rng(0).standard_normal(spec.input_shape(batch)).astype(np.float32)
        if engine is not None:
            seconds = best_seconds(lambda: engine.run(x), repeat=2)  # noqa: B023 - called right here
        else:
            tensor = torch.from_numpy(x).to(device)

            def forward() -> object:
                with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    return model(tensor)  # noqa: B023 - called right here

            seconds = best_seconds(forward, repeat=2, sync=cuda_sync(device))
        rates[batch] = batch / seconds
        print(f"  {name} batch {batch}: {batch / seconds:.2f} items/s", flush=True)
    return rates, label


def decode_rows(video: Path) -> list[Row]:
    """Bare decode loops (the decoder's floor) next to the pipeline's RGB decode."""
    import av

    from service.pipeline.decode import iter_frames

    def bare() -> int:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            return sum(1 for _ in container.decode(stream))

    frames = bare()
    bare_rate = frames / best_seconds(bare, 2)
    rows = [Row("decode, bare loop", "pyav", None, None, bare_rate, "measured", bare_rate, None, 1.0)]
    seconds = best_seconds(lambda: sum(1 for _ in iter_frames(video, max_frames=frames)), 2)
    rows.append(
        Row(
            "decode to RGB (pipeline)",
            "pyav",
            None,
            None,
            rows[0].floor_per_s,
            "bare loop",
            frames / seconds,
            None,
            frames / seconds / rows[0].floor_per_s,
        )
    )
    try:
        from service.pipeline import decode_nvdec
    except ImportError:
        return rows
    available, why = decode_nvdec.nvdec_available()
    if not available:
        print(f"NVDEC not measured: {why}")
        return rows
    seconds = best_seconds(
        lambda: sum(1 for _ in decode_nvdec.iter_frames(video, max_frames=frames)), 2, sync=torch.cuda.synchronize
    )
    rows.append(Row("decode to RGB (NVDEC)", "nvdec", None, None, None, "-", frames / seconds, None, None))
    return rows


def model_entries(args: argparse.Namespace) -> list[tuple[str, dict, ModelSpec, Path | None]]:
    """(name, constructor kwargs, spec, engine path) for every model to measure."""
    from models.registry import get_spec
    from service.model_repository import discover

    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        return [(n, {}, get_spec(n), None) for n in names]
    entries = []
    for name, version in discover(args.repository).items():
        manifest = version.manifest
        entries.append((name, manifest.source.model_kwargs, manifest.model_spec(), version.engine_path))
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--models", help="comma list of registered models instead of a repository (random init, torch)")
    parser.add_argument(
        "--runtime",
        choices=["onnx", "torch"],
        default="onnx",
        help="what to time: the exported engine (default) or eager torch",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        help="compute precision for the floor and torch (default: bf16 on CUDA, fp32 on CPU)",
    )
    parser.add_argument("--batches", default="1,4,16", help="batch sizes to time (default: %(default)s)")
    parser.add_argument("--video", type=Path, help="also measure the decoder on this video")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    if args.models and args.runtime == "onnx":
        args.runtime = "torch"  # registry models have no exported engine
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # state the precision we measure (GPU.md)
    peak = matmul_flops_per_s(device, dtype)
    bandwidth = copy_bytes_per_s(device)
    print(f"{device.type}: matmul {peak / 1e12:.2f} TFLOP/s ({dtype}), copy {bandwidth / 1e9:.1f} GB/s", flush=True)

    batches = [int(b) for b in args.batches.split(",")]
    rows: list[Row] = []
    for name, kwargs, spec, engine_path in model_entries(args):
        model = create_model(name, **kwargs).eval()
        cost = cost_per_item(model, spec, torch.finfo(dtype).bits // 8)
        compute_s, memory_s = cost.gflop * 1e9 / peak, cost.mbytes * 1e6 / bandwidth
        floor = 1 / max(compute_s, memory_s)
        rates, runtime = engine_rate(name, spec, model, engine_path, args.runtime, device, dtype, batches)
        best_batch = max(rates, key=rates.__getitem__)
        knee = min(b for b, r in rates.items() if r >= 0.9 * rates[best_batch])
        rows.append(
            Row(
                name,
                runtime,
                round(cost.gflop, 3),
                round(cost.mbytes, 1),
                floor,
                "compute" if compute_s >= memory_s else "memory",
                rates[best_batch],
                best_batch,
                rates[best_batch] / floor,
                knee,
                spec.kind,
            )
        )
    if args.video:
        rows.extend(decode_rows(args.video))

    print()
    print(
        f"{'stage':26} {'runtime':34} {'GFLOP':>8} {'MB':>8} {'floor/s':>9} {'bound':>8} {'best/s':>9} "
        f"{'batch':>5} {'share':>6} {'knee':>5}"
    )
    for r in rows:

        def num(value: float | None, spec: str) -> str:
            return "-" if value is None else format(value, spec)

        print(
            f"{r.stage:26} {r.runtime:34} {num(r.gflop_per_item, '.2f'):>8} {num(r.mb_per_item, '.1f'):>8} "
            f"{num(r.floor_per_s, '.1f'):>9} {r.bound:>8} {r.best_per_s:9.2f} {num(r.best_batch, 'd'):>5} "
            f"{num(r.share_of_floor, '.1%'):>6} {num(r.knee_batch, 'd'):>5}"
        )
    knees = {
        kind: max((r.knee_batch for r in rows if r.kind == kind and r.knee_batch), default=None)
        for kind in ("clip", "frame")
    }
    if any(knees.values()):
        # the batcher's cap only needs to reach the knee: bigger batches add waiting, not throughput
        suggestion = {"DFS_BATCH_MAX_CLIPS": knees["clip"], "DFS_BATCH_MAX_FRAMES": knees["frame"]}
        print(
            "\nbatch sizes within 10% of the best rate (measured batches only): "
            + " ".join(f"{k}={v}" for k, v in suggestion.items() if v)
        )
    if args.json:
        meta = {
            "machine": platform.node(),
            "device": device.type,
            "dtype": str(dtype),
            "matmul_flops_per_s": peak,
            "copy_bytes_per_s": bandwidth,
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        }
        args.json.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
