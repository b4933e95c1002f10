"""Load test on loopback: good videos and bad inputs at once, 16 then 64 clients, with probes polled.

    python bench/load.py                                   # 16 then 64 clients, 120 s each
    python bench/load.py --clients 2 --duration 5          # a smoke run
    python bench/load.py --fetch --json load.json          # downloads from the loopback file server too

Starts the real service (``python -m service``, ``service.launcher``) on 127.0.0.1 with
``--repository`` and ``DFS_LOCAL_ROOTS`` on the good videos' folder and a temp folder of bad inputs,
plus a file server on 127.0.0.1. Each client loops over a fixed mix of request kinds (one of each
in turn, shuffled per client): good videos by local path and as uploads, and bad inputs (an empty
file, a truncated MP4, a PNG named .mp4, an unknown model, malformed JSON, an oversize body, and a
private URL: the file server's own address, which the service must refuse without fetching it;
with ``--fetch`` loopback URLs are allowed and good and bad files are downloaded from that server
instead). Nothing leaves the machine: every address is 127.0.0.1.

A warm-up at the first client count comes first (lazy initialisation, ONNX Runtime's arenas
growing to the largest batches), then each phase runs ``--duration`` seconds (new requests stop
there; those in flight finish), all under a hard cap of ``--max-requests``. Beside the clients a
side task polls ``/healthcheck`` and ``/metrics`` every second. The table gives, per phase, the
status codes, p50/p99 latency of good requests that scored (200), the server's RSS before and
after, and how the probes fared (failures, slowest answer); then PASS or FAIL against:

- good inputs answered only 200 or 503 (queue full); each bad input only its documented 4xx (or
  503; the truncated MP4 may also be scored, 200, if enough frames decode before the cut, and must
  then say so in ``warnings``); never a 500 and no transport error;
- the server's RSS at the end within 5% of its RSS at the end of the warm-up (no leak);
- ``/healthcheck`` and ``/metrics`` answered 200 every time;
- the private URL never fetched (the file server saw no request for it).

``--json`` writes the whole result. Exit status: 0 on PASS, 1 on FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.e2e import rss_mb  # noqa: E402 - one /proc reader for every bench script
from service.launcher import LiveService, start_service, stop_service  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = REPO_ROOT.parent / "shared" / "data" / "videos"
DEFAULT_VIDEOS = [SHARED_VIDEOS / "wild_real_Obama.mp4", SHARED_VIDEOS / "wild_fake_Reagan.mp4"]
RSS_GROWTH_LIMIT = 0.05
GOOD_STATUSES = frozenset({200, 503})


# --- inputs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One kind of request: how to send it and which statuses are right for it."""

    name: str
    good: bool
    expected: frozenset[int]
    send: Callable[[httpx.AsyncClient], object]  # returns the awaitable request
    #: for a 200, what its body must also show (a scored truncated file must say it was cut short)
    check_ok: Callable[[dict], str | None] | None = None  # the problem, or None


def says_truncated(max_frames: int) -> Callable[[dict], str | None]:
    """A truncated file that still decodes enough frames is scored, with a warning saying so when
    the cut falls inside the frames analysed (the service tolerates a frame or two)."""

    def check(body: dict) -> str | None:
        video = body.get("video", {})
        planned = min(video.get("frames") or max_frames, max_frames)
        if video.get("frames_analyzed", 0) >= planned - 2:
            return None  # cut after the frames the service reads: nothing to warn about
        if any("truncated" in w for w in body.get("warnings", [])):
            return None
        return "no-truncation-warning"

    return check


def write_bad_inputs(folder: Path, good_video: Path) -> dict[str, Path]:
    """An empty file, the first third of a real MP4 (its index is at the end: not decodable), and
    a PNG under a .mp4 name."""
    import cv2
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    empty, truncated, png = folder / "empty.mp4", folder / "truncated.mp4", folder / "image.mp4"
    empty.write_bytes(b"")
    data = good_video.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    ok, encoded = cv2.imencode(".png", np.full((64, 64, 3), 128, np.uint8))
    if not ok:
        raise RuntimeError("OpenCV could not encode a 64x64 PNG")
    png.write_bytes(encoded.tobytes())
    return {"empty": empty, "truncated": truncated, "png_named_mp4": png}


class FileServer:
    """A threaded HTTP server on 127.0.0.1 serving ``folder``; it remembers every path asked for."""

    def __init__(self, folder: Path) -> None:
        seen: Counter[str] = Counter()
        self.seen = seen

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(folder), **kwargs)  # type: ignore[misc]

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                seen[self.path] += 1
                super().do_GET()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def close(self) -> None:
        self.server.shutdown()


def request_kinds(
    videos: list[Path], bad: dict[str, Path], files: FileServer, *, fetch: bool, max_json_bytes: int, max_frames: int
) -> list[Kind]:
    """The mix every client cycles through (see the module docstring)."""

    def post(body: object) -> Callable[[httpx.AsyncClient], object]:
        return lambda client: client.post("/predict", json=body)

    def raw(content: bytes) -> Callable[[httpx.AsyncClient], object]:
        return lambda client: client.post("/predict", content=content, headers={"content-type": "application/json"})

    def upload(path: Path) -> Callable[[httpx.AsyncClient], object]:
        data = path.read_bytes()
        return lambda client: client.post("/predict/upload", files={"file": (path.name, data, "video/mp4")})

    kinds = []
    for video in videos:
        source = files.url(video.name) if fetch else str(video)
        kinds.append(Kind(f"good:{video.stem}", True, GOOD_STATUSES, post({"file_path": source})))
        kinds.append(Kind(f"good_upload:{video.stem}", True, GOOD_STATUSES, upload(video)))
    for name, path in bad.items():
        source = files.url(path.name) if fetch else str(path)
        if name == "truncated":  # decodes up to the cut: 415 too_few_frames, or scored with a warning
            kinds.append(
                Kind(name, False, frozenset({200, 415, 503}), post({"file_path": source}), says_truncated(max_frames))
            )
        else:
            kinds.append(Kind(name, False, frozenset({415, 503}), post({"file_path": source})))
    kinds += [
        Kind(
            "unknown_model", False, frozenset({400}), post({"file_path": str(videos[0]), "models": ["no_such_model"]})
        ),
        Kind("malformed_json", False, frozenset({400}), raw(b'{"file_path": ')),
        Kind(
            "oversize_body",
            False,
            frozenset({413}),
            raw(json.dumps({"file_path": "x" * (max_json_bytes + 1)}).encode()),
        ),
    ]
    if not fetch:  # with --fetch loopback addresses are allowed, so there is no private URL to refuse
        kinds.append(
            Kind("private_url", False, frozenset({403}), post({"file_path": files.url("private/" + videos[0].name)}))
        )
    return kinds


# --- measuring --------------------------------------------------------------------------------


@dataclass
class Probe:
    """How one probe route answered while a phase ran."""

    polls: int = 0
    failures: int = 0
    slowest_ms: float = 0.0
    failed: list[str] = field(default_factory=list)  # the first few failures, for the report


@dataclass
class PhaseResult:
    name: str
    clients: int
    seconds: float
    requests: int
    statuses: dict[str, int]  # "200", "415", "error:ReadTimeout", ...
    by_kind: dict[str, dict[str, int]]
    unexpected: dict[str, dict[str, int]]  # kind -> statuses outside its expected set
    good_ok: int
    good_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    rss_mb_before: float | None
    rss_mb_after: float | None
    healthcheck: Probe
    metrics: Probe


async def poll_probes(client: httpx.AsyncClient, stop: asyncio.Event) -> dict[str, Probe]:
    """GET /healthcheck and /metrics every second until ``stop``; each must be a quick 200."""
    probes = {"/healthcheck": Probe(), "/metrics": Probe()}
    while not stop.is_set():
        for path, probe in probes.items():
            started = time.perf_counter()
            try:
                status = str((await client.get(path, timeout=30)).status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            elapsed = (time.perf_counter() - started) * 1000
            probe.polls += 1
            probe.slowest_ms = max(probe.slowest_ms, elapsed)
            if status != "200":
                probe.failures += 1
                if len(probe.failed) < 5:
                    probe.failed.append(status)
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            pass
    return probes


class Budget:
    """The hard cap on requests across all phases."""

    def __init__(self, total: int) -> None:
        self.left = total

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


async def client_loop(
    client: httpx.AsyncClient,
    kinds: list[Kind],
    seed: int,
    deadline: float,
    budget: Budget,
    record: Callable[[Kind, str, float], None],
) -> None:
    """One client: the kinds in a shuffled cycle until the deadline or the cap."""
    order = list(kinds)
    random.Random(seed).shuffle(order)
    index = 0
    while time.monotonic() < deadline and budget.take():
        kind = order[index % len(order)]
        index += 1
        started = time.perf_counter()
        try:
            response: httpx.Response = await kind.send(client)  # type: ignore[misc]
            status = str(response.status_code)
            if status == "200" and kind.check_ok is not None and (problem := kind.check_ok(response.json())):
                status = f"200:{problem}"  # outside every expected set: a FAIL
        except httpx.HTTPError as exc:
            status = f"error:{type(exc).__name__}"
        record(kind, status, time.perf_counter() - started)


def percentile(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def run_phase(
    service: LiveService, name: str, kinds: list[Kind], clients: int, seconds: float, budget: Budget, timeout: float
) -> PhaseResult:
    """``clients`` concurrent clients for ``seconds`` (in-flight requests finish), probes polled beside."""
    by_kind: dict[str, Counter[str]] = {kind.name: Counter() for kind in kinds}
    good_latencies: list[float] = []

    def record(kind: Kind, status: str, elapsed: float) -> None:
        by_kind[kind.name][status] += 1
        if kind.good and status == "200":
            good_latencies.append(elapsed * 1000)

    rss_before = rss_mb(service.pid)
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=service.base_url, timeout=timeout, limits=limits, trust_env=False) as client:
        stop = asyncio.Event()
        probes = asyncio.create_task(poll_probes(client, stop))
        started = time.perf_counter()
        deadline = time.monotonic() + seconds
        await asyncio.gather(*[client_loop(client, kinds, seed, deadline, budget, record) for seed in range(clients)])
        elapsed = time.perf_counter() - started
        stop.set()
        polled = await probes
    statuses = sum(by_kind.values(), Counter())
    expected = {kind.name: kind.expected for kind in kinds}
    unexpected = {
        k: {s: n for s, n in c.items() if not (s.isdigit() and int(s) in expected[k])} for k, c in by_kind.items()
    }
    return PhaseResult(
        name=name,
        clients=clients,
        seconds=round(elapsed, 2),
        requests=sum(statuses.values()),
        statuses=dict(sorted(statuses.items())),
        by_kind={k: dict(sorted(c.items())) for k, c in by_kind.items()},
        unexpected={k: v for k, v in unexpected.items() if v},
        good_ok=len(good_latencies),
        good_per_s=round(len(good_latencies) / elapsed, 3) if elapsed else 0.0,
        p50_ms=percentile(good_latencies, 50),
        p99_ms=percentile(good_latencies, 99),
        rss_mb_before=rss_before,
        rss_mb_after=rss_mb(service.pid),
        healthcheck=polled["/healthcheck"],
        metrics=polled["/metrics"],
    )


# --- verdict and report -------------------------------------------------------------------------


def verdict(phases: list[PhaseResult], private_fetches: int) -> list[str]:
    """The reasons to FAIL (empty: PASS). The warm-up's own statuses count too; its RSS is the base."""
    reasons = []
    for phase in phases:
        for kind, statuses in phase.unexpected.items():
            reasons.append(f"{phase.name}: {kind} answered {statuses}")
        for route, probe in (("/healthcheck", phase.healthcheck), ("/metrics", phase.metrics)):
            if probe.failures or not probe.polls:
                reasons.append(f"{phase.name}: {route} failed {probe.failures} of {probe.polls} polls {probe.failed}")
    base, end = phases[0].rss_mb_after, phases[-1].rss_mb_after
    if base is None or end is None:
        reasons.append("the server's RSS could not be read")
    elif end > base * (1 + RSS_GROWTH_LIMIT):
        reasons.append(
            f"RSS grew {100 * (end / base - 1):.1f}% after the warm-up ({base:.0f} -> {end:.0f} MB), "
            f"above {100 * RSS_GROWTH_LIMIT:.0f}%"
        )
    if private_fetches:
        reasons.append(f"the private URL was fetched {private_fetches} time(s)")
    return reasons


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(phases: list[PhaseResult]) -> None:
    print(
        f"{'phase':8} {'clients':>7} {'s':>6} {'requests':>8} {'good 200/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'rss MB':>11} {'health fail/slowest':>19} {'metrics fail/slowest':>20}  statuses"
    )
    for p in phases:
        health = f"{p.healthcheck.failures}/{p.healthcheck.slowest_ms:.0f}ms"
        metrics = f"{p.metrics.failures}/{p.metrics.slowest_ms:.0f}ms"
        print(
            f"{p.name:8} {p.clients:7d} {p.seconds:6.0f} {p.requests:8d} {p.good_per_s:10.2f} {fmt(p.p50_ms):>8} "
            f"{fmt(p.p99_ms):>8} {fmt(p.rss_mb_before) + '->' + fmt(p.rss_mb_after):>11} {health:>19} "
            f"{metrics:>20}  {p.statuses}"
        )


def print_kinds(phases: list[PhaseResult], kinds: list[Kind]) -> None:
    print(f"\n{'kind':28} {'expected':>12}  statuses per phase")
    for kind in kinds:
        cells = "  ".join(f"{p.name}: {p.by_kind.get(kind.name, {})}" for p in phases)
        print(f"{kind.name:28} {','.join(map(str, sorted(kind.expected))):>12}  {cells}")


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--repository",
        type=Path,
        default=REPO_ROOT / "model_repository",
        help="model repository to serve (default: the bundled model_repository/)",
    )
    parser.add_argument(
        "--videos",
        type=Path,
        nargs="+",
        default=None,
        help=f"good videos (default: {', '.join(p.name for p in DEFAULT_VIDEOS)} from {SHARED_VIDEOS})",
    )
    parser.add_argument(
        "--clients", default="16,64", help="comma list of concurrent clients, one phase each (default: %(default)s)"
    )
    parser.add_argument("--duration", type=float, default=120.0, help="seconds per phase (default: %(default)s)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds of warm-up at the first client count (default: a quarter of --duration, "
        "at least 5); its RSS at the end is the base of the growth check",
    )
    parser.add_argument(
        "--max-requests", type=int, default=20000, help="hard cap on requests over all phases (default: %(default)s)"
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        default=64,
        help="DFS_MAX_FRAMES for the service (default: %(default)s: keeps a good request to about a second of CPU)",
    )
    parser.add_argument(
        "--fetch",
        action="store_true",
        help="allow loopback URLs and fetch good and bad files from "
        "the loopback file server (no private-URL kind then)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra DFS_* setting for the service (repeatable)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="shuffles each client's order of kinds")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    args.levels = [int(c) for c in args.clients.split(",") if c.strip()]
    if not args.levels or min(args.levels) < 1:
        parser.error("--clients needs positive client counts")
    args.videos = [p.resolve() for p in (args.videos or DEFAULT_VIDEOS)]
    missing = [str(p) for p in args.videos if not p.is_file()]
    if missing:
        parser.error(f"videos not found: {', '.join(missing)}")
    if args.warmup is None:
        args.warmup = max(5.0, args.duration / 4)
    return args


def service_env(args: argparse.Namespace, roots: list[Path]) -> dict[str, str]:
    env = {
        "DFS_MODEL_REPOSITORY": str(args.repository.resolve()),
        "DFS_LOCAL_ROOTS": ",".join(str(r) for r in roots),
        "DFS_MAX_FRAMES": str(args.max_frames),
        "DFS_ALLOW_PRIVATE_URLS": "true" if args.fetch else "false",
        "DFS_LOG_LEVEL": "warning",
    }
    return env | dict(item.split("=", 1) for item in args.env)


async def run_all(service: LiveService, kinds: list[Kind], args: argparse.Namespace) -> list[PhaseResult]:
    budget = Budget(args.max_requests)
    phases = [await run_phase(service, "warm-up", kinds, args.levels[0], args.warmup, budget, args.timeout)]
    print(f"[warm-up] {phases[-1].requests} requests, rss {fmt(phases[-1].rss_mb_after)} MB", flush=True)
    for clients in args.levels:
        print(f"[{clients} clients] {args.duration:g} s", flush=True)
        phases.append(await run_phase(service, f"{clients}", kinds, clients, args.duration, budget, args.timeout))
        if budget.left <= 0:
            print(f"hard cap of {args.max_requests} requests reached", flush=True)
            break
    return phases


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dfs-load-"))
    serve = work / "serve"
    serve.mkdir()
    bad = write_bad_inputs(work / "bad", args.videos[0])
    for path in [*args.videos, *bad.values()]:
        shutil.copy(path, serve / path.name)  # the file server's folder: good and bad side by side
    files = FileServer(serve)
    roots = sorted({p.parent for p in args.videos} | {work / "bad"})
    settings_env = service_env(args, roots)
    max_json = int(settings_env.get("DFS_MAX_JSON_BYTES", 64 * 1024))
    kinds = request_kinds(
        args.videos,
        bad,
        files,
        fetch=args.fetch,
        max_json_bytes=max_json,
        max_frames=int(settings_env["DFS_MAX_FRAMES"]),
    )
    print(f"starting the service ({args.repository}); {len(kinds)} request kinds", flush=True)
    try:
        service = start_service(settings_env, work / "service.log", ready_timeout=900)
        try:
            phases = asyncio.run(run_all(service, kinds, args))
            if any(p.unexpected for p in phases):  # say why, from the server's own log
                print("\n".join(service.log_text().splitlines()[-25:]), file=sys.stderr)
        finally:
            stop_service(service)
    finally:
        files.close()
        private_fetches = sum(n for path, n in files.seen.items() if path.startswith("/private/"))
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(
        f"videos: {', '.join(p.name for p in args.videos)}; repository: {args.repository}; "
        f"fetch: {'loopback URLs' if args.fetch else 'local paths and uploads'}"
    )
    print_table(phases)
    print_kinds(phases, kinds)
    reasons = verdict(phases, private_fetches)
    print(f"\n{'PASS' if not reasons else 'FAIL'}" + "".join(f"\n  - {r}" for r in reasons))
    if args.json:
        meta = {
            "machine": platform.node(),
            "cpu": platform.processor() or platform.machine(),
            "videos": [str(p) for p in args.videos],
            "repository": str(args.repository),
            "fetch": args.fetch,
            "env": settings_env,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "max_requests": args.max_requests,
            "rss_growth_limit": RSS_GROWTH_LIMIT,
        }
        args.json.write_text(
            json.dumps(
                {
                    "meta": meta,
                    "phases": [asdict(p) for p in phases],
                    "private_fetches": private_fetches,
                    "pass": not reasons,
                    "reasons": reasons,
                },
                indent=2,
            )
        )
    return 0 if not reasons else 1


if __name__ == "__main__":
    sys.exit(main())
