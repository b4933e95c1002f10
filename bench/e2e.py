"""End-to-end throughput and latency through the real HTTP server, against two references.

    python bench/e2e.py --video ../shared/data/videos/wild_fake_Obama.mp4
    python bench/e2e.py --make-video 10 --height 1080 --clients 1,8,32 --json e2e.json   # the GPU acceptance run
    python bench/e2e.py --profiles service --clients 8 --soak 500                        # memory over 500 requests
    python bench/e2e.py --profiles ort,triton --clients 1,4 --max-frames 64              # the remote call's cost
    git worktree add --detach /tmp/then d0344d0                                          # the code issue 17 measured
    python bench/e2e.py --make-video 10 --height 720 --clients 1,4 --then-tree /tmp/then \
        --profiles then,ort,openvino,openvino-bf16,service                                  # today vs then, one run

Each *profile* is one ``python -m service`` process started by this script on loopback, fed by
concurrent clients that POST the same local video (``DFS_LOCAL_ROOTS``), so the numbers include
HTTP, decoding, faces, crops, batching and every model in ``--repository``:

- ``service``: the service as configured (defaults plus ``--env``), exported engines;
- ``torch``: the same sampling and batching, eager PyTorch fp32 (``DFS_RUNTIME=torch``): the
  reference runtime, reported as the ratio service/torch;
- ``triton``: the same service with ``DFS_RUNTIME=triton``: every batch's forward pass goes to a
  Triton server (``--triton-url``, or one started here on loopback: nvidia-pytriton's tritonserver on
  the CPU with the python-backend variant of ``--repository``), so beside ``ort`` (in-process ONNX
  Runtime, same models) the remote call's cost is a measured ratio;
- ``then``: the ``service`` package of another checkout (``--then-tree``, e.g. a worktree of the commit
  an issue was filed at) serving the same repository with its own defaults, so "N x the path of then"
  is measured in the same run on the same machine; the table's ``vs then`` column is that ratio
  (``vs ort`` is against today's code pinned to ONNX Runtime fp32 with the old batch size);
- ``baseline``: the recipe of the FTCN deploy this service replaces, run sequentially (one client):
  eager PyTorch fp32, CPU decode, face detection on every frame, clips at stride 1 and frame models
  on every frame, batches of 6, nothing shared across requests. The acceptance ratio is
  service videos/s at each client count over this.

The torch profiles need the checkpoints the manifests name; where a file is not here (the default
bundle's checkpoints stay out of git) a random-init checkpoint of the same architecture is written
(``source.model_kwargs``): the speed is the same, the scores are not, so the table says so.

Prints one table (videos/s, p50/p99 latency, server memory) and writes it as JSON with ``--json``,
including the server's own per-stage timings. Runs on CPU and GPU; expect minutes per profile on a
CPU (``--max-frames`` and ``--requests`` bound the work).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.triton_server import TritonServer, missing_reason, start_triton, stop_triton  # noqa: E402
from export.triton_config import TritonOptions, write_python_backend_repository  # noqa: E402
from service.launcher import LiveService, start_service, stop_service  # noqa: E402

DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos" / "wild_fake_Obama.mp4"

#: The FTCN deploy's recipe, as settings of this service (see the module docstring).
BASELINE_ENV = {
    "DFS_RUNTIME": "torch",
    "DFS_TORCH_DTYPE": "fp32",
    "DFS_DETECT_EVERY": "1",
    "DFS_CLIP_STRIDE": "1",
    "DFS_MAX_CLIPS_PER_TRACK": "100000",
    "DFS_FRAMES_PER_TRACK": "100000",
    "DFS_BATCH_MAX_CLIPS": "6",
    "DFS_BATCH_MAX_FRAMES": "6",
    "DFS_BATCH_MAX_WAIT_MS": "0",
    "DFS_MAX_CONCURRENT_REQUESTS": "1",
    "DFS_DECODER": "pyav",  # the deploy decoded on the CPU
}

#: CPU engine variants, each a service profile pinned to one runtime and precision (issue 17); the
#: ``service`` profile is DFS_RUNTIME=auto, which times these per model at start-up and keeps the
#: fastest. ``ort`` is the path before this issue (ONNX Runtime fp32, frame batches of 64, the
#: earlier default): the ratios are against it. ``ort-b16`` is the same at the CPU's default of 16
#: (``DFS_BATCH_MAX_FRAMES=0``), whose runtimes then hold a quarter of the working memory.
CPU_PROFILES = {
    "ort": {"DFS_RUNTIME": "onnxruntime", "DFS_PRECISION": "fp32", "DFS_BATCH_MAX_FRAMES": "64"},
    "ort-b16": {"DFS_RUNTIME": "onnxruntime", "DFS_PRECISION": "fp32", "DFS_BATCH_MAX_FRAMES": "16"},
    "openvino": {"DFS_RUNTIME": "openvino", "DFS_PRECISION": "fp32"},
    "ort-int8": {"DFS_RUNTIME": "onnxruntime", "DFS_PRECISION": "int8"},
    "openvino-int8": {"DFS_RUNTIME": "openvino", "DFS_PRECISION": "int8"},
    # OpenVINO computing the fp32 files in bfloat16 (only on CPUs with AVX-512 BF16 / AMX; elsewhere fp32)
    "openvino-bf16": {"DFS_RUNTIME": "openvino", "DFS_PRECISION": "bf16"},
}


@dataclass
class LevelResult:
    profile: str
    clients: int
    requests: int
    ok: int
    errors: dict[str, int]
    seconds: float
    videos_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    rss_mb_before: float | None
    rss_mb_after: float | None
    rss_mb_peak: float | None
    gpu_mb_before: float | None
    gpu_mb_after: float | None
    stage_ms_mean: dict[str, float] = field(default_factory=dict)
    runtimes: dict[str, str] = field(default_factory=dict)


# --- process memory ---------------------------------------------------------------------------


def rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    """Resident memory of ``pid`` from /proc (Linux), in MB; ``field="VmHWM"`` is its peak so far."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def gpu_mb(pid: int) -> float | None:
    """GPU memory ``pid`` holds, from nvidia-smi (None where there is no NVIDIA driver)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    used = [
        float(mem) for p, mem in (line.split(",") for line in out.strip().splitlines() if "," in line) if int(p) == pid
    ]
    return sum(used) if used else 0.0


# --- inputs -----------------------------------------------------------------------------------


def make_video(source: Path, target: Path, seconds: float, height: int) -> Path:
    """A ``seconds``-long H.264 MP4 at ``height`` lines: ``source`` resized and looped.

    The GPU acceptance run asks for 10 s 1080p single-face videos; the shared media are shorter and
    mostly smaller, so this makes one from a real face video rather than a synthetic pattern.
    """
    import av
    import cv2

    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 25)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError(f"{source}: no frames")
    width = int(round(frames[0].shape[1] * height / frames[0].shape[0] / 2)) * 2
    with av.open(str(target), "w") as out:
        video = out.add_stream("libx264", rate=round(fps))
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"crf": "20", "preset": "veryfast"}
        for index in range(int(seconds * round(fps))):
            # play forwards then backwards so the loop has no jump cut (a cut would split the track)
            cycle = index % (2 * len(frames) - 2) if len(frames) > 1 else 0
            rgb = frames[cycle if cycle < len(frames) else 2 * len(frames) - 2 - cycle]
            resized = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_CUBIC)
            for packet in video.encode(av.VideoFrame.from_ndarray(resized, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
    return target


def torch_repository(repository: Path, target: Path) -> tuple[Path, list[str]]:
    """A copy of ``repository`` whose manifests name a readable torch checkpoint for each model.

    Returns the copy and the models that got random-init weights (speed-only stand-ins).
    """
    import torch

    from export.manifest import Manifest
    from models import create_model

    stand_ins: list[str] = []
    shutil.copytree(repository, target, ignore=shutil.ignore_patterns("*.plan"))
    for manifest_path in sorted(target.glob("*/*/manifest.json")):
        manifest = Manifest.read(manifest_path.parent)
        source = Path(manifest.source.path) if manifest.source.path else None
        if source is not None and not source.is_absolute():
            source = Path(__file__).resolve().parents[1] / source
        if source is None or not source.is_file():
            kwargs = manifest.source.model_kwargs
            source = manifest_path.parent / "random_init.pt"
            torch.save(
                {
                    "model": manifest.name,
                    "model_kwargs": kwargs,
                    "state_dict": create_model(manifest.name, **kwargs).state_dict(),
                },
                source,
            )
            stand_ins.append(manifest.name)
        manifest.source.path = str(source)
        manifest.write(manifest_path.parent)
    return target, stand_ins


# --- load generation ------------------------------------------------------------------------


async def run_level(service: LiveService, video: Path, clients: int, requests: int, timeout: float) -> dict:
    """``requests`` POSTs from ``clients`` concurrent clients; latency per request and wall time."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    bodies: list[dict] = []
    remaining = iter(range(requests))

    async def client_loop(client: httpx.AsyncClient) -> None:
        for _ in remaining:
            started = time.perf_counter()
            try:
                response = await client.post("/predict", json={"file_path": str(video)})
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
                bodies.append(response.json())
            else:
                key = f"HTTP {response.status_code} {response.json().get('error', '')}".strip()
                errors[key] = errors.get(key, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=service.base_url, timeout=timeout, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*[client_loop(client) for _ in range(clients)])
        seconds = time.perf_counter() - started
    return {"latencies": latencies, "errors": errors, "bodies": bodies, "seconds": seconds}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def measure(
    profile: str, service: LiveService, video: Path, clients: int, requests: int, timeout: float
) -> LevelResult:
    rss_before, gpu_before = rss_mb(service.pid), gpu_mb(service.pid)
    raw = asyncio.run(run_level(service, video, clients, requests, timeout))
    stages: dict[str, list[float]] = {}
    for body in raw["bodies"]:
        for stage, ms in body.get("timings_ms", {}).items():
            stages.setdefault(stage, []).append(ms)
    latencies_ms = [s * 1000 for s in raw["latencies"]]
    with service.client(timeout=10) as client:
        runtimes = {m["name"]: m["runtime"] for m in client.get("/models").json()}
    return LevelResult(
        profile=profile,
        clients=clients,
        requests=requests,
        ok=len(raw["latencies"]),
        errors=raw["errors"],
        seconds=round(raw["seconds"], 3),
        videos_per_s=len(raw["latencies"]) / raw["seconds"] if raw["seconds"] else 0.0,
        p50_ms=percentile(latencies_ms, 50),
        p99_ms=percentile(latencies_ms, 99),
        rss_mb_before=rss_before,
        rss_mb_after=rss_mb(service.pid),
        rss_mb_peak=rss_mb(service.pid, "VmHWM"),
        gpu_mb_before=gpu_before,
        gpu_mb_after=gpu_mb(service.pid),
        stage_ms_mean={k: round(statistics.fmean(v), 1) for k, v in stages.items()},
        runtimes=runtimes,
    )


def soak(service: LiveService, video: Path, clients: int, total: int, timeout: float) -> list[dict]:
    """``total`` requests in ten slices; server memory after each (growth means a leak)."""
    samples = [{"requests": 0, "rss_mb": rss_mb(service.pid), "gpu_mb": gpu_mb(service.pid), "errors": 0}]
    done = 0
    for part in range(10):
        count = total * (part + 1) // 10 - done
        raw = asyncio.run(run_level(service, video, clients, count, timeout))
        done += count
        samples.append(
            {
                "requests": done,
                "rss_mb": rss_mb(service.pid),
                "gpu_mb": gpu_mb(service.pid),
                "errors": sum(raw["errors"].values()),
            }
        )
        print(
            f"  soak {done}/{total}: rss {fmt(samples[-1]['rss_mb'])} MB, gpu {fmt(samples[-1]['gpu_mb'])} MB",
            flush=True,
        )
    return samples


# --- report ---------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def tree_commit(tree: Path) -> str | None:
    """The commit ``tree`` has checked out (None outside git), so a JSON report says what "then" was."""
    try:
        out = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def start_local_triton(repository: Path, workdir: Path) -> TritonServer:
    """A tritonserver on loopback serving ``repository`` through the python backend (ONNX Runtime in
    model.py), the CPU stand-in for a GPU Triton: the remote call's cost, not a GPU's speed."""
    reason = missing_reason()
    if reason:
        raise SystemExit(f"the triton profile needs a Triton server: {reason}, or pass --triton-url")
    served = workdir / "repository"
    write_python_backend_repository(repository, served, TritonOptions(instance_kind="cpu"))
    return start_triton(served, workdir)


def span(before: float | None, after: float | None) -> str:
    return "-" if before is None and after is None else f"{fmt(before)}->{fmt(after)}"


def speedup(result: LevelResult, results: list[LevelResult], reference: str) -> float | None:
    """``result``'s videos/s over the ``reference`` profile's at the same client count (None without it)."""
    same = next((r for r in results if r.profile == reference and r.clients == result.clients and r.ok), None)
    return result.videos_per_s / same.videos_per_s if same and result.ok else None


def print_table(results: list[LevelResult]) -> None:
    print(
        f"{'profile':13} {'clients':>7} {'ok/req':>8} {'s/video':>8} {'videos/s':>9} {'vs ort':>7} {'vs then':>8} "
        f"{'p50 ms':>9} {'p99 ms':>9} {'rss MB':>13} {'peak MB':>8} {'gpu MB':>13}  errors"
    )
    for r in results:
        per_video = r.seconds * r.clients / r.ok if r.ok else None
        print(
            f"{r.profile:13} {r.clients:7d} {f'{r.ok}/{r.requests}':>8} {fmt(per_video, '.2f'):>8} "
            f"{r.videos_per_s:9.3f} {fmt(speedup(r, results, 'ort'), '.2f'):>7} "
            f"{fmt(speedup(r, results, 'then'), '.2f'):>8} {fmt(r.p50_ms):>9} {fmt(r.p99_ms):>9} "
            f"{span(r.rss_mb_before, r.rss_mb_after):>13} {fmt(r.rss_mb_peak):>8} "
            f"{span(r.gpu_mb_before, r.gpu_mb_after):>13}  {r.errors or ''}"
        )


def print_stages(results: list[LevelResult]) -> None:
    """Mean server-side milliseconds per stage, per profile and client count (the response's timings_ms)."""
    stages = list(dict.fromkeys(stage for r in results for stage in r.stage_ms_mean))
    if not stages:
        return
    print(f"\n{'stage ms (mean)':19}" + "".join(f"{stage[:12]:>13}" for stage in stages))
    for r in results:
        print(f"{r.profile[:13]:13} x{r.clients:<4d}" + "".join(f"{fmt(r.stage_ms_mean.get(s)):>13}" for s in stages))


def ratios(results: list[LevelResult]) -> list[dict]:
    """service videos/s over the torch profile (same clients) and over the sequential baseline."""
    baseline = next((r for r in results if r.profile == "baseline" and r.ok), None)
    rows = []
    for r in results:
        if r.profile != "service" or not r.ok:
            continue
        torch_same = next((t for t in results if t.profile == "torch" and t.clients == r.clients and t.ok), None)
        rows.append(
            {
                "clients": r.clients,
                "vs_torch": r.videos_per_s / torch_same.videos_per_s if torch_same else None,
                "vs_baseline": r.videos_per_s / baseline.videos_per_s if baseline else None,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--video", type=Path, default=DEFAULT_VIDEO, help="local video every client posts (default: %(default)s)"
    )
    parser.add_argument(
        "--make-video",
        type=float,
        metavar="SECONDS",
        help="post a SECONDS-long copy of --video resized to --height instead (H.264)",
    )
    parser.add_argument("--height", type=int, default=1080, help="height for --make-video (default: %(default)s)")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument(
        "--profiles",
        default="service,torch,baseline",
        help="comma list of service, torch, baseline, then (needs --then-tree) and the CPU engine variants "
        f"{', '.join(CPU_PROFILES)} (e.g. --profiles ort,openvino,openvino-bf16,ort-int8,service)",
    )
    parser.add_argument(
        "--then-tree",
        type=Path,
        help="the then profile's checkout: another commit's tree (git worktree add --detach DIR REV) whose "
        "service runs with its own defaults on --repository, with this interpreter",
    )
    parser.add_argument("--clients", default="1,8,32", help="comma list of concurrent clients (default: %(default)s)")
    parser.add_argument("--requests", type=int, help="requests per client count (default: 2 x clients, at least 4)")
    parser.add_argument("--baseline-requests", type=int, default=2, help="requests for the sequential baseline")
    parser.add_argument("--max-frames", type=int, help="DFS_MAX_FRAMES for every profile (default: the service's)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="DFS_DEVICE")
    parser.add_argument("--retinaface-weights", type=Path, help="DFS_RETINAFACE_WEIGHTS for every profile")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra DFS_* setting for the service and torch profiles (repeatable); "
        "DFS_RUNTIME=torch serves the service profile from torch checkpoints too",
    )
    parser.add_argument(
        "--soak",
        type=int,
        default=0,
        metavar="N",
        help="after the levels, N more requests to the service profile at the largest client count, "
        "sampling its memory ten times",
    )
    parser.add_argument(
        "--triton-url",
        help="the triton profile's Triton server (e.g. http://gpu-node:8000, serving "
        "this repository); default: start nvidia-pytriton's tritonserver on loopback, on the CPU, "
        "with the python-backend variant of --repository (bench/triton_server.py)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per request")
    parser.add_argument("--json", type=Path, help="write results here")
    args = parser.parse_args(argv)

    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    unknown = set(profiles) - {"service", "torch", "baseline", "triton", "then", *CPU_PROFILES}
    if unknown:
        parser.error(f"unknown profiles: {', '.join(sorted(unknown))}")
    if "then" in profiles and not (args.then_tree and (args.then_tree / "service" / "__main__.py").is_file()):
        parser.error("the then profile needs --then-tree: a checkout holding service/__main__.py")
    then_tree = args.then_tree.resolve() if args.then_tree else None
    then_commit = tree_commit(then_tree) if then_tree else None  # asked once: the table and the JSON say it
    levels = [int(c) for c in args.clients.split(",")]
    work = Path(tempfile.mkdtemp(prefix="dfs-bench-"))
    video = args.video.resolve()
    if args.make_video:
        video = make_video(
            video, work / f"{video.stem}_{args.height}p_{args.make_video:g}s.mp4", args.make_video, args.height
        )
        print(f"made {video}")
    common = {
        "DFS_LOCAL_ROOTS": str(video.parent),
        "DFS_DEVICE": args.device,
        "DFS_MODEL_REPOSITORY": str(args.repository.resolve()),
        "DFS_LOG_LEVEL": "warning",
        "DFS_MAX_QUEUED_REQUESTS": str(max(levels) * 2),
    }
    if args.max_frames:
        common["DFS_MAX_FRAMES"] = str(args.max_frames)
    if args.retinaface_weights:
        common["DFS_RETINAFACE_WEIGHTS"] = str(args.retinaface_weights.resolve())
    extra = dict(item.split("=", 1) for item in args.env)

    stand_ins: list[str] = []
    failed: dict[str, str] = {}  # profile -> why its service did not start
    results: list[LevelResult] = []
    soak_samples: list[dict] = []
    try:
        service_on_torch = extra.get("DFS_RUNTIME") == "torch"  # e.g. a GPU without onnxruntime-gpu
        if {"torch", "baseline"} & set(profiles) or service_on_torch:
            torch_repo, stand_ins = torch_repository(args.repository, work / "torch_repository")
        for profile in profiles:
            env = {**common, **(extra if profile not in ("baseline", "then") else {})}
            if profile == "service" and service_on_torch:
                env["DFS_MODEL_REPOSITORY"] = str(torch_repo)
            if profile == "torch":
                env |= {"DFS_RUNTIME": "torch", "DFS_MODEL_REPOSITORY": str(torch_repo)}
            env |= CPU_PROFILES.get(profile, {})
            if profile == "baseline":
                env |= BASELINE_ENV | {"DFS_MODEL_REPOSITORY": str(torch_repo)}
            triton = None
            if profile == "triton":
                url = args.triton_url
                if not url:
                    triton = start_local_triton(args.repository, work / "triton")
                    url = triton.url
                    print(f"[triton] tritonserver ready at {url} in {triton.started_in_s:.1f} s", flush=True)
                env |= {"DFS_RUNTIME": "triton", "DFS_TRITON_URL": url}
            print(f"[{profile}] starting the service", flush=True)
            try:
                tree = then_tree if profile == "then" else None
                service = start_service(env, work / f"{profile}.log", ready_timeout=900, source_tree=tree)
            except RuntimeError as exc:  # this profile cannot run; the others' results still print
                failed[profile] = str(exc).strip().splitlines()[-1][:300]
                print(f"[{profile}] did not start: {failed[profile]}", file=sys.stderr, flush=True)
                continue
            finally:
                if triton and profile in failed:
                    stop_triton(triton)
            try:
                measure(profile, service, video, 1, 1, args.timeout)  # warm-up: lazy init, first batches
                for clients in [1] if profile == "baseline" else levels:
                    requests = (
                        args.baseline_requests if profile == "baseline" else (args.requests or max(4, 2 * clients))
                    )
                    print(f"[{profile}] {clients} clients x {requests} requests", flush=True)
                    results.append(measure(profile, service, video, clients, requests, args.timeout))
                    if results[-1].errors:  # say why, from the server's own log
                        print("\n".join(service.log_text().splitlines()[-25:]), file=sys.stderr)
                if profile == "service" and args.soak:
                    soak_samples = soak(service, video, max(levels), args.soak, args.timeout)
            finally:
                stop_service(service)
                if triton:
                    stop_triton(triton)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"video: {video.name}")
    if then_tree:
        print(f"then: {then_tree} at {then_commit or 'an unknown commit'}")
    for profile in dict.fromkeys(r.profile for r in results):
        served = next(r.runtimes for r in results if r.profile == profile)
        print(f"  {profile}: " + ", ".join(f"{name} {runtime}" for name, runtime in served.items()))
    if stand_ins:
        print(f"torch/baseline profiles use random-init weights for {', '.join(stand_ins)} (speed only)")
    for profile, reason in failed.items():
        print(f"  {profile}: did not start: {reason}")
    print_table(results)
    print_stages(results)
    ratio_rows = ratios(results)
    if ratio_rows:
        print()
        print(f"{'clients':>7} {'service/torch':>14} {'service/baseline':>17}")
        for row in ratio_rows:
            print(f"{row['clients']:7d} {fmt(row['vs_torch'], '.2f'):>14} {fmt(row['vs_baseline'], '.2f'):>17}")
    if soak_samples:
        first, last = soak_samples[0], soak_samples[-1]
        print(
            f"\nsoak: {last['requests']} requests, rss {fmt(first['rss_mb'])} -> {fmt(last['rss_mb'])} MB, "
            f"gpu {fmt(first['gpu_mb'])} -> {fmt(last['gpu_mb'])} MB, errors {sum(s['errors'] for s in soak_samples)}"
        )
    if args.json:
        meta = {
            "machine": platform.node(),
            "cpu": platform.processor() or platform.machine(),
            "video": str(args.video),
            "made_video": {"seconds": args.make_video, "height": args.height} if args.make_video else None,
            "random_init_stand_ins": stand_ins,
            "baseline_env": BASELINE_ENV,
            "extra_env": extra,
            "then_tree": str(then_tree) if then_tree else None,
            "then_commit": then_commit,
        }
        args.json.write_text(
            json.dumps(
                {"meta": meta, "levels": [asdict(r) for r in results], "ratios": ratio_rows, "soak": soak_samples},
                indent=2,
            )
        )
    return 0 if all(r.ok for r in results) and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
