"""``python -m training.evaluate``: score a checkpoint on held-out tracks, fit its calibration.

    python -m training.evaluate --checkpoint runs/ftcn/best.pt --data crops/ --split test

Prints AUC, AP, EER and accuracy (item level and video level: the mean over each face track, then
the maximum over a video's tracks, as the service scores) and fits the calibration that
``python -m export`` writes into the manifest: a temperature T (minimising the log-loss of the item
logits) and a decision threshold, fitted in the service's own score space so that its fixed 0.5
decision lands on the equal-error point of the videos. The calibration is fitted on
``--calibrate-on`` (default: the ``val`` split when the data has one, else the evaluated split; the
result says which, and whether the operating-point metrics are therefore in-sample). Saves a ROC
curve PNG, and with ``--write`` stores calibration and metrics back into the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_curve
from torch.utils.data import DataLoader

from export.manifest import Calibration
from models.checkpoint import TrainingCheckpoint
from models.registry import create_model
from service.pipeline.scores import sigmoid
from training.data import ClipDataset, FrameDataset, collate, load_index
from training.errors import TrainingInputError
from training.metrics import binary_metrics, per_video

log = logging.getLogger("training.evaluate")

THRESHOLD_RANGE = (1e-4, 1 - 1e-4)  # the manifest needs 0 < threshold < 1


@dataclass
class Predictions:
    """Raw fake logits of every item (frame or clip) of a split, with its label, video and face track."""

    logits: list[float]
    labels: list[int]
    videos: list[str]
    tracks: list[str]


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature T minimising the binary log-loss of ``sigmoid(logit / T)`` (LBFGS on log T)."""
    x = torch.tensor(logits, dtype=torch.float64)
    y = torch.tensor(labels, dtype=torch.float64)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def service_video_scores(pred: Predictions, calibration: Calibration) -> tuple[list[int], list[float]]:
    """Per-video labels and scores exactly as the service computes them with this calibration.

    ``sigmoid(calibration.apply(logit))`` per item, the mean per track, the maximum over a video's
    tracks; videos in sorted order. Its decision point is 0.5.
    """
    probs = [sigmoid(calibration.apply(v)) for v in pred.logits]
    return per_video(pred.videos, pred.labels, probs, pred.tracks)


def track_flip_offset(logits: np.ndarray, temperature: float) -> float:
    """The offset c where the track's score ``mean(sigmoid((logit - c) / T))`` equals 0.5.

    The score falls strictly with c, is >= 0.5 at ``min(logit)`` and <= 0.5 at ``max(logit)``, so
    bisection between them finds it; the track is flagged exactly when the offset is at most this.
    """
    low, high = float(logits.min()), float(logits.max())
    for _ in range(200):
        if high - low <= 1e-12 * max(1.0, abs(low)):
            break
        middle = (low + high) / 2
        score = np.mean(0.5 * (1 + np.tanh((logits - middle) / (2 * temperature))))  # sigmoid, no overflow
        low, high = (middle, high) if score >= 0.5 else (low, middle)
    return (low + high) / 2


def video_flip_offsets(pred: Predictions, temperature: float) -> tuple[list[int], list[float]]:
    """Per video (sorted): label and the largest offset at which the service still calls it FAKE.

    A video's score is the maximum of its tracks' scores, so it is flagged while any track is: its
    flip offset is the maximum of its tracks'. These act as video scores on the logit scale: at
    offset c, exactly the videos whose flip offset is >= c are FAKE.
    """
    items: dict[tuple[str, str], tuple[int, list[float]]] = {}
    for video, track, label, value in zip(pred.videos, pred.tracks, pred.labels, pred.logits, strict=True):
        items.setdefault((video, track), (label, []))[1].append(value)
    flips = [track_flip_offset(np.asarray(values, dtype=np.float64), temperature) for _, values in items.values()]
    # one "item" per track: per_video's mean per track is the flip itself, its max over tracks the video's
    return per_video([v for v, _ in items], [label for label, _ in items.values()], flips, [t for _, t in items])


def fit_offset(labels: list[int], flips: list[float]) -> float:
    """Raw-logit offset c putting the service's 0.5 decision at the videos' equal-error point.

    Candidate decision sets are "flip offset >= t" for each distinct flip t (every ROC point, none
    dropped). Pick the one where FNR and FPR are closest (ties: higher accuracy), then place c
    midway between t and the next lower flip, so no video sits on the decision boundary.
    """
    y = np.asarray(labels, dtype=int)
    f = np.asarray(flips, dtype=np.float64)
    fpr, tpr, thresholds = roc_curve(y, f, drop_intermediate=False)
    positives = y.sum()
    accuracy = (tpr * positives + (1 - fpr) * (len(y) - positives)) / len(y)
    gap = np.round(np.abs((1 - tpr) - fpr), 12)
    k = int(np.lexsort((-accuracy, gap))[0])
    if not np.isfinite(thresholds[k]):  # nothing flagged
        return float(f.max() + 1.0)
    below = f[f < thresholds[k]]
    return float((thresholds[k] + below.max()) / 2 if len(below) else thresholds[k] - 1.0)


def fit_calibration(pred: Predictions) -> Calibration:
    """Temperature on the item logits, then the threshold in the service's score space (see fit_offset)."""
    temperature = fit_temperature(np.array(pred.logits), np.array(pred.labels)) if len(set(pred.labels)) == 2 else 1.0
    labels, flips = video_flip_offsets(pred, temperature)
    if len(set(labels)) < 2:
        return Calibration(temperature=temperature, threshold=0.5)
    offset = fit_offset(labels, flips)
    threshold = float(np.clip(sigmoid(offset), *THRESHOLD_RANGE))
    if threshold != sigmoid(offset):
        log.warning(
            "the equal-error offset %.2f is beyond the manifest's threshold range; clipped to %.2f, so the "
            "operating point moves (see videos_at_calibrated_threshold)",
            offset,
            math.log(threshold / (1 - threshold)),
        )
    return Calibration(temperature=temperature, threshold=threshold)


def predict(checkpoint: TrainingCheckpoint, data: Path, split: str, batch_size: int) -> Predictions:
    """Fake logits of every item of ``split`` (frames spread over tracks, or clips)."""
    model = create_model(checkpoint.model, checkpoint=checkpoint)
    spec = checkpoint.spec or model.spec
    records = load_index(data, [split])
    if not records:
        raise TrainingInputError(f"no tracks in split {split!r} of {data}")
    if spec.kind == "clip":
        dataset = ClipDataset(records, spec, stride=spec.num_frames, max_clips_per_track=8)
    else:
        dataset = FrameDataset(records, spec, frames_per_track=16)
    pred = Predictions([], [], [], [])
    with torch.inference_mode():
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
            pred.logits += model(batch["image"]).float().tolist()
            pred.labels += batch["label"].tolist()
            pred.videos += batch["video"]
            pred.tracks += batch["track"]
    return pred


def save_roc(path: Path, labels: list[int], scores: list[float], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr, _ = roc_curve(labels, scores)
    figure, axis = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    axis.plot(fpr, tpr, label="ROC")
    axis.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1))
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def default_calibration_split(data: Path, split: str) -> str:
    """``val`` when the data has a val split (calibrating on the reported split flatters it), else ``split``."""
    return "val" if load_index(data, ["val"]) else split


def report(pred: Predictions, calibration: Calibration, split: str, calibrated_on: str) -> dict[str, Any]:
    """Metrics of ``pred`` (raw and through ``calibration`` as the service scores) and the calibration."""
    probs = [sigmoid(v) for v in pred.logits]
    video_labels, video_scores = per_video(pred.videos, pred.labels, probs, pred.tracks)
    _, service_scores = service_video_scores(pred, calibration)
    names = sorted(set(pred.videos))  # per_video's order
    return {
        "split": split,
        # per video (full identifier: FF++ reuses file names across method folders): label, raw P(fake)
        # (track mean, max over tracks) and the calibrated service score; a dozen videos are easier to judge
        # one by one than by AUC
        "per_video": {
            name: {"label": int(y), "score": round(float(p), 4), "service_score": round(float(q), 4)}
            for name, y, p, q in zip(names, video_labels, video_scores, service_scores, strict=True)
        },
        "items": binary_metrics(pred.labels, probs),
        "videos": binary_metrics(video_labels, video_scores),
        "calibration": {"temperature": calibration.temperature, "threshold": calibration.threshold},
        "calibrated_on": calibrated_on,
        "operating_point_in_sample": calibrated_on == split,
        # scored as the service does: calibrated, mean per track, max over tracks, FAKE at >= 0.5
        "videos_at_calibrated_threshold": binary_metrics(video_labels, service_scores, 0.5),
    }


def evaluate(
    checkpoint_path: Path,
    data: Path,
    split: str,
    batch_size: int,
    roc_path: Path | None,
    calibrate_on: str | None = None,
) -> dict[str, Any]:
    """Score ``split``, fit the calibration on ``calibrate_on`` (see default_calibration_split), report both."""
    checkpoint = TrainingCheckpoint.load(checkpoint_path)
    calibrate_on = calibrate_on or default_calibration_split(data, split)
    pred = predict(checkpoint, data, split, batch_size)
    fit_on = pred if calibrate_on == split else predict(checkpoint, data, calibrate_on, batch_size)
    calibration = fit_calibration(fit_on)
    log.info("calibration fitted on %r: %s", calibrate_on, calibration)
    result = report(pred, calibration, split, calibrate_on)
    video_labels, video_scores = per_video(pred.videos, pred.labels, [sigmoid(v) for v in pred.logits], pred.tracks)
    if roc_path is not None and len(set(video_labels)) == 2:
        save_roc(roc_path, video_labels, video_scores, f"{checkpoint.model} ({split}, {len(video_labels)} videos)")
        result["roc_png"] = str(roc_path)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint from training.train")
    parser.add_argument("--data", required=True, type=Path, help="preprocessed data (index.csv)")
    parser.add_argument("--split", default="test", help="which split to score (default: test)")
    parser.add_argument(
        "--calibrate-on",
        metavar="SPLIT",
        help="split to fit temperature + threshold on (default: val when the data has a val split, "
        "otherwise the --split itself, and then the operating-point metrics are in-sample)",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--roc", type=Path, help="ROC curve PNG (default: next to the checkpoint)")
    parser.add_argument("--write", action="store_true", help="store calibration + metrics in the checkpoint for export")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    roc = args.roc or args.checkpoint.with_name(f"{args.checkpoint.stem}_roc_{args.split}.png")
    result = evaluate(args.checkpoint, args.data, args.split, args.batch_size, roc, args.calibrate_on)
    print(json.dumps(result, indent=2))
    if args.write:
        checkpoint = TrainingCheckpoint.load(args.checkpoint)
        checkpoint.calibration = result["calibration"]
        command = "python -m training.evaluate " + shlex.join(sys.argv[1:] if argv is None else argv)
        checkpoint.metrics = {**checkpoint.metrics, f"evaluate_{args.split}": {**result, "command": command}}
        checkpoint.save(args.checkpoint)
        log.info("wrote calibration and metrics into %s", args.checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
