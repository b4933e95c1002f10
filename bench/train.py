"""Training throughput and loss of each method, as the user runs it (``python -m training.train``).

    python bench/train.py                                   # all five methods, small batches, this machine
    python bench/train.py --methods ftcn,dcl --batch-size 8 --steps 40 --json train.json
    python bench/train.py --data crops/ --amp none,bf16     # fp32 against bf16 autocast, side by side
    python bench/train.py --method-args "ftcn=--width 0.25 --input-size 96" --method-args "dcl=--backbone mobilenetv2_100"

Each method runs ``python -m training.train`` in its own process (its real data loading, losses,
optimisers, AMP and checkpoint at the end) for ``--steps`` optimiser steps on face crops, with the
fake class blended from the real faces (``--fakes blended``), so no fake data is needed. Without
``--data`` the default bundle's sources (training/recipes/default_bundle.csv: ../shared/data photos
and videos) are preprocessed first, once, into ``--work``.

Per method it reads the run's metrics.jsonl (one line per optimiser step with its wall time) and
reports steady samples/s (the first ``--warmup`` steps and every epoch's first step, which waits for
the data loader, are left out), seconds per step, the mean loss over the first and the last three
steps, and on CUDA the peak GPU memory. Prints one table; ``--json`` writes it. CPU or GPU: the
training loop uses CUDA when torch sees it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.methods import METHOD_NAMES as METHODS  # noqa: E402 - the registry's names, after the path

DEFAULT_SOURCES = REPO / "training" / "recipes" / "default_bundle.csv"


@dataclass
class MethodResult:
    method: str
    amp: str
    batch_size: int
    steps: int
    samples_per_s: float | None
    step_s: float | None
    loss_first: float | None
    loss_last: float | None
    gpu_peak_mb: float | None
    wall_s: float
    returncode: int
    error: str | None = None


def steady_rate(records: list[dict], warmup: int) -> tuple[float | None, float | None]:
    """(samples/s, s/step) over the steps after ``warmup``, leaving out each epoch's first step."""
    kept = [
        r
        for i, r in enumerate(records)
        if i >= warmup and (i == 0 or records[i - 1]["epoch"] == r["epoch"]) and "step_s" in r
    ]
    seconds = sum(r["step_s"] for r in kept)
    if not kept or seconds <= 0:
        return None, None
    return sum(r["step_samples"] for r in kept) / seconds, seconds / len(kept)


def mean_loss(records: list[dict]) -> float | None:
    losses = [r["loss"] for r in records if "loss" in r]
    return sum(losses) / len(losses) if losses else None


def preprocess(sources: Path, crops: Path, max_frames: int, retinaface: Path | None) -> None:
    """Face-track crops of ``sources`` (skipped when ``crops`` already holds them: preprocess resumes)."""
    command = [
        sys.executable,
        "-m",
        "training.preprocess",
        "--input",
        str(sources),
        "--output",
        str(crops),
        "--max-frames",
        str(max_frames),
    ]
    if retinaface:
        command += ["--retinaface-weights", str(retinaface)]
    print(f"[preprocess] {' '.join(command)}", flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def run_method(method: str, amp: str, args: argparse.Namespace, data: Path) -> MethodResult:
    output = args.work / "runs" / f"{method}-{amp}"
    for stale in ("metrics.jsonl", "last.pt", "best.pt"):  # a fresh run, not a resume
        (output / stale).unlink(missing_ok=True)
    batch = args.batch_size
    command = [
        sys.executable,
        "-m",
        "training.train",
        "--method",
        method,
        "--data",
        str(data),
        "--output",
        str(output),
        "--fakes",
        "blended",
        "--max-steps",
        str(args.steps),
        "--batch-size",
        str(batch),
        "--workers",
        str(args.workers),
        "--amp",
        amp,
        "--no-tensorboard",
        "--epochs",
        "1000",
        *shlex.split(args.extra.get(method, "")),
    ]
    print(f"[{method}] {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    log_path = args.work / f"{method}-{amp}.log"
    with log_path.open("w") as log:
        try:
            done = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout)
            returncode = done.returncode
        except subprocess.TimeoutExpired:
            returncode = 124
    wall = time.perf_counter() - started
    history = output / "metrics.jsonl"
    records = [json.loads(line) for line in history.read_text().splitlines()] if history.is_file() else []
    error = None
    if returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-1:] or ["(no output)"]
        error = f"exit {returncode}: {tail[0][:200]} (log: {log_path})"
    rate, per_step = steady_rate(records, args.warmup)
    peaks = [r["gpu_peak_mb"] for r in records if "gpu_peak_mb" in r]
    return MethodResult(
        method=method,
        amp=amp,
        batch_size=batch,
        steps=len(records),
        samples_per_s=rate,
        step_s=per_step,
        loss_first=mean_loss(records[:3]),
        loss_last=mean_loss(records[-3:]),
        gpu_peak_mb=max(peaks) if peaks else None,
        wall_s=wall,
        returncode=returncode,
        error=error,
    )


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[MethodResult]) -> None:
    print(
        f"\n{'method':<8} {'amp':<5} {'batch':>5} {'steps':>5} {'samples/s':>10} {'s/step':>8} {'loss first':>10} "
        f"{'loss last':>10} {'gpu MB':>8} {'wall s':>7}"
    )
    for r in results:
        print(
            f"{r.method:<8} {r.amp:<5} {r.batch_size:>5} {r.steps:>5} {fmt(r.samples_per_s, '.2f'):>10} "
            f"{fmt(r.step_s, '.2f'):>8} {fmt(r.loss_first, '.4f'):>10} {fmt(r.loss_last, '.4f'):>10} "
            f"{fmt(r.gpu_peak_mb, '.0f'):>8} {r.wall_s:>7.0f}"
        )
    for r in results:
        if r.error:
            print(f"  {r.method}: {r.error}")


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (torch {torch.__version__})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma list of methods to train")
    parser.add_argument("--data", type=Path, help="preprocessed crops (index.csv); default: preprocess --sources")
    parser.add_argument(
        "--sources",
        type=Path,
        default=DEFAULT_SOURCES,
        help="what to preprocess when --data is not given (folder or label-list CSV)",
    )
    parser.add_argument("--max-frames", type=int, default=32, help="frames per video when preprocessing")
    parser.add_argument("--retinaface-weights", type=Path, help="preprocess with RetinaFace instead of BlazeFace")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench_train", help="crops, runs and logs")
    parser.add_argument("--steps", type=int, default=8, help="optimiser steps per method")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the rate")
    parser.add_argument("--batch-size", type=int, default=4, help="per-process batch size, every method")
    parser.add_argument(
        "--amp",
        default="auto",
        help="comma list of autocast settings to run side by side (auto, none, bf16, fp16; auto = bf16 "
        "on CUDA, fp32 on a CPU)",
    )
    parser.add_argument(
        "--method-args",
        action="append",
        default=[],
        metavar="METHOD=FLAGS",
        help="extra training.train flags for one method, e.g. 'dcl=--backbone mobilenetv2_100' (repeatable)",
    )
    parser.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per method")
    parser.add_argument("--json", type=Path, help="write the table and settings here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    amps = [a.strip() for a in args.amp.split(",") if a.strip()]
    if not amps or set(amps) - {"auto", "none", "bf16", "fp16"}:
        print(f"--amp takes a comma list of auto, none, bf16, fp16; got {args.amp!r}", file=sys.stderr)
        return 2
    args.extra = {}
    for item in args.method_args:
        name, sep, flags = item.partition("=")
        if not sep or name.strip() not in METHODS:
            print(
                f"--method-args expects METHOD=FLAGS with METHOD one of {', '.join(METHODS)}; got {item!r}",
                file=sys.stderr,
            )
            return 2
        args.extra[name.strip()] = flags
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        print(f"unknown methods {unknown}; choose from {', '.join(METHODS)}", file=sys.stderr)
        return 2
    if args.steps <= args.warmup:
        print(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})", file=sys.stderr)
        return 2
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        data = args.work / "crops"
        preprocess(args.sources.resolve(), data, args.max_frames, args.retinaface_weights)
    device = device_name()
    print(f"device: {device}", flush=True)
    results = [run_method(method, amp, args, data.resolve()) for method in methods for amp in amps]
    print(
        f"\ndevice: {device}; fakes blended from real faces; batch {args.batch_size}, {args.steps} steps, "
        f"rate over steps after the first {args.warmup}"
    )
    print_table(results)
    if args.json:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.json.write_text(
            json.dumps({"device": device, "settings": settings, "results": [asdict(r) for r in results]}, indent=2)
        )
    return 0 if all(r.returncode == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
