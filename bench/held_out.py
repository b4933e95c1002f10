"""Score labelled videos through a running service: what the deployed path (decode, faces, crops,
ONNX engines, calibration, ensemble) gets right, per model and for the ensemble.

    DFS_LOCAL_ROOTS=../shared/data python -m service &          # the default bundle
    python bench/held_out.py                                      # the bundle's 12 held-out videos
    python bench/held_out.py --labels my.csv --url http://gpu-box:8000 --json out.json

``--labels`` is a CSV ``label,path[,split]`` (paths relative to the CSV, like
``training.preprocess`` reads); with a split column only ``--split`` rows (default ``test``) count.
Prints one row per video and AUC/accuracy per model; training.evaluate measures the same videos
on the checkpoint, this measures what the service returns.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.metrics import binary_metrics  # noqa: E402

DEFAULT_LABELS = Path(__file__).resolve().parents[1] / "training" / "recipes" / "default_bundle.csv"


def labelled_videos(labels_csv: Path, split: str) -> list[tuple[Path, int]]:
    with labels_csv.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("split", split) in (split, None, "")]
    return [((labels_csv.parent / r["path"]).resolve(), 1 if r["label"] in ("fake", "1") else 0) for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="service base URL (default: %(default)s)")
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS, help="label CSV (default: the bundle's)")
    parser.add_argument("--split", default="test", help="rows of this split (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per request (CPU FTCN is slow)")
    parser.add_argument("--json", type=Path, help="also write the rows and metrics here")
    args = parser.parse_args(argv)

    videos = labelled_videos(args.labels, args.split)
    if not videos:
        parser.error(f"no {args.split!r} rows in {args.labels}")
    rows: list[dict] = []
    with httpx.Client(base_url=args.url, timeout=args.timeout) as client:
        for path, label in videos:
            response = client.post("/predict", json={"file_path": str(path)})
            body = response.json()
            if response.status_code != 200:
                print(
                    f"{path.name}: HTTP {response.status_code} {body.get('error')}: {body.get('detail')}",
                    file=sys.stderr,
                )
                continue
            rows.append(
                {
                    "video": path.name,
                    "label": label,
                    "ensemble": body["df_probability"],
                    "threshold": body["threshold"],
                    "total_ms": body["timings_ms"].get("total"),
                    **{name: m["score"] for name, m in body["models"].items()},
                }
            )
    models = sorted({k for r in rows for k in r} - {"video", "label", "ensemble", "threshold", "total_ms"})
    columns = [*models, "ensemble"]
    print(f"{'video':28} {'label':5} " + " ".join(f"{c:>9}" for c in columns) + f" {'ms':>8}")
    for r in rows:
        cells = " ".join(f"{r[c]:9.4f}" if r.get(c) is not None else f"{'-':>9}" for c in columns)
        print(f"{r['video']:28} {'fake' if r['label'] else 'real':5} {cells} {r['total_ms'] or 0:8.0f}")
    metrics: dict[str, dict[str, float]] = {}
    for c in columns:
        scored = [r for r in rows if r.get(c) is not None]
        threshold = rows[0]["threshold"] if c == "ensemble" and rows else 0.5
        metrics[c] = binary_metrics([r["label"] for r in scored], [r[c] for r in scored], threshold)
    print()
    print(
        f"{'model':10} {'videos':>6} {'AUC':>6} {'acc':>6}  (scores are calibrated, so 0.5 is each model's threshold)"
    )
    for c, m in metrics.items():
        print(f"{c:10} {int(m['n']):6d} {m.get('auc', float('nan')):6.3f} {m['accuracy']:6.3f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "metrics": metrics}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
