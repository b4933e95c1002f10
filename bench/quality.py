"""Detection quality of a model repository as served: per model and for the ensemble, per data set and source.

    python bench/quality.py                                   # the default bundle on both default data sets
    python bench/quality.py --repository my_repo --max-frames 96 --out /tmp/quality
    python bench/quality.py --data mine=videos.csv:test       # any label list, one split
    python bench/quality.py --detect-every 4 --runtime onnxruntime --out /tmp/q4   # one setting changed
    python bench/quality.py --compare /tmp/q1 /tmp/q4         # earlier runs' AUCs side by side

Each labelled video goes through the service's own pipeline in this process (``export.served``,
the code ``python -m export.calibrate`` fits on: decode, faces, tracks, sampling, crops, the
exported engines, each model's manifest calibration, the ensemble the service would apply from
``DFS_ENSEMBLE_WEIGHTS`` or the repository's ``ensemble.json``). Sampling and detector follow the
``DFS_*`` settings of the environment; ``--max-frames`` and the other options override them.

Default data sets (``--data`` replaces them):

- ``corpus_val``: the ``val`` split of ``../shared/data/corpus/labels.csv`` (whole identities the
  corpus-trained models did not see);
- ``held_out``: the ``test`` rows of ``training/recipes/default_bundle.csv``, the older shared
  in-the-wild videos in ``../shared/data/videos/`` (bench/held_out.py's list) that the first bundle,
  trained on the other rows of that list, never saw;
- ``older_shared``: all 17 of those videos (``bench/older_shared_videos.csv``): held_out plus the 5
  real ones (a stage performance and street footage with several faces each, and the originals of
  three of held_out's fakes). The corpus-trained bundle saw none of them, so for it this is the
  larger unseen set (9 fake x 8 real pairs instead of 9 x 3).

Per model and for the ensemble: video AUC with its 95% bootstrap interval (fakes and reals
resampled apart: on tens of videos one pair moves the AUC by hundredths), AP, EER, accuracy, FPR
and FNR at the served threshold (0.5 for a model, whose calibration maps its threshold there;
``DFS_THRESHOLD`` for the ensemble), and the number of videos scored (a video without a face is
served NO_FACE: listed, not scored).
Per source (a group of videos by origin: the label list's ``dataset_of_origin``, else
``source_repo``, else the file name's prefix; fakes by manipulation method where the file name or
origin names one: FF++ Deepfakes/Face2Face/FaceSwap/NeuralTextures, Wav2Lip, SadTalker,
video-retalking, EMO, VASA-1, DreamTalk): the share called right, and for fakes the AUC against
all the real videos of the same data set (a source holds one class, AUC needs both).

Writes to ``--out`` (default ``bench/results/quality/``): ``roc.png`` (one panel per data set, a
curve per model and the ensemble), ``quality.md`` (the tables, also printed) and ``quality.json``
(the metrics and every video's scores).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.held_out import DEFAULT_LABELS  # noqa: E402
from export.served import (  # noqa: E402
    ServedRun,
    VideoScores,
    analysis_settings,
    collect,
    exits_on_served_error,
    labelled,
    served_scores,
)
from service.config import Settings  # noqa: E402
from training.metrics import auc_interval, binary_metrics  # noqa: E402
from training.sources import Source  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS_LABELS = REPO_ROOT.parent / "shared" / "data" / "corpus" / "labels.csv"
#: every older shared video (../shared/data/videos/), none of which the corpus-trained bundle saw: the
#: 12 of held_out and the 5 real ones the first bundle trained or validated on (72 fake-real pairs, not 27)
OLDER_SHARED_VIDEOS = REPO_ROOT / "bench" / "older_shared_videos.csv"
DEFAULT_DATA = (
    f"corpus_val={CORPUS_LABELS}:val",
    f"held_out={DEFAULT_LABELS}:test",
    f"older_shared={OLDER_SHARED_VIDEOS}:test",
)
ENSEMBLE = "ensemble"

#: manipulation methods recognised in a fake's file name or origin: (token pattern, name)
METHODS = (
    (r"deepfakes", "Deepfakes"),
    (r"face2face", "Face2Face"),
    (r"faceswap", "FaceSwap"),
    (r"neuraltextures", "NeuralTextures"),
    (r"wav2lip", "Wav2Lip"),
    (r"sadtalker", "SadTalker"),
    (r"retalking", "video-retalking"),
    (r"emo", "EMO"),
    (r"vasa-?1?", "VASA-1"),
    (r"dreamtalk", "DreamTalk"),
)


@dataclass
class DataSet:
    name: str
    labels: Path
    split: str | None
    sources: list[Source]
    origin: dict[str, str]  # video path -> source name


def parse_data(text: str) -> tuple[str, Path, str | None]:
    """``NAME=CSV[:SPLIT]`` (the split after the last colon, unless that part is a path)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise SystemExit(f"--data: expected NAME=CSV[:SPLIT], not {text!r}")
    path, colon, split = rest.rpartition(":")
    if not colon or "/" in split or not split:
        return name, Path(rest), None
    return name, Path(path), split


def source_of(path: Path, label: int, row: dict[str, str]) -> str:
    """The group a video belongs to: its manipulation method (fakes), else its origin (see the docstring)."""
    origin = (row.get("dataset_of_origin") or "").split("(")[0].strip()
    if label == 1:
        text = f"{path.stem} {origin}".lower()
        tokens = set(re.split(r"[^a-z0-9-]+", text)) | set(re.split(r"[^a-z0-9]+", text))
        for pattern, method in METHODS:
            if any(re.fullmatch(pattern + r"\d*", token) for token in tokens):
                return f"FF++ {method}" if "ffpp" in tokens or "faceforensics" in text else method
    if origin:
        return origin
    if row.get("source_repo"):
        return row["source_repo"]
    words = [w for w in re.split(r"[^A-Za-z0-9]+", path.stem) if w and w.lower() not in ("real", "fake")]
    return words[0] if words else path.stem


def csv_rows(labels: Path) -> dict[str, dict[str, str]]:
    """Every row of the label list by resolved path (for the provenance columns ``labelled`` drops)."""
    with labels.open(newline="", encoding="utf-8-sig") as handle:
        rows = [{k.strip().lower(): v or "" for k, v in r.items() if k} for r in csv.DictReader(handle)]
    return {str((labels.parent / r["path"].strip()).resolve()): r for r in rows if r.get("path", "").strip()}


def load_data_set(text: str, limit: int | None) -> DataSet:
    name, labels, split = parse_data(text)
    sources = [s for s in labelled(labels, split) if not s.is_image]  # the service scores videos, not photos
    if not sources:
        raise SystemExit(f"--data {text}: no videos")
    if limit:  # both classes when the list has them, so a quick look still has an AUC
        fakes, reals = [x for x in sources if x.label], [x for x in sources if not x.label]
        half = min(max(limit - len(reals), (limit + 1) // 2), len(fakes))
        sources = fakes[:half] + reals[: limit - half]
    rows = csv_rows(labels)
    origin = {str(s.path): source_of(s.path, s.label, rows.get(str(s.path.resolve()), {})) for s in sources}
    return DataSet(name, labels, split, sources, origin)


def columns(scores: VideoScores, run: ServedRun) -> dict[str, dict[str, float]]:
    """Video -> score for each model and the ensemble, as the service would serve them."""
    out = {name: scores.model(name) for name in sorted(run.predictions)}
    out[ENSEMBLE] = scores.ensemble(run.ensemble.combination)
    return out


def subset(scores: VideoScores, videos: set[str]) -> VideoScores:
    return VideoScores(
        {v: y for v, y in scores.labels.items() if v in videos}, {v: t for v, t in scores.tracks.items() if v in videos}
    )


def metrics_of(
    labels: dict[str, int], scored: dict[str, float], threshold: float, videos: set[str] | None = None
) -> dict[str, float]:
    keep = [v for v in scored if videos is None or v in videos]
    return binary_metrics([labels[v] for v in keep], [scored[v] for v in keep], threshold)


def data_set_metrics(labels: dict[str, int], scored: dict[str, float], threshold: float) -> dict[str, Any]:
    """``metrics_of`` over all of a data set's videos, with the AUC's 95% bootstrap interval (``auc_ci``)."""
    interval = auc_interval([labels[v] for v in scored], list(scored.values()))
    return {**metrics_of(labels, scored, threshold), "auc_ci": list(interval)}


def per_source(
    data: DataSet, labels: dict[str, int], table: dict[str, dict[str, float]], thresholds: dict[str, float]
) -> list[dict[str, Any]]:
    """Per source and column: n, share called right, and for fakes the AUC/AP/EER against all reals."""
    reals = {v for v, y in labels.items() if y == 0}
    groups: dict[tuple[int, str], set[str]] = {}
    for video, label in labels.items():
        groups.setdefault((label, data.origin.get(video, "?")), set()).add(video)
    rows = []
    for (label, name), videos in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        row: dict[str, Any] = {
            "source": name,
            "label": "fake" if label else "real",
            "videos": len(videos),
            "columns": {},
        }
        for column, scored in table.items():
            mine = [v for v in videos if v in scored]
            right = [(scored[v] >= thresholds[column]) == bool(label) for v in mine]
            paired = metrics_of(labels, scored, thresholds[column], videos | reals) if label else {}
            row["columns"][column] = {
                "n": len(mine),
                "right": sum(right) / len(right) if right else math.nan,
                "auc": paired.get("auc", math.nan),
                "ap": paired.get("ap", math.nan),
                "eer": paired.get("eer", math.nan),
            }
        rows.append(row)
    return rows


def fmt(value: float, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def interval(bounds: list[float] | None) -> str:
    """``0.62-0.97``; ``-`` where a report has none (one class, or written before intervals)."""
    if not bounds or any(math.isnan(b) for b in bounds):
        return "-"
    return f"{bounds[0]:.2f}-{bounds[1]:.2f}"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Detection quality of `{report['repository']}`",
        "",
        f"Served in-process through the service's pipeline; settings {report['settings']}; ensemble from "
        f"{report['ensemble']['source']} (weights {report['ensemble']['weights']}, bias "
        f"{report['ensemble']['bias']:+.4f}). Accuracy, FPR and FNR at the served threshold: 0.5 for a model "
        f"(its calibration maps its threshold there), DFS_THRESHOLD = {report['threshold']} for the ensemble.",
        "",
    ]
    for name, data in report["data_sets"].items():
        split = f" (split {data['split']})" if data["split"] else ""
        lines += [
            f"## {name}: `{data['labels']}`{split}",
            "",
            f"{data['videos']} videos ({data['fakes']} fake, {data['reals']} real); "
            f"not scored: {len(data['left_out'])}"
            + "".join(f"\n- `{Path(v).name}`: {why}" for v, why in data["left_out"].items()),
            "",
            "| model | videos | AUC | AUC 95% interval | AP | EER | accuracy | FPR | FNR |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for column, m in data["metrics"].items():
            lines.append(
                f"| {column} | {int(m['n'])} | {fmt(m['auc'])} | {interval(m.get('auc_ci'))} | {fmt(m['ap'])} | "
                f"{fmt(m['eer'])} | {fmt(m['accuracy'])} | {fmt(m['fpr'])} | {fmt(m['fnr'])} |"
            )
        names = list(data["metrics"])
        lines += [
            "",
            f"Per source ({name}): share of the source's videos called right at the served threshold; "
            "for a fake source also its AUC against **all real videos of this data set** (a source holds one "
            "class, so the AUC pairs it with the same reals).",
            "",
            "| source | label | scored | " + " | ".join(f"{c} right | {c} AUC" for c in names) + " |",
            "|---|---|---|" + "---|---|" * len(names),
        ]
        for row in data["per_source"]:
            cells = " | ".join(f"{fmt(row['columns'][c]['right'], 2)} | {fmt(row['columns'][c]['auc'])}" for c in names)
            lines.append(f"| {row['source']} | {row['label']} | {row['videos']} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def save_roc(path: Path, curves: dict[str, dict[str, tuple[list[int], list[float]]]]) -> None:
    """One panel per data set, one ROC curve per model and the ensemble (Agg: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    figure, axes = plt.subplots(
        1, max(len(curves), 1), figsize=(4.8 * max(len(curves), 1), 4.8), dpi=110, squeeze=False
    )
    for axis, (name, per_column) in zip(axes[0], curves.items(), strict=False):
        drawn = 0
        for column, (labels, scores) in per_column.items():
            if len(set(labels)) < 2:
                continue
            drawn += 1
            fpr, tpr, _ = roc_curve(labels, scores)
            style = {"linewidth": 2.4, "color": "black"} if column == ENSEMBLE else {"linewidth": 1.4}
            axis.plot(fpr, tpr, label=f"{column} (AUC {roc_auc_score(labels, scores):.2f}, n={len(labels)})", **style)
        axis.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
        axis.set(xlabel="false positive rate", ylabel="true positive rate", title=name, xlim=(0, 1), ylim=(0, 1.02))
        if drawn:
            axis.legend(loc="lower right", fontsize=8)
        else:
            axis.text(0.5, 0.5, "one class only: no ROC", ha="center", va="center")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def evaluate(data_sets: list[DataSet], run: ServedRun, settings: Settings) -> tuple[dict[str, Any], dict]:
    """The report, and the ROC curves per data set and column."""
    calibrations = {name: version.manifest.calibration for name, version in run.versions.items()}
    scores = served_scores(run.predictions, calibrations)
    report: dict[str, Any] = {
        "repository": str(settings.model_repository),
        "models": {
            name: {
                "version": v.version,
                "calibration": v.manifest.calibration.model_dump(),
                "untrained": v.manifest.untrained,
                "runtime": run.runtimes.get(name),
            }
            for name, v in sorted(run.versions.items())
        },
        "ensemble": run.ensemble.describe(sorted(run.versions)),
        "threshold": settings.threshold,
        "settings": analysis_settings(settings),
        "data_sets": {},
    }
    curves: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for data in data_sets:
        videos = {str(s.path) for s in data.sources}
        mine = subset(scores, videos)
        table = columns(mine, run)
        thresholds = {c: settings.threshold if c == ENSEMBLE else 0.5 for c in table}
        report["data_sets"][data.name] = {
            "labels": str(data.labels),
            "split": data.split,
            "videos": len(data.sources),
            "fakes": sum(s.label for s in data.sources),
            "reals": sum(1 - s.label for s in data.sources),
            "left_out": {v: why for v, why in run.left_out.items() if v in videos},
            "metrics": {c: data_set_metrics(mine.labels, scored, thresholds[c]) for c, scored in table.items()},
            "per_source": per_source(data, mine.labels, table, thresholds),
            "per_video": {
                v: {
                    "label": mine.labels[v],
                    "source": data.origin.get(v),
                    **{c: round(table[c][v], 6) for c in table if v in table[c]},
                }
                for v in mine.labels
            },
        }
        curves[data.name] = {
            c: ([mine.labels[v] for v in scored], list(scored.values())) for c, scored in table.items()
        }
    return report, curves


def compare(reports: list[dict[str, Any]], names: list[Path]) -> str:
    """A markdown table of video AUC per data set and model (rows) for several reports (columns),
    headed by the settings in which they differ (e.g. ``detect_every``), and the change from the first."""

    def setting_of(report: dict[str, Any]) -> dict[str, Any]:
        runtimes = {m: v.get("runtime") for m, v in report["models"].items()}
        return {**report["settings"], "runtimes": runtimes}

    settings = [setting_of(r) for r in reports]
    keys = sorted({k for s in settings for k in s})
    differing = [k for k in keys if len({json.dumps(s.get(k), sort_keys=True) for s in settings}) > 1]
    heads = [
        f"{name.name} ({', '.join(f'{k}={s.get(k)}' for k in differing)})" if differing else name.name
        for name, s in zip(names, settings, strict=True)
    ]
    lines = ["| data set | model | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    for data_set, first in reports[0]["data_sets"].items():
        for column in first["metrics"]:
            base = first["metrics"][column]["auc"]
            cells = []
            for report in reports:
                auc = report["data_sets"].get(data_set, {}).get("metrics", {}).get(column, {}).get("auc")
                if auc is None or (isinstance(auc, float) and math.isnan(auc)):
                    cells.append("-")
                elif report is reports[0]:
                    cells.append(f"{auc:.3f}")
                else:
                    cells.append(f"{auc:.3f} ({auc - base:+.3f})")
            lines.append(f"| {data_set} | {column} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@exits_on_served_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/quality.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repository", type=Path, help="model repository (default: DFS_MODEL_REPOSITORY, else model_repository/)"
    )
    parser.add_argument(
        "--data",
        action="append",
        metavar="NAME=CSV[:SPLIT]",
        help="a label list (label,path[,split,...]; paths relative to the CSV) and the split to "
        "score; repeat for several (default: corpus_val and held_out, see above)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "bench" / "results" / "quality",
        help="folder for roc.png, quality.md, quality.json (default: bench/results/quality/)",
    )
    parser.add_argument("--models", help="comma list of models to load (default: DFS_MODELS, else all)")
    parser.add_argument("--max-frames", type=int, help="frames decoded per video (default: DFS_MAX_FRAMES)")
    parser.add_argument("--clip-stride", type=int, help="default: DFS_CLIP_STRIDE")
    parser.add_argument("--max-clips-per-track", type=int, help="default: DFS_MAX_CLIPS_PER_TRACK")
    parser.add_argument("--frames-per-track", type=int, help="default: DFS_FRAMES_PER_TRACK")
    parser.add_argument(
        "--face-detector", choices=("auto", "blazeface", "retinaface"), help="default: DFS_FACE_DETECTOR"
    )
    parser.add_argument("--detect-every", type=int, help="face detection every k-th frame (default: DFS_DETECT_EVERY)")
    parser.add_argument(
        "--mirror-faces",
        action=argparse.BooleanOptionalAction,
        help="also score each crop mirrored and average (default: DFS_MIRROR_FACES)",
    )
    parser.add_argument(
        "--runtime", choices=("auto", "onnxruntime", "openvino", "torch"), help="engines (default: DFS_RUNTIME)"
    )
    parser.add_argument("--limit", type=int, help="score at most this many videos per data set (a quick look)")
    parser.add_argument(
        "--compare",
        nargs="+",
        type=Path,
        metavar="OUT",
        help="print the video AUCs of earlier runs' --out folders side by side, with the settings that differ; runs nothing",
    )
    args = parser.parse_args(argv)
    if args.compare:
        print(compare([json.loads((folder / "quality.json").read_text()) for folder in args.compare], args.compare))
        return 0

    repository = args.repository or (None if os.environ.get("DFS_MODEL_REPOSITORY") else REPO_ROOT / "model_repository")
    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "models": args.models,
            "max_frames": args.max_frames,
            "clip_stride": args.clip_stride,
            "max_clips_per_track": args.max_clips_per_track,
            "frames_per_track": args.frames_per_track,
            "face_detector": args.face_detector,
            "detect_every": args.detect_every,
            "mirror_faces": args.mirror_faces,
            "runtime": args.runtime,
            "model_repository": repository,
        }.items()
        if value is not None
    }
    settings = Settings(**overrides)  # what is not given here comes from the DFS_* environment
    data_sets = [load_data_set(text, args.limit) for text in (args.data or DEFAULT_DATA)]
    everything = list({str(s.path): s for data in data_sets for s in data.sources}.values())
    run = collect(settings, everything)
    report, curves = evaluate(data_sets, run, settings)

    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(report)
    (args.out / "quality.md").write_text(text + "\n")
    (args.out / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    save_roc(args.out / "roc.png", curves)
    print(text)
    print(f"wrote {args.out / 'quality.md'}, {args.out / 'quality.json'}, {args.out / 'roc.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
