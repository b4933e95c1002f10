"""Sampling against cost: how far the video score moves from the exhaustive setting, and how much faster.

    python bench/sampling.py                                    # the bundle's held-out videos, CPU-sized
    python bench/sampling.py --max-frames 256 --json sampling.json   # the service's frame cap (GPU)

The service scores a few clips and frames per face track (``DFS_MAX_CLIPS_PER_TRACK``,
``DFS_CLIP_STRIDE``, ``DFS_FRAMES_PER_TRACK``); the FTCN deploy scored every 32-frame clip at stride
1. This starts the service once (the given repository, every model) and posts each video first with
the exhaustive setting (stride 1, every clip, every frame: the reference), then with each setting of
the grid as per-request overrides, so decode and faces are the same code and only sampling differs.

Per setting: mean and max |score - exhaustive score| of the ensemble and of each model, how often
the FAKE/REAL call agrees with the exhaustive one, and the mean server time per video (and the
speed-up over exhaustive). Prints one table, writes JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.held_out import DEFAULT_LABELS, labelled_videos  # noqa: E402
from service.config import Settings  # noqa: E402
from service.launcher import start_service, stop_service  # noqa: E402

EXHAUSTIVE = {"clip_stride": 1, "max_clips_per_track": 256, "frames_per_track": 256}
#: The service refuses overrides costlier than its limits (service/api/limits.py); this benchmark needs them.
EXHAUSTIVE_LIMITS = {
    "DFS_MIN_CLIP_STRIDE": "1",
    "DFS_MAX_CLIPS_PER_TRACK_LIMIT": "256",
    "DFS_FRAMES_PER_TRACK_LIMIT": "256",
}

#: (name, per-request overrides); ``default`` is what the service does when the request says nothing.
GRID: list[tuple[str, dict[str, int]]] = [
    ("1 clip, 2 frames", {"max_clips_per_track": 1, "frames_per_track": 2}),
    ("2 clips, 4 frames", {"max_clips_per_track": 2, "frames_per_track": 4}),
    ("4 clips, 8 frames", {"max_clips_per_track": 4, "frames_per_track": 8}),
    ("default", {}),
    ("8 clips, 8 frames", {"max_clips_per_track": 8, "frames_per_track": 8}),
    ("16 clips @16, 32 frames", {"clip_stride": 16, "max_clips_per_track": 16, "frames_per_track": 32}),
]


def post(client, video: Path, max_frames: int, overrides: dict[str, int]) -> dict:  # noqa: ANN001 - httpx.Client
    response = client.post("/predict", json={"file_path": str(video), "max_frames": max_frames, **overrides})
    body = response.json()
    if response.status_code != 200:
        raise RuntimeError(f"{video.name} {overrides}: HTTP {response.status_code} {body}")
    return body


def scores_of(body: dict) -> dict[str, float | None]:
    return {"ensemble": body["df_probability"], **{name: m["score"] for name, m in body["models"].items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS, help="label CSV (default: the bundle's)")
    parser.add_argument("--split", default="test", help="rows of this split (default: %(default)s)")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument(
        "--max-frames",
        type=int,
        default=128,
        help="frames per video for every setting (default: %(default)s; the service caps at "
        "DFS_MAX_FRAMES, 256 by default). Exhaustive FTCN costs one clip per frame.",
    )
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--json", type=Path, help="write per-video scores and the summary here")
    parser.add_argument("--from-json", type=Path, help="only re-print the table of an earlier --json run")
    args = parser.parse_args(argv)
    if args.from_json:
        per_video = json.loads(args.from_json.read_text())["videos"]
        print_table(summarise(per_video), per_video)
        return 0

    videos = labelled_videos(args.labels, args.split)
    defaults = Settings()
    print(
        f"service defaults: clip_stride {defaults.clip_stride}, max_clips_per_track {defaults.max_clips_per_track}, "
        f"frames_per_track {defaults.frames_per_track}; {len(videos)} videos, max_frames {args.max_frames}"
    )
    roots = sorted({str(path.parent) for path, _ in videos})
    log = Path(tempfile.mkdtemp(prefix="dfs-sampling-")) / "service.log"
    service = start_service(
        {
            "DFS_MODEL_REPOSITORY": str(args.repository.resolve()),
            "DFS_LOCAL_ROOTS": ",".join(roots),
            "DFS_MAX_FRAMES": str(max(args.max_frames, 1)),
            "DFS_LOG_LEVEL": "warning",
            **EXHAUSTIVE_LIMITS,
        },
        log,
    )
    per_video: list[dict] = []
    try:
        with service.client(timeout=args.timeout) as client:
            for path, label in videos:
                reference = post(client, path, args.max_frames, EXHAUSTIVE)
                row = {
                    "video": path.name,
                    "label": label,
                    "exhaustive": scores_of(reference),
                    "exhaustive_ms": reference["timings_ms"].get("total"),
                    "threshold": reference["threshold"],
                    "settings": {},
                }
                for name, overrides in GRID:
                    body = post(client, path, args.max_frames, overrides)
                    row["settings"][name] = {"scores": scores_of(body), "ms": body["timings_ms"].get("total")}
                per_video.append(row)
                print(
                    f"  {path.name}: exhaustive {row['exhaustive']['ensemble']}, default "
                    f"{row['settings']['default']['scores']['ensemble']}",
                    flush=True,
                )
    finally:
        stop_service(service)

    summary = summarise(per_video)
    print_table(summary, per_video)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "max_frames": args.max_frames,
                    "grid": dict(GRID),
                    "exhaustive": EXHAUSTIVE,
                    "summary": summary,
                    "videos": per_video,
                },
                indent=2,
            )
        )
    return 0


def summarise(per_video: list[dict]) -> dict[str, dict]:
    """Per setting: score deviation from exhaustive per output, call agreement, time."""
    summary: dict[str, dict] = {}
    exhaustive_ms = [r["exhaustive_ms"] for r in per_video if r["exhaustive_ms"]]
    exhaustive_scores = [r["exhaustive"]["ensemble"] for r in per_video if r["exhaustive"]["ensemble"] is not None]
    spread = statistics.pstdev(exhaustive_scores) if len(exhaustive_scores) > 1 else 0.0
    for name in per_video[0]["settings"] if per_video else []:  # the run's own grid (--from-json)
        outputs: dict[str, list[float]] = {}
        agree, times = [], []
        for row in per_video:
            setting = row["settings"][name]
            times.append(setting["ms"])
            for output, value in setting["scores"].items():
                reference = row["exhaustive"].get(output)
                if value is not None and reference is not None:
                    outputs.setdefault(output, []).append(abs(value - reference))
            ens, ref = setting["scores"]["ensemble"], row["exhaustive"]["ensemble"]
            if ens is not None and ref is not None:
                agree.append((ens >= row["threshold"]) == (ref >= row["threshold"]))
        mean_abs_diff = {k: statistics.fmean(v) for k, v in outputs.items()}
        summary[name] = {
            # scale-free views: calibration may squeeze scores near 0.5, so compare with how videos differ
            "rank_corr": {k: rank_corr(per_video, name, k) for k in outputs},
            "ensemble_diff_over_spread": mean_abs_diff["ensemble"] / spread
            if spread and "ensemble" in mean_abs_diff
            else None,
            "mean_abs_diff": mean_abs_diff,
            "max_abs_diff": {k: max(v) for k, v in outputs.items()},
            "call_agreement": sum(agree) / len(agree) if agree else None,
            "mean_ms": statistics.fmean(times) if times else None,
            "speedup": statistics.fmean(exhaustive_ms) / statistics.fmean(times) if times and exhaustive_ms else None,
        }
    summary["exhaustive"] = {"mean_ms": statistics.fmean(exhaustive_ms) if exhaustive_ms else None}
    return summary


def rank_corr(per_video: list[dict], setting: str, output: str) -> float | None:
    """Spearman correlation over videos between a setting's scores and the exhaustive ones."""
    pairs = [(r["settings"][setting]["scores"].get(output), r["exhaustive"].get(output)) for r in per_video]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    return float(spearmanr(*zip(*pairs, strict=True))[0]) if len(pairs) > 2 else None


def print_table(summary: dict[str, dict], per_video: list[dict]) -> None:
    outputs = sorted({k for r in per_video for k in r["exhaustive"]} - {"ensemble"}) + ["ensemble"]
    print()
    print(
        f"{'setting':24} "
        + " ".join(f"{'|d| ' + o:>15}" for o in outputs)
        + f" {'max|d| ens':>10} {'|d|/sd':>7} {'rank r':>7} {'agree':>6} {'ms/video':>9} {'speed-up':>8}"
    )
    for name in (n for n in summary if n != "exhaustive"):
        s = summary[name]
        cells = " ".join(f"{s['mean_abs_diff'].get(o, float('nan')):15.4f}" for o in outputs)
        print(
            f"{name:24} {cells} {s['max_abs_diff'].get('ensemble', float('nan')):10.4f} "
            f"{s['ensemble_diff_over_spread'] or float('nan'):7.3f} {s['rank_corr'].get('ensemble') or float('nan'):7.3f} "
            f"{s['call_agreement'] or 0:6.2f} {s['mean_ms'] or 0:9.0f} {s['speedup'] or 0:8.1f}"
        )
    print(
        f"{'exhaustive (stride 1)':24} "
        + " ".join(f"{0.0:15.4f}" for _ in outputs)
        + f" {0.0:10.4f} {0.0:7.3f} {1.0:7.3f} {1.0:6.2f} {summary['exhaustive']['mean_ms'] or 0:9.0f} {1.0:8.1f}"
    )


if __name__ == "__main__":
    sys.exit(main())
