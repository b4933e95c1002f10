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

On the same videos, with the new calibrations, it then fits the ensemble (``export.fit_ensemble``:
non-negative weights from a strongly regularised logistic regression on each video's calibrated
logits, and a bias that puts the ensemble's FAKE at 0.5 on the videos' equal-error point), which
the service applies from ``<repository>/ensemble.json`` unless ``DFS_ENSEMBLE_WEIGHTS`` is set.
Those figures are in-sample; the leave-one-identity-out AUCs (``export.cross_validate``: everything
refitted without each identity in turn) are printed beside them and stored under
``metrics.cross_validated``.

``--labels`` is a label-list CSV as ``training.preprocess`` reads it (``label,path[,split]``, paths
relative to the CSV); ``--split`` keeps the rows of one split. Prints per model the calibration and
the video metrics before (the manifest's calibration) and after, and the ensemble; ``--write``
stores the new calibration and these metrics (``metrics.calibration_served``) in each model's
manifest and the ensemble in ``<repository>/ensemble.json`` (weights, bias, the model versions
and calibrations it was fitted with, the command, the label list's sha256, the videos, metrics).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from export import cross_validate, fit_ensemble
from export.ensemble import ENSEMBLE_NAME, EnsembleFile
from export.manifest import Calibration, Manifest
from export.served import (
    ServedRun,
    analysis_settings,
    collect,
    exits_on_served_error,
    labelled,
    served_logits,
    served_scores,
)
from service.config import Settings
from service.pipeline.scores import sigmoid
from training.evaluate import fit_calibration, report
from training.sources import Source

__all__ = ["calibrate", "fit_models", "labelled", "main", "served_logits"]  # labelled, served_logits: moved to served

log = logging.getLogger("export.calibrate")


def calibrate(settings: Settings, sources: list[Source], split_name: str) -> dict[str, dict[str, Any]]:
    """Per model: the manifest's current calibration and metrics, and the refitted ones."""
    return fit_models(collect(settings, sources), split_name)


def fit_models(run: ServedRun, split_name: str) -> dict[str, dict[str, Any]]:
    """Per model of ``run``: the manifest's current calibration and metrics, and the refitted ones."""
    results: dict[str, dict[str, Any]] = {}
    for name, pred in run.predictions.items():
        if not pred.logits:
            log.warning("%s: no item scored; calibration left as it is", name)
            continue
        version = run.versions[name]
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


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fit_repository_ensemble(
    run: ServedRun, results: dict[str, dict[str, Any]], settings: Settings, provenance: dict[str, Any], labels: Path
) -> EnsembleFile | None:
    """The ensemble of the calibrated models on the same videos (None when both classes are not there).

    Videos are named by their path relative to the label list (as its rows name them), so the file,
    which ``GET /ensemble`` serves, does not spell out where the server keeps them.
    """
    calibrations = {name: Calibration.model_validate(r["after"]["calibration"]) for name, r in results.items()}
    scores = served_scores(run.predictions, calibrations)
    if len(set(scores.labels.values())) < 2:
        log.warning("the videos scored are all of one class: no ensemble fitted")
        return None
    models = sorted(calibrations)
    fitted = fit_ensemble.fit(scores, models)
    return EnsembleFile(
        weights=fitted.weights,
        bias=fitted.bias,
        threshold=float(min(max(sigmoid(-fitted.bias), 1e-12), 1 - 1e-12)),
        model_versions={name: run.versions[name].version for name in models},
        model_calibrations={name: c.model_dump() for name, c in calibrations.items()},
        fit=fitted.describe(),
        fitted_on={
            **provenance,
            "videos": len(scores.labels),
            "videos_in_fit": fitted.videos,
            "left_out": {os.path.relpath(v, labels.parent): why for v, why in run.left_out.items()},
            "settings": analysis_settings(settings),
        },
        metrics={
            "in_sample": True,
            **fit_ensemble.metrics(scores, fitted, lambda v: os.path.relpath(v, labels.parent)),
        },
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


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
            "after": {
                k: after[k]
                for k in (
                    "calibration",
                    "videos",
                    "videos_at_calibrated_threshold",
                    "operating_point_in_sample",
                    "per_video",
                )
            },
        }
        manifest.write(folder)
        log.info("%s: calibration %s written to %s", name, after["calibration"], folder)


def print_ensemble(ensemble: EnsembleFile) -> None:
    fitted, equal = ensemble.metrics["fitted"], ensemble.metrics["equal_weights"]
    weights = ", ".join(f"{name} {w:.3f}" for name, w in ensemble.weights.items())
    fallback = ensemble.fit.get("fallback")
    print(f"\nensemble: weights {weights}; bias {ensemble.bias:+.4f}" + (f" ({fallback})" if fallback else ""))
    for key, m in (("fitted", fitted), ("equal, no bias", equal)):
        print(
            f"  {key:15} videos {int(m['n']):3d}  AUC {m['auc']:6.3f}  EER {m['eer']:6.3f}  acc {m['accuracy']:6.3f}"
            f"  FPR {m['fpr']:6.3f}  FNR {m['fnr']:6.3f}  (in sample)"
        )


def print_cross_validated(
    crossed: cross_validate.OutOfFold,
    aucs: dict[str, float],
    intervals: dict[str, tuple[float, float]],
    ensemble: EnsembleFile,
) -> None:
    in_sample = ensemble.metrics.get("fitted", {}).get("auc")
    low, high = intervals.get("ensemble", (float("nan"), float("nan")))
    print(
        f"  leave one identity out ({crossed.folds} folds, {len(crossed.labels)} videos): ensemble AUC "
        f"{aucs.get('ensemble', float('nan')):.3f}, 95% interval {low:.2f}-{high:.2f} "
        f"(in sample {in_sample if in_sample is None else f'{in_sample:.3f}'}); "
        + ", ".join(f"{name} {auc:.3f}" for name, auc in sorted(aucs.items()) if name != "ensemble")
    )


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print(
        f"\n{'model':8} {'videos':>6} {'items':>6} {'AUC':>6}  {'T':>6} {'threshold':>9} {'acc':>6}   "
        f"{'T new':>6} {'thr new':>9} {'acc new':>7} {'FPR new':>7} {'FNR new':>7}"
    )
    for name, r in results.items():
        before, after = r["before"], r["after"]
        old, new = before["calibration"], after["calibration"]
        at_old, at_new = before["videos_at_calibrated_threshold"], after["videos_at_calibrated_threshold"]
        print(
            f"{name:8} {r['videos']:6d} {r['items']:6d} {after['videos'].get('auc', float('nan')):6.3f}  "
            f"{old['temperature']:6.2f} {old['threshold']:9.4f} {at_old['accuracy']:6.3f}   "
            f"{new['temperature']:6.2f} {new['threshold']:9.4f} {at_new['accuracy']:7.3f} "
            f"{at_new.get('fpr', float('nan')):7.3f} {at_new.get('fnr', float('nan')):7.3f}"
        )


@exits_on_served_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.calibrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, help="model repository (default: DFS_MODEL_REPOSITORY)")
    parser.add_argument("--labels", required=True, type=Path, help="label-list CSV of videos (label,path[,split])")
    parser.add_argument("--split", help="only rows of this split (default: every row)")
    parser.add_argument(
        "--write",
        action="store_true",
        help=f"store the new calibration in each model's manifest and the ensemble in {ENSEMBLE_NAME}",
    )
    parser.add_argument("--json", type=Path, help="write the full report here (per model, and 'ensemble')")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {"model_repository": args.repository} if args.repository else {}
    settings = Settings(**overrides)
    sources = labelled(args.labels, args.split)
    command = "python -m export.calibrate " + shlex.join(sys.argv[1:] if argv is None else argv)
    run = collect(settings, sources)
    results = fit_models(run, args.split or "all")
    provenance = {
        "command": command,
        "labels": str(args.labels),
        "labels_sha256": sha256(args.labels),
        "split": args.split or "all",
    }
    ensemble = fit_repository_ensemble(run, results, settings, provenance, args.labels) if results else None
    print_table(results)
    if ensemble is not None:
        print_ensemble(ensemble)
        crossed = cross_validate.out_of_fold(run, {str(s.path): s.identity for s in sources})
        crossed_aucs = crossed.aucs()
        crossed_intervals = crossed.intervals()
        ensemble.metrics["cross_validated"] = {
            "method": "leave one identity out: calibrations and ensemble fitted on the other identities' videos",
            "folds": crossed.folds,
            "videos": len(crossed.labels),
            "auc": crossed_aucs,
            "auc_interval_95": {name: list(bounds) for name, bounds in crossed_intervals.items()},
        }
        print_cross_validated(crossed, crossed_aucs, crossed_intervals, ensemble)
    if args.json:
        report_json = {**results, "ensemble": None if ensemble is None else ensemble.model_dump(mode="json")}
        args.json.write_text(json.dumps(report_json, indent=2))
    if args.write:
        write(results, command)
        if ensemble is not None:
            path = ensemble.write(settings.model_repository)
            log.info("ensemble weights %s, bias %+.4f written to %s", ensemble.weights, ensemble.bias, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
