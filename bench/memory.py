"""Where a CPU service's memory goes: imports, engine sessions, and each model's working memory.

    python bench/memory.py                                  # both CPU runtimes, batches 16 and 64, arena on/off
    python bench/memory.py --runtimes onnxruntime --batches 8,16,32,64 --repeats 3

Each configuration runs in a fresh process (so one's memory does not colour the next) that does
what the service does on a CPU: imports ``service.app``, opens every model of ``--repository``
with the service's own engine classes, then runs one batch per model, as the batcher would at
``DFS_BATCH_MAX_FRAMES`` (clip models at an eighth of it, at least 1, as ``DFS_BATCH_MAX_CLIPS``'s
default is to ``DFS_BATCH_MAX_FRAMES``'s). ``arena on`` is the default: ONNX Runtime sessions share
one arena grown by exactly what is asked (``service.pipeline.engines.use_shared_cpu_arena``), OpenVINO
keeps its buffers; ``arena off`` is ``DFS_CPU_MEMORY_ARENA=false``: ONNX Runtime without an arena,
OpenVINO releasing its intermediate buffers after every batch.

Columns: resident memory after the imports, after opening the engines, after every model has run
(steady: what stays once requests stop), the peak (``VmHWM``), and the milliseconds per item
(frame or clip), the median of ``--repeats`` runs after a warm-up, summed over the models. Decoded
frames and crops are not counted here; ``bench/e2e.py`` measures the whole server under load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


@dataclass
class Measured:
    runtime: str
    batch: int
    arena: bool
    imports_mb: float = 0.0
    engines_mb: float = 0.0
    steady_mb: float = 0.0
    peak_mb: float = 0.0
    ms_per_item: dict[str, float] = field(default_factory=dict)


def resident_mb(field_name: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(repository: Path, runtime: str, batch: int, arena: bool, repeats: int) -> Measured:
    """One configuration, in this process (the parent runs each in a child)."""
    import service.app  # noqa: F401 - what the service imports before it opens anything
    from service.model_repository import discover
    from service.pipeline.engines import OnnxEngine
    from service.pipeline.openvino_engine import OpenVinoEngine

    result = Measured(runtime, batch, arena, imports_mb=resident_mb())
    engines = {}
    for name, version in discover(repository).items():
        if runtime == "openvino":
            engines[name] = (
                OpenVinoEngine(version.engine_path, release_memory=not arena),
                version.manifest.model_spec(),
            )
        else:
            engines[name] = (
                OnnxEngine(version.engine_path, device="cpu", memory_arena=arena),
                version.manifest.model_spec(),
            )
    result.engines_mb = resident_mb()
    rng = np.random.default_rng(0)
    for name, (engine, spec) in engines.items():
        items = max(1, batch // 8) if spec.kind == "clip" else batch
        inputs = rng.standard_normal(spec.input_shape(items), dtype=np.float32)
        engine.run(inputs)  # warm-up: first-run allocations and kernel choices
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            engine.run(inputs)
            times.append(time.perf_counter() - started)
        result.ms_per_item[name] = 1000 * statistics.median(times) / items
    result.steady_mb = resident_mb()
    result.peak_mb = resident_mb("VmHWM")
    return result


def run_child(args: argparse.Namespace, runtime: str, batch: int, arena: bool) -> Measured | None:
    command = [
        sys.executable,
        __file__,
        "--repository",
        str(args.repository),
        "--repeats",
        str(args.repeats),
        "--child",
        f"{runtime}:{batch}:{int(arena)}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, check=False)
    if done.returncode != 0:
        print(
            f"  {runtime} batch {batch} arena {'on' if arena else 'off'}: failed\n{done.stderr[-2000:]}",
            file=sys.stderr,
        )
        return None
    return Measured(**json.loads(done.stdout.strip().splitlines()[-1]))


def print_table(rows: list[Measured]) -> None:
    models = sorted({name for row in rows for name in row.ms_per_item})
    print(f"\nCPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    header = (
        f"{'runtime':<12} {'batch':>5} {'arena':>5} {'imports MB':>10} {'engines MB':>10} {'steady MB':>9} "
        f"{'peak MB':>8} " + " ".join(f"{m + ' ms':>11}" for m in models) + f" {'sum ms':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        per_model = " ".join(f"{row.ms_per_item.get(m, float('nan')):>11.1f}" for m in models)
        print(
            f"{row.runtime:<12} {row.batch:>5} {'on' if row.arena else 'off':>5} {row.imports_mb:>10.0f} "
            f"{row.engines_mb:>10.0f} {row.steady_mb:>9.0f} {row.peak_mb:>8.0f} {per_model} "
            f"{sum(row.ms_per_item.values()):>7.1f}"
        )
    print("ms = per frame (per clip for clip models, whose batch is an eighth of the frames'), median of the repeats")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--runtimes", default="onnxruntime,openvino", help="comma list: onnxruntime, openvino")
    parser.add_argument("--batches", default="16,64", help="frame batch sizes (DFS_BATCH_MAX_FRAMES) to try")
    parser.add_argument("--arena", default="on,off", help="comma list: on, off (DFS_CPU_MEMORY_ARENA)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per model after the warm-up")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a configuration may take")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        runtime, batch, arena = args.child.split(":")
        print(json.dumps(asdict(measure(args.repository, runtime, int(batch), arena == "1", args.repeats))))
        return 0
    runtimes = [r for r in args.runtimes.split(",") if r]
    unknown = set(runtimes) - {"onnxruntime", "openvino"}
    if unknown:
        parser.error(f"unknown runtime(s): {', '.join(sorted(unknown))}")
    arenas = [a == "on" for a in args.arena.split(",") if a]
    batches = [int(b) for b in args.batches.split(",") if b]
    rows: list[Measured] = []
    for runtime in runtimes:
        for batch in batches:
            for arena in arenas:
                print(f"measuring {runtime} batch {batch} arena {'on' if arena else 'off'} ...", flush=True)
                row = run_child(args, runtime, batch, arena)
                if row:
                    rows.append(row)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
