"""Long videos as jobs: does the server's memory stay bounded as a job analyses more frames?

    python bench/long_jobs.py                                   # a 60 s 720p video, 256 / 512 / 1024 frames
    python bench/long_jobs.py --seconds 120 --frames 256,1024,2048 --json long_jobs.json

``POST /jobs`` may analyse up to ``DFS_JOB_MAX_FRAMES`` frames, more than /predict's
``DFS_MAX_FRAMES``. The pipeline streams: faces are found frame by frame at detection size (only
boxes are kept), then a second pass decodes only the frames the sampled clips and frames use and
cuts their crops, whose number is capped per track (``DFS_MAX_CLIPS_PER_TRACK``,
``DFS_FRAMES_PER_TRACK``) and not by the video's length. This script measures that claim on the
real server: one service, one job per ``--frames`` value on a video made from a real face video
(``bench/e2e.py``'s ``make_video``), the server's resident memory sampled every 50 ms while each job
runs. A bounded pipeline shows the peak growing far less than the frames do.

Columns: frames analysed, wall seconds of the job (queued to done), the server's RSS before the job
and its peak during it, the crops scored (clips + frames over the models) and the face tracks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from bench.e2e import DEFAULT_VIDEO, make_video, rss_mb  # noqa: E402 - after the path
from service.launcher import LiveService, start_service, stop_service  # noqa: E402

POLL_S = 0.5
RSS_SAMPLE_S = 0.05


class JobDidNotFinish(RuntimeError):
    """A job was refused, failed, or ran past ``--timeout``: the table would mean nothing."""


@dataclass
class JobRun:
    frames_asked: int
    frames_analyzed: int
    seconds: float
    rss_before_mb: float
    rss_peak_mb: float
    items: int
    tracks: int
    prediction: str


class PeakRss:
    """Samples a process's resident memory in a thread until stopped; keeps the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid) or 0.0)
            self._stop.wait(RSS_SAMPLE_S)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_job(service: LiveService, video: Path, frames: int, timeout: float) -> JobRun:
    """One job over ``frames`` frames of ``video``; fails loudly when the job does not end done."""
    before = rss_mb(service.pid) or 0.0
    with service.client(timeout=60) as client, PeakRss(service.pid) as peak:
        started = time.perf_counter()
        answer = client.post("/jobs", json={"file_path": str(video), "max_frames": frames})
        if answer.status_code != 202:
            raise JobDidNotFinish(f"POST /jobs answered {answer.status_code}: {answer.text}")
        status_url = answer.json()["status_url"]
        deadline = started + timeout
        while True:
            job = client.get(status_url).json()
            if job["status"] in ("done", "failed", "cancelled"):
                break
            if time.perf_counter() > deadline:
                raise JobDidNotFinish(f"job over {frames} frames still {job['status']} after {timeout:g} s")
            time.sleep(POLL_S)
        seconds = time.perf_counter() - started
    if job["status"] != "done":
        raise JobDidNotFinish(f"job over {frames} frames ended {job['status']}: {job.get('error')}")
    result = job["result"]
    items = sum(m.get("clips", 0) + m.get("frames", 0) for m in result["models"].values())
    return JobRun(
        frames_asked=frames,
        frames_analyzed=result["video"]["frames_analyzed"],
        seconds=round(seconds, 2),
        rss_before_mb=round(before, 1),
        rss_peak_mb=round(max(peak.peak, before), 1),
        items=items,
        tracks=len(result["faces"]),
        prediction=result["prediction"],
    )


def print_table(runs: list[JobRun]) -> None:
    print(
        f"\n{'frames':>7} {'analysed':>8} {'seconds':>8} {'RSS before MB':>13} {'peak MB':>8} {'items':>6} {'tracks':>6}"
    )
    for run in runs:
        print(
            f"{run.frames_asked:>7} {run.frames_analyzed:>8} {run.seconds:>8.1f} {run.rss_before_mb:>13.0f} "
            f"{run.rss_peak_mb:>8.0f} {run.items:>6} {run.tracks:>6}"
        )
    if len(runs) > 1:
        first, last = runs[0], runs[-1]
        frame_ratio = last.frames_analyzed / max(first.frames_analyzed, 1)
        growth = last.rss_peak_mb - first.rss_peak_mb
        print(
            f"\n{frame_ratio:.1f}x the frames: peak RSS {growth:+.0f} MB ({first.rss_peak_mb:.0f} -> {last.rss_peak_mb:.0f})"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/long_jobs.py",
        description=__doc__.split("\n\n", 2)[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository", help="model repository served")
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="face video the long one is made from")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the video made (looped forth and back)")
    parser.add_argument("--height", type=int, default=720, help="its height in lines")
    parser.add_argument(
        "--frames", default="256,512,1024", help="comma list: the max_frames of one job each, in this order"
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one job may take")
    parser.add_argument("--env", action="append", default=[], metavar="DFS_X=V", help="extra service setting")
    parser.add_argument("--json", type=Path, help="also write the runs here")
    args = parser.parse_args(argv)
    try:
        args.frame_counts = [int(v) for v in args.frames.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--frames expects whole numbers separated by commas, got {args.frames!r}")
    if not args.frame_counts or min(args.frame_counts) < 1:
        parser.error("--frames needs at least one count >= 1")
    if not args.video.is_file():
        parser.error(f"--video {args.video} is not a file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dfs-long-jobs-") as work:
        folder = Path(work)
        print(f"making a {args.seconds:g} s {args.height}p video from {args.video.name} ...", flush=True)
        video = make_video(args.video, folder / "long.mp4", args.seconds, args.height)
        most = max(args.frame_counts)
        env = {
            "DFS_MODEL_REPOSITORY": str(args.repository.resolve()),
            "DFS_LOCAL_ROOTS": str(folder),
            "DFS_JOB_MAX_FRAMES": str(most),
            "DFS_JOBS_DB": str(folder / "jobs.sqlite"),
            "DFS_LOG_LEVEL": "warning",
            **dict(item.split("=", 1) for item in args.env),
        }
        service = start_service(env, folder / "service.log", ready_timeout=600)
        try:
            runs = []
            for frames in args.frame_counts:
                print(f"job over {frames} frames ...", flush=True)
                runs.append(run_job(service, video, frames, args.timeout))
        except JobDidNotFinish as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            stop_service(service)
    print_table(runs)
    if args.json:
        report = {"settings": vars(args), "runs": [asdict(run) for run in runs]}
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
