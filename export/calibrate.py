"""``python -m export.calibrate``: fit each exported model's calibration on labelled videos, as served.

    python -m export.calibrate --repository model_repository --labels videos.csv            # report only
    python -m export.calibrate --repository model_repository --labels videos.csv --write    # into the manifests

``training.evaluate`` calibrates a checkpoint on preprocessed crops. This calibrates what is
deployed: each labelled video goes through the service's own pipeline in this process (decode,
faces, tracks, sampling, crops, the exported engines, with the DFS_* settings of the environment),
and the raw logits it produces are fitted exactly as ``training.evaluate`` fits them (temperature on
the items, then the threshold that puts the service's 0.5 decision at the videos' equal-error
point, scored per track and maximum over tracks). Use it after an export, or when the serving
settings (sampling, detector) change what the models see; it needs no checkpoint.

``--labels`` is a label-list CSV as ``training.preprocess`` reads it (``label,path[,split]``, paths
relative to the CSV); ``--split`` keeps the rows of one split. Prints per model the calibration and
the video metrics before (the manifest's calibration) and after; ``--write`` stores the new
calibration and these metrics (``metrics.calibration_served``) in each model's manifest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from export.manifest import Manifest
from service.config import Settings
from service.errors import ServiceError
from service.pipeline.analyse import AnalysisOptions, video_logits
from service.runtime import Runtime
from training.evaluate import Predictions, fit_calibration, report
from training.sources import Source, from_label_list

log = logging.getLogger("export.calibrate")


def labelled(labels: Path, split: str | None) -> list[Source]:
    try:
        listed = from_label_list(labels)
    except (OSError, ValueError) as exc:  # missing file, bad row: say which, without a traceback
        raise SystemExit(f"--labels {labels}: {exc}") from exc
    sources = [s for s in listed if split is None or s.split == split]
    if not sources:
        raise SystemExit(f"no videos{f' in split {split!r}' if split else ''} in {labels}")
    return sources


async def served_logits(runtime: Runtime, sources: list[Source]) -> dict[str, Predictions]:
    """Raw logits per model of every face-track item of every video, as the service computes them."""
    options = AnalysisOptions.from_settings(runtime.settings, sorted(runtime.models))
    out = {name: Predictions([], [], [], []) for name in options.models}
    for source in tqdm(sources, desc="videos", unit="video"):
        try:
            result = await video_logits(source.path, "calibrate", options, runtime)
        except ServiceError as exc:  # a file the service refuses is reported and left out, as it would be served
            log.warning("%s: %s (%s); left out", source.path, exc.code, exc)
            continue
        if not result.tracks:
            log.warning("%s: no face found; left out", source.path)
        for name, logits in result.logits.items():
            mine = [item for item in result.items if item.model == name]
            pred = out[name]
            for item, value in zip(mine, logits, strict=True):
                pred.logits.append(float(value))
                pred.labels.append(source.label)
                pred.videos.append(str(source.path))
                pred.tracks.append(str(item.track_id))
    return out


def calibrate(settings: Settings, sources: list[Source], split_name: str) -> dict[str, dict[str, Any]]:
    """Per model: the manifest's current calibration and metrics, and the refitted ones."""
    async def run() -> tuple[dict[str, Predictions], dict[str, Any]]:
        runtime = Runtime(settings)
        await runtime.load()
        if not runtime.ready:
            raise SystemExit(f"the models could not be loaded: {runtime.reason}")
        try:
            versions = {name: model.version for name, model in runtime.models.items()}
            return await served_logits(runtime, sources), versions
        finally:
            await runtime.close()

    predictions, versions = asyncio.run(run())
    results: dict[str, dict[str, Any]] = {}
    for name, pred in predictions.items():
        if not pred.logits:
            log.warning("%s: no item scored; calibration left as it is", name)
            continue
        version = versions[name]
        before = version.manifest.calibration
        fitted = fit_calibration(pred)
        results[name] = {
            "folder": str(version.folder),
            "before": report(pred, before, split_name, "manifest"),
            "after": report(pred, fitted, split_name, split_name),
            "items": len(pred.logits),
            "videos": len(set(pred.videos)),
        }
    return results


def write(results: dict[str, dict[str, Any]], command: str) -> None:
    for name, result in results.items():
        folder = Path(result["folder"])
        manifest = Manifest.read(folder)
        after = result["after"]
        manifest.calibration = manifest.calibration.model_validate(after["calibration"])
        manifest.metrics["calibration_served"] = {
            "command": command,
            "videos": result["videos"],
            "items": result["items"],
            "before": {k: result["before"][k] for k in ("calibration", "videos_at_calibrated_threshold")},
            "after": {k: after[k] for k in ("calibration", "videos", "videos_at_calibrated_threshold",
                                            "operating_point_in_sample", "per_video")},
        }
        manifest.write(folder)
        log.info("%s: calibration %s written to %s", name, after["calibration"], folder)


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print(f"\n{'model':8} {'videos':>6} {'items':>6} {'AUC':>6}  {'T':>6} {'threshold':>9} {'acc':>6}   "
          f"{'T new':>6} {'thr new':>9} {'acc new':>7} {'FPR new':>7} {'FNR new':>7}")
    for name, r in results.items():
        before, after = r["before"], r["after"]
        old, new = before["calibration"], after["calibration"]
        at_old, at_new = before["videos_at_calibrated_threshold"], after["videos_at_calibrated_threshold"]
        print(f"{name:8} {r['videos']:6d} {r['items']:6d} {after['videos'].get('auc', float('nan')):6.3f}  "
              f"{old['temperature']:6.2f} {old['threshold']:9.4f} {at_old['accuracy']:6.3f}   "
              f"{new['temperature']:6.2f} {new['threshold']:9.4f} {at_new['accuracy']:7.3f} "
              f"{at_new.get('fpr', float('nan')):7.3f} {at_new.get('fnr', float('nan')):7.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, help="model repository (default: DFS_MODEL_REPOSITORY)")
    parser.add_argument("--labels", required=True, type=Path, help="label-list CSV of videos (label,path[,split])")
    parser.add_argument("--split", help="only rows of this split (default: every row)")
    parser.add_argument("--write", action="store_true", help="store the new calibration in each model's manifest")
    parser.add_argument("--json", type=Path, help="write the full report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {"model_repository": args.repository} if args.repository else {}
    settings = Settings(**overrides)
    sources = labelled(args.labels, args.split)
    results = calibrate(settings, sources, args.split or "all")
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.write:
        write(results, "python -m export.calibrate " + shlex.join(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
